"""One function per scenario: real Linux TCP endpoints doing one thing of the taxonomy.

Each scenario gets a `Lab` (two namespaces, their firewalls, the capture) and drives the
client and server sockets from one thread, in a fixed order, so that the labels come
out the same on every run (the bytes do not: ISNs, ports of the kernel's choosing,
timestamps). It returns one `Conn` per connection: the labels the capture must get
(docs/teardown-taxonomy.md) and the wire facts (`checks`) those labels rest on. The
generator verifies the checks on the capture and runs a scenario again when a timer or
a scheduling hiccup made the wire differ from the plan.

Roles: the client sends the first SYN. The server listens on port 80.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcp_teardown.vocab import FLAG_VALUES
from tests.realtraffic.netns import (
    ACK,
    FIN,
    ONCE,
    PSH,
    RST,
    SYN,
    Capture,
    Firewall,
    Link,
    Packet,
    Wire,
    send_raw_tcp,
    seq_state,
    set_isn,
    socket_in,
)

Addr = tuple[str, int]

SERVER_PORT = 80
CLOSED_PORT = 81
REQUEST = b"GET / HTTP/1.0\r\nHost: example.test\r\n\r\n"
RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"
IO_TIMEOUT_S = 3.0
# Linux holds back the ACK of a FIN for the delayed-ACK time: at least 40 ms, at most
# 200 ms. A side that closes within a few ms of reading EOF puts its FIN on that ACK
# (three-way close); one that waits longer than the maximum lets the bare ACK go first
# (four-way close).
AFTER_DELAYED_ACK_S = 0.4
# The taxonomy's default idle threshold is 5 s.
IDLE_S = 5.6

# Taxonomy order, used to write `flags` the way expected.json lists them.
FLAG_ORDER = FLAG_VALUES
FRAME_KEYS = ("syn_frame", "first_fin_frame", "second_fin_frame", "rst_frame", "final_ack_frame")
MOD = 1 << 32


def seq_ge(a: int, b: int) -> bool:
    """a >= b in sequence-number (mod 2**32) arithmetic."""
    return (a - b) % MOD < (1 << 31)


# --- what a capture shows, per connection ----------------------------------------------


@dataclass
class Flow:
    """The segments of one connection, with the roles known."""

    client: Addr
    server: Addr
    packets: list[Packet]

    def side(self, packet: Packet) -> str:
        return "client" if packet.src == self.client else "server"

    def sent(self, side: str, flags: int = 0, without: int = 0) -> list[Packet]:
        """Segments from `side` carrying every bit of `flags` and none of `without`."""
        return [p for p in self.packets if self.side(p) == side and p.flags & flags == flags and not p.flags & without]

    def first(self, flags: int, side: str | None = None) -> Packet | None:
        for p in self.packets:
            if p.flags & flags == flags and (side is None or self.side(p) == side):
                return p
        return None

    def after(self, packet: Packet) -> list[Packet]:
        return [p for p in self.packets if p.frame > packet.frame]

    def payload(self) -> int:
        return sum(p.payload_len for p in self.packets)


def split_connections(wire: Wire, client: Addr, server: Addr) -> list[Flow]:
    """Cut the segments of one 4-tuple into connections, by the taxonomy's unit rule: a
    client SYN after a FIN or RST starts a new connection, unless it repeats the
    current attempt's initial sequence number (then it is a retransmission)."""
    flows: list[Flow] = []
    current: Flow | None = None
    isn: int | None = None
    ended = False
    for p in wire.between(client, server):
        is_client_syn = p.src == client and p.has(SYN) and not p.has(ACK)
        if current is None or (is_client_syn and ended and p.seq != isn):
            current = Flow(client, server, [])
            flows.append(current)
            isn, ended = None, False
        if is_client_syn and isn is None:
            isn = p.seq
        if p.flags & (FIN | RST):
            ended = True
        current.packets.append(p)
    return flows


