"""The native capture reader against tshark, on the shared corpus and on small captures
written here byte by byte (pcap/pcapng writers and packet builders below)."""

from __future__ import annotations

import gzip
import ipaddress
import shutil
import struct
import subprocess
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tcp_teardown.native import NativeUnsupported, TruncatedCapture, chains, pcap, read_packets
from tcp_teardown.native.views import Views
from tcp_teardown.schema import PACKETS

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CORPUS_DIRS = [SHARED / "corpus" / "seeds", SHARED / "corpus" / "zeek" / "traces"]
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed")

# ---------------------------------------------------------------------------------------
# Reference: tshark's fields, in the PACKETS columns
# ---------------------------------------------------------------------------------------

FIELDS = [
    "frame.number", "frame.time_epoch", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst",
    "ip.ttl", "ipv6.hlim", "ip.id", "tcp.srcport", "tcp.dstport", "tcp.flags",
    "tcp.seq_raw", "tcp.ack_raw", "tcp.len", "tcp.window_size_value", "tcp.stream",
]  # fmt: skip


def engine_options() -> list[str]:
    """tshark options as the tshark engine uses them (lean preferences: no reassembly,
    no sequence analysis; the Teredo heuristic on; protocols above TCP off)."""
    try:
        from tcp_teardown import tshark as engine
    except ImportError:
        return []
    options: list[str] = []
    for preference in getattr(engine, "LEAN_PREFERENCES", ()):
        options += ["-o", preference]
    for heuristic in getattr(engine, "TUNNEL_HEURISTICS", ()):
        options += ["--enable-heuristic", heuristic]
    above_tcp = getattr(engine, "protocols_above_tcp", None)
    if above_tcp is not None and TSHARK:
        for protocol in above_tcp(TSHARK):
            options += ["--disable-protocol", protocol]
    return options


def tshark_rows(path: Path) -> list[dict[str, object]]:
    """tshark's view of the TCP segments of `path`, as PACKETS rows, the way the tshark
    engine reads it: innermost IP/TCP (occurrence=l), no TCP quoted in ICMP errors, a
    missing tcp.len (a fragment, a segment shorter than its header) as 0.

    Rows where tshark stops before the flags (a bogus TCP header length) are left out:
    the native reader has no row for them."""
    command = [TSHARK or "tshark", "-n", "-r", str(path), "-Y", "tcp and not icmp and not icmpv6"]
    command += ["-T", "fields", "-E", "occurrence=l", "-E", "separator=\t", *engine_options()]
    for name in FIELDS:
        command += ["-e", name]
    out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    rows = []
    for line in out.splitlines():
        v = dict(zip(FIELDS, line.split("\t"), strict=True))
        if not (v["tcp.flags"] and v["tcp.seq_raw"]):
            continue
        six = bool(v["ipv6.src"]) and not v["ip.src"]
        rows.append(
            {
                "frame_number": int(v["frame.number"]),
                # frames without a timestamp (pcapng simple packet blocks) have none in
                # tshark; the native reader gives them 0.0
                "ts": float(v["frame.time_epoch"] or 0.0),
                "ip_version": 6 if six else 4,
                "src_ip": v["ipv6.src"] if six else v["ip.src"],
                "dst_ip": v["ipv6.dst"] if six else v["ip.dst"],
                "src_port": int(v["tcp.srcport"]),
                "dst_port": int(v["tcp.dstport"]),
                "tcp_flags": int(v["tcp.flags"], 16),
                "seq_raw": int(v["tcp.seq_raw"]),
                "ack_raw": int(v["tcp.ack_raw"] or 0),
                "payload_len": int(v["tcp.len"] or 0),
                "window": int(v["tcp.window_size_value"] or 0),
                "ttl": int(v["ipv6.hlim"] if six else v["ip.ttl"]),
                "ip_id": None if six else int(v["ip.id"], 16),
                "tcp_stream": int(v["tcp.stream"]),
            }
        )
    return rows


def native_table(path: Path, chunk_packets: int = 1_000_000) -> pa.Table:
    batches = list(read_packets(path, chunk_packets))
    for batch in batches:
        assert batch.schema.equals(PACKETS, check_metadata=True)
        assert batch.num_rows <= chunk_packets
    return pa.Table.from_batches(batches, schema=PACKETS)


