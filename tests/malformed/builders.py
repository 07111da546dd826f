"""A tiny pcap/pcapng writer and TCP packet builder: captures made inside the tests.

Everything a malformed-input test needs is declared here as data, not as bytes checked
into the repository: TCP conversations (`Seg` lists), how they are framed on a link
(Ethernet, raw IP, Linux SLL/SLL2, BSD NULL), and how the records are stored (pcap in
either byte order and resolution, pcapng with several interfaces and foreign blocks).
Builders return bytes; breaking them (cutting, flipping, lying in a length) is the
test's business.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import pyarrow as pa

from tcp_teardown.tcpflags import internet_checksum

# TCP flag bits (RFC 9293, 3.1).
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# Link types (tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
SEQ_SPACE = 1 << 32

CLIENT = ("10.1.0.1", 40001)
SERVER = ("10.2.0.2", 80)


@dataclass(frozen=True)
class Seg:
    """One TCP segment as it crosses the capture point."""

    ts: float
    src: str
    dst: str
    sport: int
    dport: int
    flags: int
    seq: int
    ack: int = 0
    payload: int = 0  # payload bytes (zeros)
    ttl: int = 64
    window: int = 64240
    ip_id: int = 0

    @property
    def ip_version(self) -> int:
        return ipaddress.ip_address(self.src).version


# --- conversations -------------------------------------------------------------------------
def conversation(
    close: str = "fin_by_client",
    *,
    client: tuple[str, int] = CLIENT,
    server: tuple[str, int] = SERVER,
    isn_c: int = 1000,
    isn_s: int = 5000,
    t0: float = 1_700_000_000.0,
    step: float = 0.01,
    data: Sequence[tuple[str, int]] = (("c", 100), ("s", 300)),
    fin_data: int = 0,
    ttl: int = 64,
) -> list[Seg]:
    """A whole connection: handshake, `data` ((side, bytes) in order), then `close`.

    `close` is a close label of the taxonomy ("fin_by_client", "fin_by_server",
    "fin_simultaneous", "rst_by_client", "rst_by_server", "half_closed", "not_closed")
    or "three_way" (a client-started close whose second FIN rides on the ACK); the first
    FIN carries `fin_data` bytes. Sequence numbers wrap modulo 2**32, so ISNs near the
    top of the space cross the wrap.
    """
    (cip, cport), (sip, sport) = client, server
    segs: list[Seg] = []
    nxt = {"c": (isn_c + 1) % SEQ_SPACE, "s": (isn_s + 1) % SEQ_SPACE}
    ids = {"c": 100, "s": 200}

    def send(side: str, flags: int, payload: int = 0, seq: int | None = None) -> None:
        src, dst = ((cip, cport), (sip, sport)) if side == "c" else ((sip, sport), (cip, cport))
        other = "s" if side == "c" else "c"
        ids[side] += 1
        segs.append(Seg(
            ts=t0 + step * len(segs), src=src[0], dst=dst[0], sport=src[1], dport=dst[1], flags=flags,
            seq=nxt[side] if seq is None else seq, ack=nxt[other] if flags & ACK else 0,
            payload=payload, ttl=ttl, ip_id=ids[side],
        ))
        if seq is None:
            nxt[side] = (nxt[side] + payload + (1 if flags & (SYN | FIN) else 0)) % SEQ_SPACE

    send("c", SYN, seq=isn_c)
    send("s", SYN | ACK, seq=isn_s)
    nxt["s"] = (isn_s + 1) % SEQ_SPACE
    send("c", ACK)
    for side, size in data:
        send(side, PSH | ACK, size)
        send("s" if side == "c" else "c", ACK)
    if close in ("fin_by_client", "fin_by_server"):
        first, second = ("c", "s") if close == "fin_by_client" else ("s", "c")
        send(first, FIN | ACK, fin_data)
        send(second, ACK)
        send(second, FIN | ACK)
        send(first, ACK)
    elif close == "three_way":
        send("c", FIN | ACK, fin_data)
        send("s", FIN | ACK)
        send("c", ACK)
    elif close == "fin_simultaneous":
        c_ack, s_ack = nxt["s"], nxt["c"]
        send("c", FIN | ACK, fin_data)
        segs[-1] = replace(segs[-1], ack=c_ack)
        send("s", FIN | ACK)
        segs[-1] = replace(segs[-1], ack=s_ack)  # does not cover the client's FIN: crossed
        send("c", ACK)
        send("s", ACK)
    elif close in ("rst_by_client", "rst_by_server"):
        send("c" if close == "rst_by_client" else "s", RST | ACK)
    elif close == "half_closed":
        send("c", FIN | ACK, fin_data)
        send("s", ACK)
    elif close != "not_closed":
        raise ValueError(f"unknown close {close!r}")
    return segs


def shift(segs: Iterable[Seg], seconds: float) -> list[Seg]:
    return [replace(s, ts=s.ts + seconds) for s in segs]


# --- headers -------------------------------------------------------------------------------


def tcp_bytes(seg: Seg) -> bytes:
    """The TCP header and payload (20-byte header, checksum over the pseudo-header)."""
    header = struct.pack("!HHIIHHHH", seg.sport, seg.dport, seg.seq % SEQ_SPACE, seg.ack % SEQ_SPACE,
                         (5 << 12) | (seg.flags & 0x1FF), seg.window, 0, 0)
    body = header + bytes(seg.payload)
    src, dst = ipaddress.ip_address(seg.src).packed, ipaddress.ip_address(seg.dst).packed
    if seg.ip_version == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(body))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(body), 6)
    check = internet_checksum(pseudo + body)
    return body[:16] + struct.pack("!H", check) + body[18:]


def ipv4_bytes(src: str, dst: str, payload: bytes, *, proto: int = 6, ttl: int = 64, ip_id: int = 0,
               frag_offset: int = 0, more_fragments: bool = False, total_length: int | None = None) -> bytes:
    """An IPv4 header (no options) in front of `payload`; offsets in bytes (multiple of 8)."""
    frag = (0x2000 if more_fragments else 0) | (frag_offset // 8)
    length = 20 + len(payload) if total_length is None else total_length
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, ip_id, frag, ttl, proto, 0,
                         ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:] + payload


def ipv6_bytes(src: str, dst: str, payload: bytes, *, next_header: int = 6, hop_limit: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hop_limit,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed) + payload


def ip_packet(seg: Seg) -> bytes:
    """The IP datagram that carries `seg`."""
    if seg.ip_version == 4:
        return ipv4_bytes(seg.src, seg.dst, tcp_bytes(seg), ttl=seg.ttl, ip_id=seg.ip_id)
    return ipv6_bytes(seg.src, seg.dst, tcp_bytes(seg), hop_limit=seg.ttl)


def fragments(seg: Seg, size: int = 24) -> list[bytes]:
    """`seg`'s IPv4 datagram cut into fragments carrying `size` bytes each (a multiple of 8)."""
    assert seg.ip_version == 4 and size % 8 == 0
    body = tcp_bytes(seg)
    return [ipv4_bytes(seg.src, seg.dst, body[off:off + size], ttl=seg.ttl, ip_id=seg.ip_id,
                       frag_offset=off, more_fragments=off + size < len(body))
            for off in range(0, len(body), size)]