def derive_frames(flow: Flow) -> dict[str, int | None]:
    """The key frames of a connection, as the taxonomy defines them."""
    syn = next((p for p in flow.sent("client", SYN, without=ACK)), None)
    first_fin = flow.first(FIN)
    second_fin = None
    if first_fin is not None:
        other = "server" if flow.side(first_fin) == "client" else "client"
        second_fin = flow.first(FIN, other)
    rst = flow.first(RST)
    # Final ACK: the first frame at which both sides' FINs have been acknowledged.
    fin_end: dict[str, int] = {}
    acked: dict[str, int] = {}
    final_ack = None
    for p in flow.packets:
        side = flow.side(p)
        if p.has(FIN) and side not in fin_end:
            fin_end[side] = (p.seq + p.payload_len + 1) % MOD
        if p.has(ACK):
            peer = "server" if side == "client" else "client"
            if peer not in acked or seq_ge(p.ack, acked[peer]):
                acked[peer] = p.ack
        if len(fin_end) == 2 and all(s in acked and seq_ge(acked[s], e) for s, e in fin_end.items()):
            final_ack = p.frame
            break
    return {
        "syn_frame": syn.frame if syn else None,
        "first_fin_frame": first_fin.frame if first_fin else None,
        "second_fin_frame": second_fin.frame if second_fin else None,
        "rst_frame": rst.frame if rst else None,
        "final_ack_frame": final_ack,
    }


# --- wire facts the labels rest on -----------------------------------------------------

Check = tuple[str, Callable[[Flow], bool]]


def _reply_to_first_fin(flow: Flow) -> Packet | None:
    """The passive side's first segment that acknowledges the first FIN."""
    fin = flow.first(FIN)
    if fin is None:
        return None
    end = (fin.seq + fin.payload_len + 1) % MOD
    other = "server" if flow.side(fin) == "client" else "client"
    return next((p for p in flow.after(fin) if flow.side(p) == other and p.has(ACK) and seq_ge(p.ack, end)), None)


def first_fin_by(side: str) -> Check:
    return (f"the first FIN comes from the {side}", lambda f: (fin := f.first(FIN)) is not None and f.side(fin) == side)


def fin_rides_on_ack() -> Check:
    return (
        "the passive side's FIN rides on its ACK of the first FIN",
        lambda f: (r := _reply_to_first_fin(f)) is not None and r.has(FIN),
    )


def fin_acked_alone() -> Check:
    return (
        "the first FIN is acknowledged by a bare ACK before the other FIN",
        lambda f: (r := _reply_to_first_fin(f)) is not None and not r.has(FIN),
    )


def release_completes() -> Check:
    return ("both FINs are acknowledged", lambda f: derive_frames(f)["final_ack_frame"] is not None)


def sent_count(side: str, flags: int, count: int, *, without: int = 0, at_least: bool = False) -> Check:
    what = f"{side} sends {'at least ' if at_least else ''}{count} segment(s) with flags {flags:#x}"
    if without:
        what += f" and without {without:#x}"

    def test(f: Flow) -> bool:
        n = len(f.sent(side, flags, without))
        return n >= count if at_least else n == count

    return what, test


def no_rst() -> Check:
    return ("no RST", lambda f: f.first(RST) is None)


def no_fin() -> Check:
    return ("no FIN", lambda f: f.first(FIN) is None)


def same_seq(side: str, flags: int, without: int = 0) -> Check:
    return (
        f"every {flags:#x} segment of the {side} has the same sequence number",
        lambda f: len({p.seq for p in f.sent(side, flags, without)}) == 1,
    )


def handshake_completed() -> Check:
    def test(f: Flow) -> bool:
        synack = f.first(SYN | ACK, "server")
        return synack is not None and any(
            p.has(ACK) and not p.has(SYN) and p.ack == (synack.seq + 1) % MOD for p in f.sent("client")
        )

    return "the client acknowledges the SYN-ACK", test


def no_payload() -> Check:
    return ("no payload in either direction", lambda f: f.payload() == 0)


def idle_before_first_close(seconds: float) -> Check:
    def test(f: Flow) -> bool:
        end = next((p for p in f.packets if p.flags & (FIN | RST)), None)
        before = [p for p in f.packets if end is not None and p.frame < end.frame]
        return end is not None and bool(before) and end.ts - before[-1].ts >= seconds

    return f"at least {seconds} s of silence before the first FIN/RST", test


# --- the expectation for one connection --------------------------------------------------


@dataclass
class Conn:
    """What the capture must show for one connection.

    `frames` names the key-frame columns to assert; their values are read off the
    capture by `derive_frames`. `fixed` asserts other keys with given values.
    """

    client: Addr
    server: Addr
    open: str
    close: str
    flags: list[str]
    time_wait_side: str | None
    roles_guessed: bool = False
    frames: tuple[str, ...] = FRAME_KEYS
    fixed: dict[str, object] = field(default_factory=dict)
    counts: bool = True
    notes: str = ""
    checks: list[Check] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.flags) - set(FLAG_ORDER)
        if unknown:
            raise ValueError(f"not taxonomy flags: {sorted(unknown)}")
        self.flags = sorted(self.flags, key=FLAG_ORDER.index)