def assert_matches_tshark(path: Path) -> pa.Table:
    table = native_table(path)
    expected = tshark_rows(path)
    got = table.to_pylist()
    assert len(got) == len(expected), f"{path.name}: {len(got)} rows, tshark {len(expected)}"
    for mine, theirs in zip(got, expected, strict=True):
        assert mine == theirs, f"{path.name} frame {theirs['frame_number']}"
    return table


# ---------------------------------------------------------------------------------------
# The shared corpus
# ---------------------------------------------------------------------------------------


def corpus_files() -> list[Path]:
    found: list[Path] = []
    for folder in CORPUS_DIRS:
        if folder.is_dir():
            found += sorted(p for p in folder.rglob("*") if ".pcap" in p.name and p.is_file())
    return found


@needs_tshark
@pytest.mark.skipif(not SHARED.is_dir(), reason="shared corpus not present")
@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corpus_file_matches_tshark(path: Path) -> None:
    try:
        list(read_packets(path))
    except NativeUnsupported as exc:
        # Declining is allowed (tshark reads the file instead); say so in the summary.
        warnings.warn(f"native reader declines {path.name}: {exc}", stacklevel=1)
        return
    assert_matches_tshark(path)


# ---------------------------------------------------------------------------------------
# Writers: pcap, pcapng, and packets
# ---------------------------------------------------------------------------------------

Frame = bytes | tuple[bytes, int]  # data, or (captured data, wire length)


def write_pcap(
    path: Path,
    frames: Sequence[Frame],
    link: int = 1,
    little: bool = True,
    nanoseconds: bool = False,
    times: Sequence[tuple[int, int]] | None = None,
) -> Path:
    order = "<" if little else ">"
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, link)]
    for i, frame in enumerate(frames):
        data, wire = (frame, len(frame)) if isinstance(frame, bytes) else frame
        sec, frac = times[i] if times else (1_700_000_000 + i, 123_456 + i)
        out.append(struct.pack(order + "IIII", sec, frac, len(data), wire) + data)
    path.write_bytes(b"".join(out))
    return path


def _block(kind: int, body: bytes, order: str) -> bytes:
    body += b"\0" * (-len(body) % 4)
    size = len(body) + 12
    return struct.pack(order + "II", kind, size) + body + struct.pack(order + "I", size)


def _option(code: int, value: bytes, order: str) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def pcapng_section(little: bool = True) -> bytes:
    order = "<" if little else ">"
    return _block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)


def pcapng_interface(link: int, little: bool = True, tsresol: int | None = None,
                     tsoffset: int | None = None, snaplen: int = 0) -> bytes:  # fmt: skip
    order = "<" if little else ">"
    options = b""
    if tsresol is not None:
        options += _option(9, bytes([tsresol]), order)
    if tsoffset is not None:
        options += _option(14, struct.pack(order + "q", tsoffset), order)
    if options:
        options += _option(0, b"", order)
    return _block(1, struct.pack(order + "HHI", link, 0, snaplen) + options, order)


def pcapng_epb(iface: int, ticks: int, data: bytes, little: bool = True, wire: int | None = None) -> bytes:  # fmt: skip
    order = "<" if little else ">"
    head = struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
                       len(data) if wire is None else wire)  # fmt: skip
    return _block(6, head + data, order)


def pcapng_spb(data: bytes, little: bool = True) -> bytes:
    order = "<" if little else ">"
    return _block(3, struct.pack(order + "I", len(data)) + data, order)


def checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"",
        window: int = 1000, options: bytes = b"", data_offset: int | None = None) -> bytes:  # fmt: skip
    options += b"\0" * (-len(options) % 4)
    offset = data_offset if data_offset is not None else 5 + len(options) // 4
    head = struct.pack("!HHIIHHHH", sport, dport, seq, ack, (offset << 12) | flags, window, 0, 0)
    return head + options + payload


