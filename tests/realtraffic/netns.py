"""Real Linux TCP endpoints in network namespaces, and the tools around them.

Two namespaces joined by one veth pair play client and server. Sockets are created
inside a namespace by switching only the calling thread into it (`setns`), so a single
Python thread can drive both endpoints step by step: that keeps the order of events,
and so the labels, the same on every run. nftables rules inside a namespace drop
chosen packets (tc netem is not available everywhere), tcpdump writes the capture, and
`read_pcap` reads it back so a scenario can check that the wire shows what it planned.

Every resource is a context manager that removes what it created, also on errors.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tcp_teardown.tcpflags import internet_checksum

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
COMMAND_TIMEOUT_S = 10.0
CAPTURE_LIMIT_S = 120

# Linux TCP_REPAIR socket options (linux/tcp.h); Python 3.11's socket module lacks them.
TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_ON = 1
TCP_REPAIR_OFF_NO_WP = -1  # leave repair mode without sending a window probe
TCP_RECV_QUEUE = 1
TCP_SEND_QUEUE = 2

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """A namespace, nft or tcpdump step failed."""


def run(args: Sequence[str], *, stdin: str | None = None, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a command to completion (bounded in time) and return its stdout."""
    try:
        done = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"timed out after {timeout} s: {' '.join(args)}") from exc
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def ns_exec(ns: str, *args: str) -> list[str]:
    """The argv that runs `args` inside namespace `ns`."""
    return ["ip", "netns", "exec", ns, *args]


@contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Move the calling thread (only) into namespace `ns` for the duration of the block.

    Sockets keep the namespace they were created in, so creating them here and using
    them anywhere afterwards is safe; other threads are not affected.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / ns, os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            try:
                yield
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:
                    # A thread stuck in a test namespace would silently misplace every
                    # later socket: fail loudly instead.
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns back from {ns}: {os.strerror(err)}")
        finally:
            os.close(target)
    finally:
        os.close(own)