# --- the lab a scenario runs in ----------------------------------------------------------


class Lab:
    """Client and server namespaces, their sockets and firewalls, and the capture."""

    def __init__(
        self, link: Link, index: int, pcap: Path, *, capture_side: str = "client", direction: str | None = None
    ) -> None:
        self.link = link
        self.client_port = 40000 + index
        self.capture = Capture(link.side(capture_side), pcap, direction=direction)
        self._sockets: list[socket.socket] = []
        self._firewalls: dict[str, Firewall] = {}

    @property
    def client_ip(self) -> str:
        return self.link.client.ip

    @property
    def server_ip(self) -> str:
        return self.link.server.ip

    def firewall(self, side: str) -> Firewall:
        if side not in self._firewalls:
            self._firewalls[side] = Firewall(self.link.side(side).ns)
        return self._firewalls[side]

    def _socket(self, side: str) -> socket.socket:
        sock = socket_in(self.link.side(side).ns, self.link.family)
        self._sockets.append(sock)
        sock.settimeout(IO_TIMEOUT_S)
        return sock

    def listen(self, port: int = SERVER_PORT) -> socket.socket:
        sock = self._socket("server")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.server_ip, port))
        sock.listen(8)
        return sock

    def client_socket(self, *, isn: int | None = None) -> socket.socket:
        """A client socket bound to this lab's client port (SO_REUSEADDR, so a port whose
        previous connection has just closed can be taken again at once)."""
        sock = self._socket("client")
        if isn is not None:
            set_isn(sock, isn)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.client_ip, self.client_port))
        return sock

    def connect(
        self, *, port: int = SERVER_PORT, isn: int | None = None, timeout: float = IO_TIMEOUT_S
    ) -> socket.socket:
        sock = self.client_socket(isn=isn)
        sock.settimeout(timeout)
        sock.connect((self.server_ip, port))
        sock.settimeout(IO_TIMEOUT_S)
        return sock

    def accept(self, listener: socket.socket) -> socket.socket:
        sock, _ = listener.accept()
        self._sockets.append(sock)
        sock.settimeout(IO_TIMEOUT_S)
        return sock

    def conn(self, open_: str, close: str, flags: list[str], time_wait_side: str | None, **more: Any) -> Conn:
        """The expectation for the lab's (client port -> port 80) connection."""
        return Conn(
            (self.client_ip, self.client_port),
            (self.server_ip, SERVER_PORT),
            open_,
            close,
            flags,
            time_wait_side,
            **more,
        )

    def close(self) -> None:
        """Stop the capture first (teardown traffic is no part of the scenario), then close
        every socket while its namespace still exists."""
        self.capture.stop()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets.clear()


# --- socket steps ------------------------------------------------------------------------


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


def expect_eof(sock: socket.socket) -> None:
    """Wait (bounded by the socket timeout) until the peer's FIN has arrived."""
    if sock.recv(4096) != b"":
        raise ConnectionError("expected EOF, got data")


def exchange(client: socket.socket, server: socket.socket) -> None:
    """One request and one response, as an HTTP/1.0 client and server would."""
    client.sendall(REQUEST)
    recv_exact(server, len(REQUEST))
    server.sendall(RESPONSE)
    recv_exact(client, len(RESPONSE))


def abort(sock: socket.socket) -> None:
    """close() with SO_LINGER {on, 0 s}: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def open_pair(lab: Lab, **connect: Any) -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = lab.listen()
    client = lab.connect(**connect)
    return listener, client, lab.accept(listener)


def client_closes(client: socket.socket, server: socket.socket, *, three_way: bool) -> None:
    """Orderly release started by the client; the server closes on EOF, at once
    (three-way) or after its bare ACK went out (four-way)."""
    client.close()
    expect_eof(server)
    if not three_way:
        time.sleep(AFTER_DELAYED_ACK_S)
    server.close()


def server_closes(client: socket.socket, server: socket.socket, *, three_way: bool) -> None:
    server.close()
    expect_eof(client)
    if not three_way:
        time.sleep(AFTER_DELAYED_ACK_S)
    client.close()


# --- the registry ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Lab], list[Conn]]
    ipv6: bool = False
    sysctls: dict[str, str] = field(default_factory=dict)
    capture_side: str = "client"
    direction: str | None = None
    start_capture: bool = True  # False: the scenario starts it itself (midstream)
    slow: bool = False  # waits for seconds: started first when scenarios run in parallel

    @property
    def doc(self) -> str:
        return " ".join((self.run.__doc__ or "").split())


SCENARIOS: dict[str, Scenario] = {}


def scenario(**options: Any) -> Callable[[Callable[[Lab], list[Conn]]], Callable[[Lab], list[Conn]]]:
    def register(func: Callable[[Lab], list[Conn]]) -> Callable[[Lab], list[Conn]]:
        SCENARIOS[func.__name__] = Scenario(func.__name__, func, **options)
        return func

    return register


FOUR_WAY_CLIENT = [first_fin_by("client"), fin_acked_alone(), release_completes(), no_rst()]
FOUR_WAY_SERVER = [first_fin_by("server"), fin_acked_alone(), release_completes(), no_rst()]


# --- the scenarios -----------------------------------------------------------------------


@scenario()
def fin_by_client(lab: Lab) -> list[Conn]:
    """Request and response; the client closes, the server closes as soon as it reads
    EOF, so its FIN rides on the ACK of the client's FIN (FIN, FIN+ACK, ACK)."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    client_closes(c, s, three_way=True)
    return [
        lab.conn(
            "handshake",
            "fin_by_client",
            ["three_way_close"],
            "client",
            checks=[first_fin_by("client"), fin_rides_on_ack(), release_completes(), no_rst()],
        )
    ]