def ipv4(src: str, dst: str, payload: bytes, proto: int = 6, ident: int = 7, ttl: int = 64,
         frag: int = 0x4000, options: bytes = b"", total: int | None = None) -> bytes:  # fmt: skip
    ihl = 5 + len(options) // 4
    length = 4 * ihl + len(payload) if total is None else total
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, ident, frag, ttl, proto, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)  # fmt: skip
    head += options
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return head + payload


def ipv6(src: str, dst: str, payload: bytes, next_header: int = 6, hop_limit: int = 63) -> bytes:
    return (
        struct.pack("!IHBB", 0x60000000, len(payload), next_header, hop_limit)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def ext(next_header: int, size8: int = 0) -> bytes:
    """A generic IPv6 extension header of (size8 + 1) * 8 bytes."""
    return bytes([next_header, size8]) + b"\1\4\0\0\0\0" + b"\0" * (8 * size8)


def ether(payload: bytes, ethertype: int = 0x0800, tags: Iterable[int] = ()) -> bytes:
    head = bytes.fromhex("00112233445500aabbccddee")
    for tpid in tags:
        head += struct.pack("!HH", tpid, 100)
    return head + struct.pack("!H", ethertype) + payload


SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
A, B = "10.0.0.1", "10.0.0.2"


def handshake(a: str = A, b: str = B, sport: int = 40000, dport: int = 80) -> list[bytes]:
    """A short connection as IPv4 packets: handshake, data, FIN close."""
    return [
        ipv4(a, b, tcp(sport, dport, 100, 0, SYN, window=65535)),
        ipv4(b, a, tcp(dport, sport, 900, 101, SYN | ACK)),
        ipv4(a, b, tcp(sport, dport, 101, 901, ACK)),
        ipv4(a, b, tcp(sport, dport, 101, 901, PSH | ACK, b"GET / HTTP/1.0\r\n\r\n")),
        ipv4(b, a, tcp(dport, sport, 901, 119, FIN | ACK)),
        ipv4(a, b, tcp(sport, dport, 119, 902, FIN | ACK)),
        ipv4(b, a, tcp(dport, sport, 902, 120, ACK)),
    ]


# ---------------------------------------------------------------------------------------
# Formats, byte orders, timestamps, compression
# ---------------------------------------------------------------------------------------


@needs_tshark
@pytest.mark.parametrize("little", [True, False])
@pytest.mark.parametrize("nanoseconds", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, little: bool, nanoseconds: bool) -> None:
    times = [(1_700_000_000 + i, 999_999_999 if nanoseconds else 999_999) for i in range(7)]
    path = write_pcap(tmp_path / "c.pcap", [ether(p) for p in handshake()], little=little,
                      nanoseconds=nanoseconds, times=times)  # fmt: skip
    table = assert_matches_tshark(path)
    assert table.num_rows == 7
    assert table.column("ts")[0].as_py() == pytest.approx(1_700_000_000.999999, abs=1e-6)


def test_gzip_and_zstd_equal_plain(tmp_path: Path) -> None:
    plain = write_pcap(tmp_path / "c.pcap", [ether(p) for p in handshake()])
    expected = native_table(plain)
    packed = tmp_path / "c.pcap.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert native_table(packed).equals(expected)
    zstandard = pytest.importorskip("zstandard")
    squeezed = tmp_path / "c.pcap.zst"
    squeezed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    assert native_table(squeezed).equals(expected)


@needs_tshark
def test_pcapng_interfaces_resolutions_and_blocks(tmp_path: Path) -> None:
    packets = handshake()
    body = pcapng_section()
    body += pcapng_interface(1)  # Ethernet, microseconds
    body += pcapng_interface(101, tsresol=9)  # raw IP, nanoseconds
    body += _block(4, b"\0\0\0\0", "<")  # a name resolution block: skipped
    body += pcapng_epb(0, 1_700_000_000_123_456, ether(packets[0]))
    body += pcapng_epb(1, 1_700_000_000_123_456_789, packets[1])
    body += _block(0x0BADBEEF & 0x7FFFFFFF, b"unknown", "<")  # an unknown block: skipped
    body += pcapng_interface(113, tsresol=0x80 | 20, tsoffset=1000)  # SLL, 2^-20 s
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\0" * 8, 0x0800)
    body += pcapng_epb(2, (1_699_000_000 << 20) + 12345, sll + packets[2])
    body += pcapng_spb(ether(packets[3]))
    # a second section, big-endian, with its own interfaces
    body += pcapng_section(little=False)
    body += pcapng_interface(1, little=False, tsresol=3)
    for i, packet in enumerate(packets[4:]):
        body += pcapng_epb(0, 1_700_000_001_000 + i, ether(packet), little=False)
    path = tmp_path / "c.pcapng"
    path.write_bytes(body)
    table = assert_matches_tshark(path)
    assert table.num_rows == 7


@needs_tshark
def test_pcapng_interfaces_taking_turns(tmp_path: Path) -> None:
    """Frames of two plain link types, alternating, all TCP: rows stay in capture order."""
    body = pcapng_section() + pcapng_interface(1) + pcapng_interface(101)  # Ethernet, raw IP
    for i, packet in enumerate(handshake()):
        body += pcapng_epb(i % 2, 1_700_000_000_000_000 + i, ether(packet) if i % 2 == 0 else packet)
    path = tmp_path / "c.pcapng"
    path.write_bytes(body)
    table = assert_matches_tshark(path)
    assert table.column("frame_number").to_pylist() == list(range(1, 8))


@needs_tshark
def test_pcapng_blocks_that_are_frames(tmp_path: Path) -> None:
    """Wireshark numbers custom and systemd-journal blocks as frames (without TCP)."""
    packets = [ether(p) for p in handshake()]
    body = pcapng_section() + pcapng_interface(1)
    body += _block(0x00000BAD, struct.pack("<I", 32473) + b"private", "<")
    body += pcapng_epb(0, 10**15, packets[0]) + pcapng_epb(0, 10**15 + 1, packets[1])
    body += _block(9, b"__REALTIME_TIMESTAMP=1700000000000000\nMESSAGE=hi\n", "<")
    body += _block(5, bytes(12), "<")  # an interface statistics block: no frame
    body += pcapng_epb(0, 10**15 + 2, packets[2])
    body += _block(0x40000BAD, struct.pack("<I", 32473) + b"private", "<")
    body += b"".join(pcapng_epb(0, 10**15 + 3 + i, p) for i, p in enumerate(packets[3:]))
    path = tmp_path / "frames.pcapng"
    path.write_bytes(body)
    table = assert_matches_tshark(path)
    assert table.column("frame_number").to_pylist() == [2, 3, 5, 7, 8, 9, 10]


@needs_tshark
def test_link_types(tmp_path: Path) -> None:
    packets = handshake()
    v6 = [
        ipv6("2001:db8::1", "2001:db8::2", tcp(1, 2, 3, 4, SYN)),
        ipv6("fe80::1", "::1", tcp(2, 1, 9, 4, SYN | ACK)),
    ]
    cases = {
        "vlan": (1, [ether(p, tags=[0x8100]) for p in packets]),
        "qinq": (1, [ether(p, tags=[0x88A8, 0x8100]) for p in packets[:3]]
                 + [ether(p, tags=[0x9100, 0x8100]) for p in packets[3:]]),
        "snap": (1, [bytes.fromhex("00112233445500aabbccddee") + struct.pack("!H", 8 + len(p))
                     + bytes.fromhex("aaaa030000000800") + p for p in packets]),
        "sll": (113, [struct.pack("!HHH8sH", 0, 1, 6, b"\0" * 8, 0x0800) + p for p in packets]),
        "sll2": (276, [struct.pack("!HHIHBB8s", 0x86DD, 0, 2, 1, 0, 6, b"\0" * 8) + p for p in v6]
                 + [struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 4, 6, b"\0" * 8) + p for p in packets]),
        "raw": (101, packets + v6),
        "raw14": (14, packets),
        "ipv4": (228, packets),
        "ipv6": (229, v6),
        "null_le": (0, [struct.pack("<I", 2) + p for p in packets] + [struct.pack("<I", 30) + p for p in v6]),
        "null_be": (0, [struct.pack(">I", 2) + p for p in packets] + [struct.pack(">I", 24) + p for p in v6]),
        "loop": (108, [struct.pack(">I", 2) + p for p in packets] + [struct.pack(">I", 28) + p for p in v6]),
        "eth_v6_in_0800": (1, [ether(p, 0x0800) for p in v6] + [ether(p, 0x86DD) for p in packets]),
    }  # fmt: skip
    for name, (link, frames) in cases.items():
        path = write_pcap(tmp_path / f"{name}.pcap", frames, link=link)
        table = assert_matches_tshark(path)
        assert table.num_rows > 0, name