def socket_in(ns: str, family: int, kind: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace `ns`."""
    with in_netns(ns):
        return socket.socket(family, kind, proto)


@dataclass(frozen=True)
class Endpoint:
    """One side of the veth link: its namespace, interface and address."""

    ns: str
    ifname: str
    ip: str


@dataclass(frozen=True)
class Link:
    """Two namespaces joined by a veth pair; `family` is AF_INET or AF_INET6."""

    client: Endpoint
    server: Endpoint
    family: int

    def side(self, name: str) -> Endpoint:
        return self.client if name == "client" else self.server


def addresses(index: int, ipv6: bool) -> tuple[str, str]:
    """Client and server addresses of link number `index` (distinct per scenario, so
    captures can be told apart when merged): 198.18.<index>.1/.2 or fd00:0:0:<index>::1/::2."""
    if ipv6:
        return f"fd00:0:0:{index:x}::1", f"fd00:0:0:{index:x}::2"
    return f"198.18.{index}.1", f"198.18.{index}.2"


@contextmanager
def veth_link(index: int, *, ipv6: bool = False, sysctls: dict[str, str] | None = None) -> Iterator[Link]:
    """Create two fresh namespaces joined by a veth pair; delete both on exit.

    `sysctls` are applied in both namespaces (per-namespace TCP knobs such as
    net.ipv4.tcp_synack_retries, to keep the waits short).
    """
    tag = secrets.token_hex(3)
    client_ns, server_ns = f"ttd-c-{tag}", f"ttd-s-{tag}"
    client_if, server_if = f"ttdc{tag}", f"ttds{tag}"
    client_ip, server_ip = addresses(index, ipv6)
    prefix = 64 if ipv6 else 24
    created: list[str] = []
    try:
        for ns in (client_ns, server_ns):
            run(["ip", "netns", "add", ns])
            created.append(ns)
        run(
            [
                "ip",
                "link",
                "add",
                client_if,
                "netns",
                client_ns,
                "type",
                "veth",
                "peer",
                "name",
                server_if,
                "netns",
                server_ns,
            ]
        )
        for ns, ifname, ip in ((client_ns, client_if, client_ip), (server_ns, server_if, server_ip)):
            # nodad: duplicate address detection would hold IPv6 addresses back for ~1 s.
            extra = ["nodad"] if ipv6 else []
            run(["ip", "-n", ns, "addr", "add", f"{ip}/{prefix}", "dev", ifname, *extra])
            run(["ip", "-n", ns, "link", "set", ifname, "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            if sysctls:
                run(ns_exec(ns, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in sysctls.items())))
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        yield Link(Endpoint(client_ns, client_if, client_ip), Endpoint(server_ns, server_if, server_ip), family)
    finally:
        # Deleting a namespace also deletes its end of the veth pair (and so the pair)
        # and every socket still open in it.
        for ns in created:
            with suppress(NetnsError):
                run(["ip", "netns", "del", ns])


class Firewall:
    """An nftables table `inet ttd` with an input and an output chain in one namespace.

    Rules are added and removed while traffic flows, to drop exactly the packets a
    scenario wants lost. Where a drop happens decides what a capture shows: tcpdump
    sees incoming packets before the input hook (a packet dropped on input is still on
    the wire) and outgoing packets after the output hook (a packet dropped on output
    never reaches the wire).
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        run(
            ns_exec(ns, "nft", "-f", "-"),
            stdin=(
                "table inet ttd {\n"
                "  chain input { type filter hook input priority 0; policy accept; }\n"
                "  chain output { type filter hook output priority 0; policy accept; }\n"
                "}\n"
            ),
        )

    def add(self, chain: str, rule: str) -> None:
        """Append `rule` (nft syntax, e.g. "tcp flags & syn == syn drop") to `chain`."""
        run(ns_exec(self.ns, "nft", "add", "rule", "inet", "ttd", chain, rule))

    def flush(self, chain: str | None = None) -> None:
        """Remove the rules of one chain, or of both."""
        for name in (chain,) if chain else ("input", "output"):
            run(ns_exec(self.ns, "nft", "flush", "chain", "inet", "ttd", name))


# "limit rate 1/hour burst 1 packets" matches the first packet only (then the bucket
# is empty for an hour): prefixing a drop with it drops exactly one packet, with no
# timing involved.
ONCE = "limit rate 1/hour burst 1 packets"


class Capture:
    """tcpdump on one interface inside a namespace, writing a classic pcap.

    Start it with `start()` (or as a context manager); `stop()` waits a little so the
    last packets reach the file, then interrupts tcpdump, which flushes and exits.
    `direction` is tcpdump's -Q ("in" or "out") for one-direction captures.
    """

    def __init__(self, endpoint: Endpoint, path: Path, *, direction: str | None = None, bpf: str = "tcp") -> None:
        self.endpoint = endpoint
        self.path = path
        self.direction = direction
        self.bpf = bpf
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        argv = ns_exec(
            self.endpoint.ns,
            # A hard upper bound: should this process die without stopping tcpdump,
            # tcpdump (and with it the namespace it holds) still goes away. timeout
            # passes our SIGINT on to tcpdump.
            "timeout",
            "-s",
            "INT",
            str(CAPTURE_LIMIT_S),
            "tcpdump",
            "-i",
            self.endpoint.ifname,
            "-n",
            "-s",
            "0",
            # -U and immediate mode: every packet goes to the file at once, so nothing
            # is left in a buffer when tcpdump is interrupted. -Z root: keep the rights
            # to write the output folder (tcpdump would switch to its own user first).
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
            str(self.path),
        )
        if self.direction:
            argv += ["-Q", self.direction]
        argv.append(self.bpf)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        # tcpdump says "listening on" once the capture socket and the filter are in
        # place: only then is every later packet guaranteed to be in the file.
        deadline = time.monotonic() + timeout
        seen = b""
        while b"listening on" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise NetnsError(f"tcpdump did not start: {seen.decode(errors='replace')}")
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                if not chunk:
                    continue
                seen += chunk

    def stop(self, settle: float = 0.3) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            time.sleep(settle)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- sequence numbers, via TCP_REPAIR (needs CAP_NET_ADMIN) -----------------------------


def set_isn(sock: socket.socket, isn: int) -> None:
    """Make the next connect() of `sock` (still unconnected) use initial sequence `isn`.

    In repair mode the send queue's sequence number of a closed socket can be written;
    connect() keeps a sequence number that is already set instead of drawing a random
    one. Leaving repair mode before connect() makes the handshake an ordinary one.
    """
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, isn)
    finally:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)