@scenario()
def fin_by_client_four_way(lab: Lab) -> list[Conn]:
    """Request and response; the client closes, the server waits past its delayed ACK
    before closing: FIN, ACK, FIN, ACK."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    client_closes(c, s, three_way=False)
    return [lab.conn("handshake", "fin_by_client", [], "client", checks=FOUR_WAY_CLIENT)]


@scenario()
def fin_by_server(lab: Lab) -> list[Conn]:
    """Request and response, then the server closes (server active close); the client
    closes after its bare ACK went out (four-way)."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    server_closes(c, s, three_way=False)
    return [lab.conn("handshake", "fin_by_server", [], "server", checks=FOUR_WAY_SERVER)]


@scenario(ipv6=True)
def ipv6_fin_by_server(lab: Lab) -> list[Conn]:
    """IPv6 (fd00::/8): request and response, the server closes, the client closes as soon
    as it reads EOF (FIN, FIN+ACK, ACK)."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    server_closes(c, s, three_way=True)
    return [
        lab.conn(
            "handshake",
            "fin_by_server",
            ["three_way_close"],
            "server",
            checks=[first_fin_by("server"), fin_rides_on_ack(), release_completes(), no_rst()],
        )
    ]


@scenario(capture_side="server")
def fin_simultaneous(lab: Lab) -> list[Conn]:
    """Captured on the server. The server's input drops the client's first FIN, and the
    server closes 50 ms later without having seen it: its FIN's ack does not cover the
    client's FIN, the FINs crossed. The client retransmits its FIN (RTO, about 200 ms)
    and both end in TIME_WAIT."""
    lab.firewall("server").add("input", f"tcp flags & fin == fin {ONCE} drop")
    _, c, s = open_pair(lab)
    exchange(c, s)
    c.close()
    time.sleep(0.05)  # well inside the client's 200 ms minimum RTO
    s.close()
    time.sleep(0.6)  # the client's FIN retransmission and the server's ACK of it

    def crossed(f: Flow) -> bool:
        first = f.first(FIN)
        second = f.first(FIN, "server")
        return (
            first is not None
            and second is not None
            and first is not second
            and not seq_ge(second.ack, (first.seq + first.payload_len + 1) % MOD)
        )

    return [
        lab.conn(
            "handshake",
            "fin_simultaneous",
            ["fin_retransmitted"],
            "both",
            notes="The server's FIN acknowledges the client's data but not the client's FIN, which "
            "is on the wire before it (dropped on the server's input): the FINs crossed. The "
            "client's FIN is sent again and acknowledged, which completes the release.",
            checks=[
                first_fin_by("client"),
                ("the second FIN does not acknowledge the first", crossed),
                sent_count("client", FIN, 2),
                same_seq("client", FIN),
                sent_count("server", FIN, 1),
                release_completes(),
                no_rst(),
            ],
        )
    ]


@scenario()
def refused(lab: Lab) -> list[Conn]:
    """SYN to a port nobody listens on: the server's kernel answers RST+ACK."""
    c = lab.client_socket()
    result = c.connect_ex((lab.server_ip, CLOSED_PORT))
    if result != errno.ECONNREFUSED:
        raise ConnectionError(f"expected ECONNREFUSED, got {errno.errorcode.get(result, result)}")
    conn = lab.conn(
        "refused",
        "never_opened",
        [],
        None,
        checks=[sent_count("client", SYN, 1), sent_count("server", RST, 1), sent_count("server", SYN, 0), no_fin()],
    )
    conn.server = (lab.server_ip, CLOSED_PORT)
    return [conn]