# ---------------------------------------------------------------------------------------
# IP and TCP details
# ---------------------------------------------------------------------------------------


@needs_tshark
def test_ip_options_and_ipv6_extension_headers(tmp_path: Path) -> None:
    seg = tcp(5000, 443, 7, 0, SYN, options=bytes.fromhex("020405b40103030801010402"))
    s, d = "2001:db8:0:1::10", "2001:db8::ffff:1.2.3.4"
    frames = [
        ipv4(A, B, seg, options=bytes.fromhex("94040000") + b"\x01" * 4),  # router alert, NOPs
        ipv6(s, d, ext(6) + seg, next_header=0),  # hop-by-hop
        ipv6(s, d, bytes([6, 0, 0, 0, 0, 0, 0, 0]) + seg, next_header=43),  # routing
        ipv6(s, d, ext(60) + ext(6) + seg, next_header=0),  # hop-by-hop, destination options
        ipv6(s, d, bytes([6, 0, 0, 0, 0, 0, 0, 9]) + seg, next_header=44),  # atomic fragment
        ipv6(s, d, bytes([6, 4, 0, 0]) + b"\0" * 20 + seg, next_header=51),  # AH
        ipv4(A, B, bytes([6, 4, 0, 0]) + b"\0" * 20 + seg, proto=51),  # AH in IPv4
        ipv6("::", "::1", seg), ipv6("::ffff:0.0.0.1", "1::", seg), ipv6("64:ff9b::1:2", "fe80::1:0:0:0", seg),
    ]  # fmt: skip
    path = write_pcap(tmp_path / "x.pcap", frames, link=101)
    table = assert_matches_tshark(path)
    assert table.num_rows == len(frames)