def link_frame(ip: bytes, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    """An IP datagram framed for `linktype`."""
    version = ip[0] >> 4
    ethertype = 0x0800 if version == 4 else 0x86DD
    if linktype == LINKTYPE_ETHERNET:
        return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ethertype) + ip
    if linktype == LINKTYPE_RAW:
        return ip
    if linktype == LINKTYPE_LINUX_SLL:  # packet type, ARPHRD_ETHER, address length, address, protocol
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", ethertype) + ip
    if linktype == LINKTYPE_LINUX_SLL2:  # protocol, reserved, ifindex, ARPHRD, packet type, addr len, addr
        return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, b"\x02\0\0\0\0\x01\0\0") + ip
    if linktype == LINKTYPE_NULL:  # address family in the capturing host's byte order
        return struct.pack("<I", 2 if version == 4 else 30) + ip
    raise ValueError(f"no framing for link type {linktype}")


def frames_of(segs: Iterable[Seg], linktype: int = LINKTYPE_ETHERNET) -> list[tuple[float, bytes]]:
    return [(s.ts, link_frame(ip_packet(s), linktype)) for s in segs]


# --- files ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """One stored packet: its time, the bytes kept, and the length it had on the wire."""

    ts: float
    data: bytes
    wirelen: int | None = None  # None: the same as len(data)
    caplen: int | None = None  # None: the true len(data); set to lie in the header
    interface: int = 0  # pcapng interface index


def records(frames: Iterable[tuple[float, bytes]], snaplen: int | None = None, interface: int = 0) -> list[Record]:
    """Records of (ts, frame) pairs; with `snaplen`, each frame is cut to that many bytes."""
    return [Record(ts, data[:snaplen] if snaplen else data, len(data), interface=interface)
            for ts, data in frames]


def _split_ts(ts: float, per_second: int) -> tuple[int, int]:
    whole = int(ts)
    frac = round((ts - whole) * per_second)
    if frac >= per_second:
        whole, frac = whole + 1, frac - per_second
    return whole, frac