def seq_state(sock: socket.socket) -> tuple[int, int]:
    """(next sequence number to send, next sequence number expected) of a connected,
    quiet socket: what a forged segment must carry to be in window."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        snd = sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        rcv = sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ)
    finally:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
    return snd & 0xFFFFFFFF, rcv & 0xFFFFFFFF


# --- forged segments -------------------------------------------------------------------




def send_raw_tcp(
    ns: str,
    src: tuple[str, int],
    dst: tuple[str, int],
    *,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    ttl: int = 64,
    window: int = 0,
) -> None:
    """Send one hand-made IPv4 TCP segment from namespace `ns`, bypassing its TCP stack.

    The kernel adds the IP header (with `ttl`); the TCP header carries no options.
    """
    header = struct.pack("!HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, window, 0, 0)
    pseudo = struct.pack(
        "!4s4sBBH",
        socket.inet_aton(src[0]),
        socket.inet_aton(dst[0]),
        0,
        socket.IPPROTO_TCP,
        len(header) + len(payload),
    )
    checksum = internet_checksum(pseudo + header + payload)
    segment = header[:16] + struct.pack("!H", checksum) + header[18:] + payload
    raw = socket_in(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    with raw:
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        raw.sendto(segment, (dst[0], 0))


# --- reading the capture back ------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    """One TCP segment of a capture (frame numbers 1-based, as Wireshark counts)."""

    frame: int
    ts: float
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    ack: int
    flags: int
    payload_len: int
    ttl: int

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)


@dataclass
class Wire:
    """The TCP segments of one capture file."""

    packets: list[Packet] = field(default_factory=list)

    def between(self, a: tuple[str, int], b: tuple[str, int]) -> list[Packet]:
        return [p for p in self.packets if {p.src, p.dst} == {a, b}]


def read_pcap(path: Path) -> Wire:
    """Parse a classic pcap of Ethernet/IPv4/IPv6 + TCP frames (what tcpdump -w writes here)."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        endian = "<"
    elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap")
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet")
    wire = Wire()
    offset, frame = 24, 0
    while offset + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack(endian + "IIII", data[offset : offset + 16])
        raw = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        frame += 1
        packet = _parse_frame(frame, sec + frac / (1e9 if nano else 1e6), raw)
        if packet is not None:
            wire.packets.append(packet)
    return wire


def _parse_frame(frame: int, ts: float, raw: bytes) -> Packet | None:
    ethertype = struct.unpack("!H", raw[12:14])[0]
    ip = raw[14:]
    if ethertype == 0x0800:
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != socket.IPPROTO_TCP:
            return None
        total = struct.unpack("!H", ip[2:4])[0]
        ttl = ip[8]
        src_ip = str(ipaddress.IPv4Address(ip[12:16]))
        dst_ip = str(ipaddress.IPv4Address(ip[16:20]))
        tcp = ip[ihl:total]
    elif ethertype == 0x86DD:
        if ip[6] != socket.IPPROTO_TCP:  # no extension headers in these captures
            return None
        length = struct.unpack("!H", ip[4:6])[0]
        ttl = ip[7]
        src_ip = str(ipaddress.IPv6Address(ip[8:24]))
        dst_ip = str(ipaddress.IPv6Address(ip[24:40]))
        tcp = ip[40 : 40 + length]
    else:
        return None
    sport, dport, seq, ack, offset_byte, flags = struct.unpack("!HHIIBB", tcp[:14])
    return Packet(
        frame=frame,
        ts=ts,
        src=(src_ip, sport),
        dst=(dst_ip, dport),
        seq=seq,
        ack=ack,
        flags=flags,
        payload_len=len(tcp) - (offset_byte >> 4) * 4,
        ttl=ttl,
    )