@needs_tshark
def test_fragments(tmp_path: Path) -> None:
    """First fragments give a row from the headers they carry (no tcp.len without
    reassembly: payload_len 0); later fragments none."""
    seg = tcp(1000, 80, 5, 6, ACK, b"x" * 40)
    frames = [
        ipv4(A, B, seg[:32], frag=0x2000, total=52),  # first fragment (MF, offset 0)
        ipv4(A, B, seg[32:], frag=4),  # offset 32 bytes
        ipv6("::1", "::2", bytes([6, 0, 0, 1, 0, 0, 0, 9]) + seg[:32], next_header=44),
        ipv6("::1", "::2", bytes([6, 0, 0, 32, 0, 0, 0, 9]) + seg[32:], next_header=44),
        ipv4(A, B, tcp(1000, 80, 5, 6, SYN)),  # whole again: the stream was opened
    ]
    table = assert_matches_tshark(write_pcap(tmp_path / "f.pcap", frames, link=101))
    assert table.column("frame_number").to_pylist() == [1, 3, 5]
    assert table.column("payload_len").to_pylist() == [0, 0, 0]


@needs_tshark
def test_snaplen_truncation_and_bogus_headers(tmp_path: Path) -> None:
    """Rows need the first 16 TCP bytes captured and a sane header; tshark's streams also
    count headers it gives up on, so the numbering around them must still match."""
    full = [ether(p) for p in handshake()]
    frames: list[Frame] = [
        (full[0][: 14 + 20 + 16], len(full[0])),  # 16 TCP bytes: a row
        (full[1][: 14 + 20 + 15], len(full[1])),  # 15: nothing, no stream
        (full[2][: 14 + 10], len(full[2])),  # IP header cut
        ether(ipv4(A, "10.9.9.9", tcp(1, 2, 3, 4, ACK, data_offset=4))),  # bogus length
        ether(ipv4(A, "10.9.9.8", tcp(1, 2, 3, 4, ACK, b"abc"), total=30)),  # IP too short
        ether(ipv4(A, "10.9.9.7", tcp(1, 2, 3, 4, ACK, b"abc"), total=0)),  # TSO: length 0
        ether(ipv4(A, "10.9.9.6", tcp(1, 2, 3, 4, ACK, b"abc"), total=200)),  # beyond frame
        (ether(ipv4(A, B, tcp(9, 9, 1, 1, ACK, options=b"\1" * 12)))[:50], 66),  # options cut
        ether(ipv4(A, B, tcp(9, 9, 1, 12345, SYN))),  # ack field set without ACK: kept raw
        *full[3:],
    ]
    assert_matches_tshark(write_pcap(tmp_path / "t.pcap", frames))