@scenario(slow=True)
def no_answer(lab: Lab) -> list[Conn]:
    """The server's input drops every segment to port 80: the client's SYN is never
    answered and is retransmitted after 1 s; the client gives up at 1.5 s."""
    lab.firewall("server").add("input", f"tcp dport {SERVER_PORT} drop")
    lab.listen()
    c = lab.client_socket()
    c.settimeout(1.5)
    try:
        c.connect((lab.server_ip, SERVER_PORT))
    except TimeoutError:
        pass
    else:
        raise ConnectionError("connected through a firewall that drops everything")
    return [
        lab.conn(
            "no_answer",
            "never_opened",
            ["syn_retransmitted"],
            None,
            checks=[
                sent_count("client", SYN, 2, at_least=True),
                same_seq("client", SYN),
                sent_count("server", 0, 0),
                no_fin(),
                no_rst(),
            ],
        )
    ]


@scenario(slow=True, sysctls={"net.ipv4.tcp_synack_retries": "1"})
def syn_ack_no_ack(lab: Lab) -> list[Conn]:
    """The client's output drops everything but its SYN: its kernel thinks it connected,
    the server stays in SYN_RCVD and sends its SYN-ACK again after 1 s."""
    lab.firewall("client").add("output", f"tcp dport {SERVER_PORT} tcp flags & syn == 0 drop")
    lab.listen()
    lab.connect()
    time.sleep(1.4)  # one SYN-ACK retransmission (at 1 s); the next would come at 3 s
    return [
        lab.conn(
            "syn_ack_no_ack",
            "never_opened",
            ["syn_ack_retransmitted"],
            None,
            checks=[
                sent_count("client", SYN, 1),
                sent_count("client", 0, 1),
                sent_count("server", SYN | ACK, 2, at_least=True),
                same_seq("server", SYN | ACK),
                no_fin(),
                no_rst(),
            ],
        )
    ]


@scenario(start_capture=False)
def midstream(lab: Lab) -> list[Conn]:
    """The capture starts after the handshake and a first exchange: no SYN is seen, so
    the roles are guessed (port 80 is the server). Then a second exchange and a
    four-way close by the client."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    time.sleep(0.3)  # let the delayed ACKs of the first exchange go out uncaptured
    lab.capture.start()
    exchange(c, s)
    client_closes(c, s, three_way=False)
    return [
        lab.conn(
            "midstream",
            "fin_by_client",
            [],
            "client",
            roles_guessed=True,
            checks=[sent_count("client", SYN, 0), sent_count("server", SYN, 0), *FOUR_WAY_CLIENT],
        )
    ]


@scenario()
def rst_by_client(lab: Lab) -> list[Conn]:
    """Request and response, then the client aborts (SO_LINGER 0): RST, no FIN."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    abort(c)
    return [
        lab.conn(
            "handshake",
            "rst_by_client",
            [],
            None,
            checks=[no_fin(), sent_count("client", RST, 1), sent_count("server", RST, 0)],
        )
    ]


@scenario()
def rst_by_server(lab: Lab) -> list[Conn]:
    """Request and response, then the server aborts (SO_LINGER 0): RST, no FIN."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    abort(s)
    return [
        lab.conn(
            "handshake",
            "rst_by_server",
            [],
            None,
            checks=[no_fin(), sent_count("server", RST, 1), sent_count("client", RST, 0)],
        )
    ]


@scenario()
def half_closed(lab: Lab) -> list[Conn]:
    """The client sends its request and shuts down its sending side (FIN); the server
    reads it, answers, and never closes before the capture ends (CLOSE_WAIT)."""
    _, c, s = open_pair(lab)
    c.sendall(REQUEST)
    c.shutdown(socket.SHUT_WR)
    recv_exact(s, len(REQUEST))
    expect_eof(s)
    s.sendall(RESPONSE)
    recv_exact(c, len(RESPONSE))
    time.sleep(AFTER_DELAYED_ACK_S)  # every ACK on the wire before the capture stops
    return [
        lab.conn(
            "handshake",
            "half_closed",
            [],
            None,
            notes="time_wait_side null: the release never completed, nobody is in TIME_WAIT "
            "(the client sits in FIN_WAIT_2, the server in CLOSE_WAIT).",
            checks=[
                sent_count("client", FIN, 1),
                sent_count("server", FIN, 0),
                no_rst(),
                (
                    "the server acknowledges the client's FIN",
                    lambda f: (
                        (fin := f.first(FIN)) is not None
                        and any(p.ack == (fin.seq + fin.payload_len + 1) % MOD for p in f.sent("server", ACK))
                    ),
                ),
            ],
        )
    ]


@scenario()
def not_closed(lab: Lab) -> list[Conn]:
    """Request and response; the capture ends while the connection is still open."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    time.sleep(0.3)  # the delayed ACK of the response
    return [lab.conn("handshake", "not_closed", [], None, checks=[no_fin(), no_rst()])]