def pcap_bytes(recs: Iterable[Record], linktype: int = LINKTYPE_ETHERNET, *, nanosecond: bool = False,
               big_endian: bool = False, snaplen: int = 262144) -> bytes:
    """A classic pcap file."""
    order = ">" if big_endian else "<"
    magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    per_second = 1_000_000_000 if nanosecond else 1_000_000
    for rec in recs:
        sec, frac = _split_ts(rec.ts, per_second)
        caplen = len(rec.data) if rec.caplen is None else rec.caplen
        wirelen = len(rec.data) if rec.wirelen is None else rec.wirelen
        out.append(struct.pack(order + "IIII", sec, frac, caplen, wirelen) + rec.data)
    return b"".join(out)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def pcapng_block(block_type: int, body: bytes) -> bytes:
    """A pcapng block: type, total length, body (padded to 32 bits), total length."""
    body = _pad4(body)
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def pcapng_option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def section_header() -> bytes:
    return pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def interface_block(linktype: int = LINKTYPE_ETHERNET, *, nanosecond: bool = False, name: str = "") -> bytes:
    options = b""
    if name:
        options += pcapng_option(2, name.encode())
    if nanosecond:
        options += pcapng_option(9, bytes([9]))
    if options:
        options += pcapng_option(0, b"")
    return pcapng_block(1, struct.pack("<HHI", linktype, 0, 0) + options)


def unknown_block(block_type: int = 0x0000_7E57, body: bytes = b"not a packet, skip me") -> bytes:
    """A block of a type readers do not know (they must skip it by its length)."""
    return pcapng_block(block_type, body)


def custom_block(body: bytes = b"private data") -> bytes:
    """A custom block (type 0xBAD, "may be copied") with a private enterprise number."""
    return pcapng_block(0x00000BAD, struct.pack("<I", 32473) + body)


def packet_block(rec: Record, nanosecond: bool = False) -> bytes:
    """An enhanced packet block."""
    units = round(rec.ts * (1_000_000_000 if nanosecond else 1_000_000))
    caplen = len(rec.data) if rec.caplen is None else rec.caplen
    wirelen = len(rec.data) if rec.wirelen is None else rec.wirelen
    return pcapng_block(6, struct.pack("<IIIII", rec.interface, units >> 32, units & 0xFFFFFFFF,
                                       caplen, wirelen) + rec.data)


def pcapng_bytes(recs: Iterable[Record], linktypes: Sequence[int] = (LINKTYPE_ETHERNET,), *,
                 extra: dict[int, bytes] | None = None, nanosecond: bool = False) -> bytes:
    """A pcapng file: one section, one interface per link type, `extra` blocks before record i
    (key -1: after the last record)."""
    extra = extra or {}
    out = [section_header(), *(interface_block(lt, name=f"if{i}", nanosecond=nanosecond)
                               for i, lt in enumerate(linktypes))]
    for i, rec in enumerate(recs):
        if i in extra:
            out.append(extra[i])
        out.append(packet_block(rec, nanosecond))
    if -1 in extra:
        out.append(extra[-1])
    return b"".join(out)


def pcap_of(segs: Iterable[Seg], linktype: int = LINKTYPE_ETHERNET, **kwargs: object) -> bytes:
    """A pcap holding `segs`, framed for `linktype`."""
    return pcap_bytes(records(frames_of(segs, linktype)), linktype, **kwargs)  # type: ignore[arg-type]


# --- packet tables -------------------------------------------------------------------------
def packet_table(segs: Sequence[Seg], first_frame: int = 1, stream: Sequence[int] | None = None) -> pa.Table:
    """`segs` as the packet table every engine produces (schema.PACKETS), frames numbered
    from `first_frame` in the given order; `stream` gives tcp.stream per segment (else null)."""
    from tcp_teardown.schema import PACKETS

    n = len(segs)
    columns = {
        "frame_number": list(range(first_frame, first_frame + n)),
        "ts": [s.ts for s in segs],
        "ip_version": [s.ip_version for s in segs],
        "src_ip": [s.src for s in segs],
        "dst_ip": [s.dst for s in segs],
        "src_port": [s.sport for s in segs],
        "dst_port": [s.dport for s in segs],
        "tcp_flags": [s.flags for s in segs],
        "seq_raw": [s.seq % SEQ_SPACE for s in segs],
        "ack_raw": [s.ack % SEQ_SPACE for s in segs],
        "payload_len": [s.payload for s in segs],
        "window": [s.window for s in segs],
        "ttl": [s.ttl for s in segs],
        "ip_id": [s.ip_id if s.ip_version == 4 else None for s in segs],
        "tcp_stream": list(stream) if stream is not None else [None] * n,
    }
    return pa.Table.from_pydict(columns, schema=PACKETS)