# ---------------------------------------------------------------------------------------
# tcp.stream numbering
# ---------------------------------------------------------------------------------------


@needs_tshark
def test_stream_numbering_rules(tmp_path: Path) -> None:
    def c2s(seq: int, ack: int, flags: int) -> bytes:
        return ether(ipv4(A, B, tcp(1111, 80, seq, ack, flags)))

    def s2c(seq: int, ack: int, flags: int) -> bytes:
        return ether(ipv4(B, A, tcp(80, 1111, seq, ack, flags)))

    def icmp_quote(inner: bytes) -> bytes:
        return ether(ipv4("10.0.0.254", A, struct.pack("!BBHI", 3, 3, 0, 0) + inner, proto=1))

    frames = [
        c2s(100, 0, SYN), s2c(0, 101, RST | ACK), c2s(100, 0, SYN),  # RST, same ISN: same
        s2c(500, 101, SYN | ACK), c2s(101, 501, ACK), c2s(101, 501, FIN | ACK),
        c2s(100, 0, SYN),  # FIN seen, same ISN: still the same stream
        c2s(7000, 0, SYN), c2s(7000, 0, SYN),  # new ISN: new stream; retransmission: same
        s2c(9000, 0, SYN),  # the server side has no base sequence number yet: same ...
        s2c(9000, 0, SYN), c2s(7001, 9001, ACK),  # ... but now it has (9000)
        s2c(9500, 0, SYN),  # so a SYN with another ISN from that side is new
        icmp_quote(ipv4(A, "10.0.0.3", tcp(2222, 443, 5, 0, SYN))),  # opens a stream
        ether(ipv4(A, "10.0.0.3", tcp(2222, 443, 5, 0, SYN))),
        ether(ipv4("10.0.0.3", A, tcp(443, 2222, 9, 6, SYN | ACK))),
        ether(ipv4(A, "10.0.0.4", tcp(3333, 443, 5, 6, ACK, data_offset=4))),  # bogus: opens
        ether(ipv4(A, "10.0.0.4", tcp(3333, 443, 5000, 0, SYN))),  # ... and was analysed
        ether(ipv6("2001:db8::1", "2001:db8::2", tcp(1111, 80, 100, 0, SYN))),  # v6: own pair
    ]  # fmt: skip
    table = assert_matches_tshark(write_pcap(tmp_path / "s.pcap", frames))
    assert table.column("tcp_stream").to_pylist()[:13] == [0] * 7 + [1] * 5 + [2]


@needs_tshark
def test_streams_across_windows_and_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """State carried between windows and batches: many connections, port reuse, small
    windows (so the chained record walk, not only the sequential one, is used)."""
    rng = np.random.default_rng(7)
    frames = []
    for i in range(3000):
        port = 20000 + int(rng.integers(0, 400))  # reuse of 4-tuples with new ISNs
        isn = int(rng.integers(0, 2**32 - 1))
        a = f"10.1.{i % 7}.{1 + i % 11}"
        for packet in handshake(a, "10.2.0.1", port, 443)[: 1 + int(rng.integers(0, 7))]:
            fields = bytearray(packet)
            if i % 3 == 0:  # shift sequence numbers of some connections
                seq = (struct.unpack_from("!I", fields, 24)[0] + isn) % 2**32
                struct.pack_into("!I", fields, 24, seq)
            frames.append(ether(bytes(fields) + bytes(int(rng.integers(0, 600)))))
    path = write_pcap(tmp_path / "many.pcap", frames)
    monkeypatch.setattr("tcp_teardown.native.files.WINDOW_BYTES", 300_000)
    monkeypatch.setattr("tcp_teardown.native.reader.DECODE_FRAMES", 1000)
    table = native_table(path, chunk_packets=777)
    expected = tshark_rows(path)
    assert table.to_pylist() == expected