@scenario()
def refused_after_handshake(lab: Lab) -> list[Conn]:
    """The server accepts the connection and closes it at once, before anybody sent a
    byte (an allow-list or a connection limit turning the client away)."""
    listener = lab.listen()
    c = lab.connect()
    lab.accept(listener).close()
    expect_eof(c)
    time.sleep(AFTER_DELAYED_ACK_S)
    c.close()
    return [
        lab.conn(
            "handshake", "fin_by_server", ["refused_after_handshake"], "server", checks=[*FOUR_WAY_SERVER, no_payload()]
        )
    ]


@scenario()
def rst_after_fin(lab: Lab) -> list[Conn]:
    """The client closes (FIN), the server acknowledges it, then aborts (SO_LINGER 0)
    instead of sending its own FIN: RST after FIN."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    c.close()
    expect_eof(s)
    time.sleep(AFTER_DELAYED_ACK_S)  # the server's bare ACK of the FIN goes first
    abort(s)
    return [
        lab.conn(
            "handshake",
            "rst_by_server",
            ["rst_after_fin"],
            None,
            checks=[
                first_fin_by("client"),
                sent_count("server", FIN, 0),
                sent_count("server", RST, 1),
                fin_acked_alone(),
            ],
        )
    ]


@scenario()
def rst_after_close(lab: Lab) -> list[Conn]:
    """A four-way close by the client, then a late copy of the client's request (sent
    by hand with the client's own address, TTL and numbers) reaches the server, whose
    socket is gone: the server's kernel answers RST."""
    listener, c, s = open_pair(lab)
    snd, rcv = seq_state(c)  # the numbers the request will carry
    exchange(c, s)
    client_closes(c, s, three_way=False)
    listener.close()
    time.sleep(0.1)
    send_raw_tcp(
        lab.link.client.ns,
        (lab.client_ip, lab.client_port),
        (lab.server_ip, SERVER_PORT),
        seq=snd,
        ack=rcv,
        flags=PSH | ACK,
        payload=REQUEST,
        window=63,
    )
    time.sleep(0.1)
    return [
        lab.conn(
            "handshake",
            "fin_by_client",
            ["rst_after_close"],
            "client",
            checks=[
                *FOUR_WAY_CLIENT[:3],
                sent_count("server", RST, 1),
                (
                    "the RST comes after the release completed",
                    lambda f: (
                        (r := f.first(RST)) is not None
                        and (a := derive_frames(f)["final_ack_frame"]) is not None
                        and r.frame > a
                    ),
                ),
            ],
        )
    ]


@scenario()
def fin_retransmitted(lab: Lab) -> list[Conn]:
    """The server's input drops the client's first FIN; the client sends it again after
    its retransmission timeout, then the release completes (four-way)."""
    lab.firewall("server").add("input", f"tcp flags & fin == fin {ONCE} drop")
    _, c, s = open_pair(lab)
    exchange(c, s)
    client_closes(c, s, three_way=False)
    return [
        lab.conn(
            "handshake",
            "fin_by_client",
            ["fin_retransmitted"],
            "client",
            checks=[*FOUR_WAY_CLIENT, sent_count("client", FIN, 2), same_seq("client", FIN)],
        )
    ]


