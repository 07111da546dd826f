"""Synthesize captures for the notebooks from the real-traffic fixtures.

Each fixture in tests/captures/real/ is one real Linux connection (or two on one 4-tuple).
`write_pcap` replays fixtures as many connections: new addresses and ports, shifted
times, shifted sequence numbers (two attempts on one 4-tuple must not look like a
retransmitted SYN), and optionally a longer silence before the close (an idle timeout
of a chosen length). The TCP/IP headers are rewritten and their checksums recomputed;
everything else (options, payload) is the real packet.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

from tcp_teardown import tcpflags as tf
from tcp_teardown.pcapng_writer import read_records
from tcp_teardown.tcpflags import internet_checksum

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "captures" / "real"
EPOCH = 1_700_000_000.0  # the synthetic captures start here (2023-11-14T22:13:20Z)
LINKTYPE_ETHERNET = 1
ETHERTYPE_IPV4 = 0x0800
ETH_HEADER = 14
IPPROTO_TCP = 6


@dataclass(frozen=True)
class Conn:
    """One connection to synthesize from a fixture."""

    template: str  # fixture name without .pcap, e.g. "fin_by_server"
    start: float  # seconds after EPOCH of its first packet
    client: tuple[str, int]
    server: tuple[str, int]
    idle_s: float | None = None  # the silence before the first FIN/RST becomes this long
    isn_shift: int = 0  # added to both sides' sequence numbers (distinct attempts on one 4-tuple)


@dataclass(frozen=True)
class _Record:
    ts: float
    frame: bytes




_TEMPLATE_CACHE: dict[str, list[tuple[float, bytes]]] = {}


def _template(name: str) -> list[tuple[float, bytes]]:
    """(time, Ethernet frame) of every packet of a fixture; IPv4 over Ethernet only."""
    if name not in _TEMPLATE_CACHE:
        packets = []
        for linktype, ts, _caplen, _origlen, data in read_records(FIXTURES / f"{name}.pcap"):
            ethertype = struct.unpack_from("!H", data, 12)[0]
            if linktype != LINKTYPE_ETHERNET or ethertype != ETHERTYPE_IPV4:
                raise ValueError(f"{name}: only IPv4 over Ethernet fixtures can be replayed")
            packets.append((ts, data))
        _TEMPLATE_CACHE[name] = packets
    return _TEMPLATE_CACHE[name]


def _rewrite(frame: bytes, to_server: bool, conn: Conn) -> tuple[bytes, int]:
    """The frame with the connection's addresses, ports and sequence numbers; and its TCP flags."""
    buf = bytearray(frame)
    ip = ETH_HEADER
    ihl = (buf[ip] & 0x0F) * 4
    tcp = ip + ihl
    src, dst = (conn.client, conn.server) if to_server else (conn.server, conn.client)
    buf[ip + 12:ip + 16] = ipaddress.IPv4Address(src[0]).packed
    buf[ip + 16:ip + 20] = ipaddress.IPv4Address(dst[0]).packed
    struct.pack_into("!HH", buf, tcp, src[1], dst[1])
    seq, ack = struct.unpack_from("!II", buf, tcp + 4)
    flags = struct.unpack_from("!H", buf, tcp + 12)[0] & 0x0FFF
    seq = (seq + conn.isn_shift) % tf.SEQ_SPACE
    if flags & tf.ACK:
        ack = (ack + conn.isn_shift) % tf.SEQ_SPACE
    struct.pack_into("!II", buf, tcp + 4, seq, ack)
    # Checksums: IPv4 header, then TCP over the pseudo-header (RFC 9293, 3.1).
    total_len = struct.unpack_from("!H", buf, ip + 2)[0]
    struct.pack_into("!H", buf, ip + 10, 0)
    struct.pack_into("!H", buf, ip + 10, internet_checksum(bytes(buf[ip:tcp])))
    segment_len = total_len - ihl
    struct.pack_into("!H", buf, tcp + 16, 0)
    pseudo = bytes(buf[ip + 12:ip + 20]) + struct.pack("!BBH", 0, IPPROTO_TCP, segment_len)
    struct.pack_into("!H", buf, tcp + 16, internet_checksum(pseudo + bytes(buf[tcp:tcp + segment_len])))
    return bytes(buf), flags


def _records(conn: Conn) -> list[_Record]:
    packets = _template(conn.template)
    ip = ETH_HEADER
    first_src = packets[0][1][ip + 12:ip + 16]
    first_sport = struct.unpack_from("!H", packets[0][1], ip + (packets[0][1][ip] & 0x0F) * 4)[0]
    t0 = packets[0][0]
    out: list[_Record] = []
    shift = 0.0
    stretched = conn.idle_s is None
    previous = t0
    for ts, frame in packets:
        ihl = (frame[ip] & 0x0F) * 4
        sport = struct.unpack_from("!H", frame, ip + ihl)[0]
        to_server = frame[ip + 12:ip + 16] == first_src and sport == first_sport
        data, flags = _rewrite(frame, to_server, conn)
        if not stretched and flags & (tf.FIN | tf.RST):
            shift = float(conn.idle_s) - (ts - previous)  # type: ignore[arg-type]
            stretched = True
        previous = ts
        out.append(_Record(EPOCH + conn.start + (ts - t0) + shift, data))
    return out


def write_pcap(path: Path, conns: list[Conn]) -> Path:
    """A classic pcap (microseconds, Ethernet) of all `conns`, packets in time order."""
    records = sorted((r for conn in conns for r in _records(conn)), key=lambda r: r.ts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))
        for record in records:
            micros = round(record.ts * 1_000_000)
            fh.write(struct.pack("<IIII", micros // 1_000_000, micros % 1_000_000,
                                 len(record.frame), len(record.frame)))
            fh.write(record.frame)
    return path