# ---------------------------------------------------------------------------------------
# Truncated files, declined files
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 10, 20])
def test_truncated_last_record(tmp_path: Path, cut: int) -> None:
    path = write_pcap(tmp_path / "t.pcap", [ether(p) for p in handshake()])
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    rows = []
    with pytest.raises(TruncatedCapture) as caught:
        for batch in read_packets(path, chunk_packets=2):
            rows += batch.column("frame_number").to_pylist()
    assert rows == [1, 2, 3, 4, 5, 6]
    assert caught.value.packets_read == 6
    packed = tmp_path / "t.pcap.gz"
    packed.write_bytes(gzip.compress(data)[:-12])  # a gzip stream cut short
    with pytest.raises(TruncatedCapture):
        list(read_packets(packed))


def test_damaged_record_and_empty_files(tmp_path: Path) -> None:
    frames = [ether(p) for p in handshake()]
    path = write_pcap(tmp_path / "d.pcap", frames)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 24 + 16 + len(frames[0]) + 8, 10**8)  # second record: 100 MB
    path.write_bytes(bytes(data))
    rows = []
    with pytest.raises(TruncatedCapture) as caught:
        for batch in read_packets(path):
            rows += batch.column("frame_number").to_pylist()
    assert rows == [1]
    assert caught.value.packets_read == 1
    assert native_table(write_pcap(tmp_path / "empty.pcap", [])).num_rows == 0
    empty = tmp_path / "empty.pcapng"
    empty.write_bytes(pcapng_section() + pcapng_interface(1))
    assert native_table(empty).num_rows == 0


def test_declined_files(tmp_path: Path) -> None:
    inner = ipv4("192.168.0.1", "192.168.0.2", tcp(1, 2, 3, 4, SYN))
    gre = ether(ipv4(A, B, struct.pack("!HH", 0, 0x0800) + inner, proto=47))
    ipip = ether(ipv4(A, B, inner, proto=4))
    vxlan_udp = struct.pack("!HHHH", 5555, 4789, 8 + 8 + 14 + len(inner), 0)
    vxlan = ether(ipv4(A, B, vxlan_udp + b"\x08\0\0\0\0\0\1\0" + ether(inner), proto=17))
    mpls = ether(struct.pack("!I", (16 << 12) | 0x100 | 64) + inner, ethertype=0x8847)
    pppoe = ether(struct.pack("!BBHHH", 0x11, 0, 1, len(inner) + 2, 0x0021) + inner, 0x8864)
    for name, frame in {"gre": gre, "ipip": ipip, "vxlan": vxlan, "mpls": mpls, "pppoe": pppoe}.items():
        path = write_pcap(tmp_path / f"{name}.pcap", [ether(handshake()[0]), frame])
        with pytest.raises(NativeUnsupported):
            list(read_packets(path))
    with pytest.raises(NativeUnsupported):
        list(read_packets(write_pcap(tmp_path / "fddi.pcap", [b"\0" * 40], link=10)))
    text = tmp_path / "notes.txt"
    text.write_text("not a capture\n")
    with pytest.raises(NativeUnsupported):
        list(read_packets(text))
    # Teredo (IPv6 in UDP on any port) is decoded by the tshark engine's heuristic
    inner6 = ipv6("2001::1", "2001::2", tcp(1, 2, 3, 4, SYN))
    teredo = struct.pack("!HHHH", 3797, 32900, 8 + 8 + len(inner6), 0) + bytes(8) + inner6
    with pytest.raises(NativeUnsupported, match="Teredo"):
        list(read_packets(write_pcap(tmp_path / "teredo.pcap", [ether(ipv4(A, B, teredo, proto=17))])))
    # other UDP is not searched, like tshark
    udp = struct.pack("!HHHH", 5555, 5556, 8 + len(inner), 0) + inner
    plain = write_pcap(tmp_path / "udp.pcap", [ether(ipv4(A, B, udp, proto=17))])
    assert native_table(plain).num_rows == 0


# ---------------------------------------------------------------------------------------
# The record walk itself
# ---------------------------------------------------------------------------------------