@scenario()
def final_ack_missing(lab: Lab) -> list[Conn]:
    """Four-way close by the client, but the client's output drops its last ACK and the
    server's output lets only the first transmission of its FIN out: the last FIN is
    never acknowledged on the wire."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    c.close()
    expect_eof(s)
    time.sleep(AFTER_DELAYED_ACK_S)  # the server's bare ACK of the client's FIN
    lab.firewall("client").add("output", f"tcp dport {SERVER_PORT} drop")
    server_fw = lab.firewall("server")
    server_fw.add("output", f"tcp flags & fin == fin {ONCE} accept")
    server_fw.add("output", "tcp flags & fin == fin drop")
    s.close()
    time.sleep(0.5)
    return [
        lab.conn(
            "handshake",
            "fin_by_client",
            ["final_ack_missing"],
            "client",
            checks=[
                first_fin_by("client"),
                fin_acked_alone(),
                sent_count("server", FIN, 1),
                (
                    "nothing from the client after the server's FIN",
                    lambda f: (
                        (fin := f.first(FIN, "server")) is not None
                        and not any(f.side(p) == "client" for p in f.after(fin))
                    ),
                ),
                no_rst(),
            ],
        )
    ]


@scenario(slow=True)
def syn_retransmitted(lab: Lab) -> list[Conn]:
    """The server's input drops the first SYN; the client retransmits it after 1 s and
    the handshake completes. Then a four-way close by the client."""
    lab.firewall("server").add("input", f"tcp flags & syn == syn {ONCE} drop")
    _, c, s = open_pair(lab)
    exchange(c, s)
    client_closes(c, s, three_way=False)
    return [
        lab.conn(
            "handshake",
            "fin_by_client",
            ["syn_retransmitted"],
            "client",
            checks=[
                sent_count("client", SYN, 2),
                same_seq("client", SYN),
                sent_count("server", SYN | ACK, 1),
                handshake_completed(),
                *FOUR_WAY_CLIENT,
            ],
        )
    ]


@scenario(slow=True)
def syn_ack_retransmitted(lab: Lab) -> list[Conn]:
    """The client's input drops the first SYN-ACK (it is on the wire: captured before
    the drop), and the client's output drops its own SYN retransmission, so the server's
    SYN-ACK timer (1 s) alone resends the SYN-ACK. Then a four-way close by the client."""
    client_fw = lab.firewall("client")
    client_fw.add("input", f"tcp flags & (syn | ack) == syn | ack {ONCE} drop")
    client_fw.add("output", f"tcp flags & (syn | ack) == syn {ONCE} accept")
    client_fw.add("output", "tcp flags & (syn | ack) == syn drop")
    _, c, s = open_pair(lab)
    exchange(c, s)
    client_closes(c, s, three_way=False)
    return [
        lab.conn(
            "handshake",
            "fin_by_client",
            ["syn_ack_retransmitted"],
            "client",
            checks=[
                sent_count("client", SYN, 1),
                sent_count("server", SYN | ACK, 2),
                same_seq("server", SYN | ACK),
                handshake_completed(),
                *FOUR_WAY_CLIENT,
            ],
        )
    ]


@scenario(slow=True)
def idle_close(lab: Lab) -> list[Conn]:
    """Request and response, then 5.6 s of silence before the server closes (an idle
    timeout; the default threshold is 5 s). Four-way."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    time.sleep(IDLE_S)
    server_closes(c, s, three_way=False)
    return [
        lab.conn(
            "handshake",
            "fin_by_server",
            ["idle_close"],
            "server",
            checks=[*FOUR_WAY_SERVER, idle_before_first_close(5.2)],
        )
    ]


@scenario()
def port_reuse_time_wait(lab: Lab) -> list[Conn]:
    """The server closes first (it holds TIME_WAIT); the client takes the same port again
    at once. The new SYN is newer than the old connection (sequence number and
    timestamp), so the TIME_WAIT server accepts it with a SYN-ACK."""
    listener, c, s = open_pair(lab)
    exchange(c, s)
    server_closes(c, s, three_way=False)
    time.sleep(0.05)
    c2 = lab.connect()
    s2 = lab.accept(listener)
    exchange(c2, s2)
    client_closes(c2, s2, three_way=False)
    return [
        lab.conn("handshake", "fin_by_server", [], "server", checks=FOUR_WAY_SERVER),
        lab.conn(
            "handshake",
            "fin_by_client",
            ["port_reuse_time_wait"],
            "client",
            checks=[
                sent_count("client", SYN, 1),
                sent_count("server", SYN | ACK, 1),
                handshake_completed(),
                *FOUR_WAY_CLIENT,
            ],
        ),
    ]


# Connection 1's initial sequence number; connection 2's lies inside connection 1's
# sequence space, so it is not "after" what the TIME_WAIT socket last received.
FIRST_ISN = 0x3E800000
REUSE_ISN = FIRST_ISN + 10