def test_chained_record_walk_equals_sequential(tmp_path: Path) -> None:
    """Windows of a few MB with packets of mixed sizes, some of which contain bytes that
    look like pcap record headers (bait for wrong guesses): the chained walk must find
    exactly the records a sequential reader finds."""
    rng = np.random.default_rng(1)
    frames = []
    for i in range(20000):
        size = int(rng.choice([60, 66, 1514, int(rng.integers(60, 1500))]))
        body = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        if i % 5 == 0 and size > 80:  # a fake record header inside the payload
            struct.pack_into("<IIII", body, 40, 1_700_000_000 + i, 5, 30, 30)
        frames.append(bytes(body))
    path = write_pcap(tmp_path / "walk.pcap", frames)
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)[pcap.HEADER :]
    header = pcap.parse_header(path.read_bytes()[:24])
    views = Views(np.ascontiguousarray(data))
    walk = chains.walk_records(pcap._layout(header, views), views.n, 0)
    expected = [0]
    for frame in frames[:-1]:
        expected.append(expected[-1] + 16 + len(frame))
    assert walk.offsets.tolist() == expected
    assert walk.end == views.n


def walk_layout(frames: Sequence[bytes], tmp_path: Path,
                bad_at: int | None = None) -> tuple[Views, chains.RecordLayout]:  # fmt: skip
    """The record layout of a pcap of `frames` (the record `bad_at`, if given, claims
    more bytes than Wireshark takes for a record)."""
    path = write_pcap(tmp_path / "walk.pcap", frames)
    data = bytearray(path.read_bytes()[pcap.HEADER :])
    if bad_at is not None:
        at = sum(16 + len(frame) for frame in frames[:bad_at])
        struct.pack_into("<II", data, at + 8, 300_000, 300_000)
    views = Views(np.frombuffer(bytes(data), dtype=np.uint8))
    return views, pcap._layout(pcap.parse_header(path.read_bytes()[:24]), views)


@pytest.mark.parametrize("case", ["big then tiny", "bad record", "cut mid-record"])
def test_chained_walk_matches_the_sequential_walk(tmp_path: Path, case: str) -> None:
    """Chains of very unequal lengths (large packets, whose average sets the chain span,
    then tiny ones), a damaged record in the middle, a window that ends inside a record:
    the chained walk finds what the one-record-at-a-time walk finds, and stops there too."""
    rng = np.random.default_rng(7)
    sizes = [1514] * 3000 + [54] * 60000 if case == "big then tiny" else list(rng.integers(54, 1514, 40000))
    frames = [rng.integers(0, 256, int(size), dtype=np.uint8).tobytes() for size in sizes]
    views, layout = walk_layout(frames, tmp_path, bad_at=25000 if case == "bad record" else None)
    n = views.n - 700 if case == "cut mid-record" else views.n
    walk = chains.walk_records(layout, n, 0)
    expected = chains._sequential(layout, n, 0, None)
    assert walk.offsets.tolist() == expected.offsets.tolist()
    assert (walk.end, walk.status) == (expected.end, expected.status)
    assert walk.status == ("bad" if case == "bad record" else "more")


def test_record_header_times_equal_the_general_formula() -> None:
    """The pcap record header's float64 shortcut for microsecond timestamps gives the same
    floats as `timestamps` (exact integer ticks, one division), for any 32-bit fields."""
    rng = np.random.default_rng(3)
    fields = np.dtype([("seconds", "<u4"), ("fraction", "<u4")])
    head = np.zeros(100_000, dtype=fields)
    head["seconds"] = rng.integers(0, 2**32, len(head), dtype=np.uint64)
    head["fraction"] = np.where(rng.random(len(head)) < 0.5, rng.integers(0, 10**6, len(head)),
                                rng.integers(0, 2**32, len(head), dtype=np.uint64))  # fmt: skip
    for per_second in (1_000_000, 1_000_000_000):
        fast = np.empty(len(head))
        pcap._RecordHeader(fields, per_second).timestamps(head, fast)
        expected = pcap.timestamps(head["seconds"], head["fraction"], per_second)
        assert fast.tobytes() == expected.tobytes()