@scenario(sysctls={"net.ipv4.tcp_timestamps": "0"})
def time_wait_challenge(lab: Lab) -> list[Conn]:
    """Like port_reuse_time_wait, but without TCP timestamps and with the new SYN's
    sequence number (chosen through TCP_REPAIR) inside the old connection's: the
    TIME_WAIT server answers with a bare ACK of the old connection, the client's kernel
    answers that with RST (which ends TIME_WAIT) and, as Linux does after such a RST,
    sends the same SYN again a few ms later; that one gets a SYN-ACK."""
    listener, c, s = open_pair(lab, isn=FIRST_ISN)
    exchange(c, s)
    server_closes(c, s, three_way=False)
    time.sleep(0.05)
    c2 = lab.connect(isn=REUSE_ISN)
    s2 = lab.accept(listener)
    exchange(c2, s2)
    client_closes(c2, s2, three_way=False)

    def challenged(f: Flow) -> bool:
        syn = f.first(SYN, "client")
        reply = next((p for p in f.packets if syn and p.frame > syn.frame and f.side(p) == "server"), None)
        return reply is not None and reply.flags & (SYN | ACK | RST | FIN) == ACK

    return [
        lab.conn("handshake", "fin_by_server", [], "server", checks=FOUR_WAY_SERVER),
        lab.conn(
            "handshake",
            "fin_by_client",
            ["syn_retransmitted", "port_reuse_time_wait", "time_wait_challenge"],
            "client",
            notes="The challenge ACK and the client's RST carry the old connection's numbers "
            "but follow the new SYN, so they belong to this connection; rst_frame is that RST, "
            "the first of the connection (in its opening), while the close is an orderly one.",
            checks=[
                ("the SYN is answered by a bare ACK", challenged),
                sent_count("client", SYN, 2),
                same_seq("client", SYN),
                sent_count("client", RST, 1),
                sent_count("server", SYN | ACK, 1),
                handshake_completed(),
                first_fin_by("client"),
                fin_acked_alone(),
                release_completes(),
            ],
        ),
    ]


@scenario(direction="out")
def one_direction_only(lab: Lab) -> list[Conn]:
    """Captured on the client's interface in the outgoing direction only: the server's
    segments are not in the file. Request and response, four-way close by the client;
    the server's FIN shows only through the client's acknowledgement of it."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    client_closes(c, s, three_way=False)
    return [
        lab.conn(
            "handshake",
            "fin_by_client",
            ["one_direction_only"],
            "client",
            frames=("syn_frame", "first_fin_frame", "second_fin_frame", "rst_frame"),
            notes="The server's FIN is not in the capture but shows in the acknowledgements: the "
            "client's FIN acknowledges only the server's data, the client's last ACK one sequence "
            "number more (a FIN), so the server's FIN came after the client's: fin_by_client, the "
            "client holds TIME_WAIT. second_fin_frame is null (no such frame in the file); "
            "final_ack_frame is not asserted (the ACK of the client's FIN is not in the file).",
            checks=[
                sent_count("server", 0, 0),
                sent_count("client", FIN, 1),
                (
                    "the client's last ACK covers the response and the server's FIN",
                    lambda f: (f.sent("client", ACK)[-1].ack - f.sent("client", ACK)[0].ack) % MOD == len(RESPONSE) + 1,
                ),
            ],
        )
    ]


# A TTL no Linux, Windows or BSD endpoint starts with, and far from the 64 of the
# server's own segments.
INJECTED_TTL = 47


@scenario()
def rst_suspect_injected(lab: Lab) -> list[Conn]:
    """Request and response, then a RST+ACK with the server's address and the exact next
    sequence number, but IP TTL 47 instead of the server's 64, reaches the client (as a
    middlebox would forge it); the client's kernel accepts it and resets the connection."""
    _, c, s = open_pair(lab)
    exchange(c, s)
    time.sleep(0.3)  # the client's delayed ACK of the response
    snd, rcv = seq_state(s)
    send_raw_tcp(
        lab.link.server.ns,
        (lab.server_ip, SERVER_PORT),
        (lab.client_ip, lab.client_port),
        seq=snd,
        ack=rcv,
        flags=RST | ACK,
        ttl=INJECTED_TTL,
    )
    time.sleep(0.1)
    try:
        c.recv(1)
    except ConnectionResetError:
        pass
    else:
        raise ConnectionError("the forged RST did not reset the client's connection")
    return [
        lab.conn(
            "handshake",
            "rst_by_server",
            ["rst_suspect_injected"],
            None,
            checks=[
                no_fin(),
                sent_count("server", RST, 1),
                sent_count("client", RST, 0),
                (
                    "the RST's TTL differs from the server's other segments",
                    lambda f: (
                        (r := f.first(RST)) is not None
                        and r.ttl == INJECTED_TTL
                        and all(p.ttl != INJECTED_TTL for p in f.sent("server", without=RST))
                    ),
                ),
            ],
        )
    ]
