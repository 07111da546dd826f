"""Annotated captures: same packets as the input, one comment on exactly each key frame.

The replay is checked against the real tshark (frame count, lengths, timestamps, a
per-frame MD5 of the bytes that tshark computes itself), for the seed corpus and for
small synthetic captures in the other formats the reader accepts.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tcp_teardown.annotate import (
    ALL_LABELS,
    FLOW_PREFIX,
    KEY_PREFIX,
    build_annotations,
    key_frame_comments,
    label_filter,
    parse_labels,
    tcp_endpoints,
)
from tcp_teardown.pcapng_writer import (
    CaptureFormatError,
    CaptureReader,
    Interface,
    Packet,
    PcapngWriter,
    read_records,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SEEDS = SHARED / "corpus" / "seeds"
CLI = Path(sys.executable).with_name("tcp-teardown")

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
needs_seeds = pytest.mark.skipif(not SEEDS.is_dir(), reason="shared seed corpus not present")


def seed_captures() -> list[Path]:
    return sorted(SEEDS.glob("*.pcap")) if SEEDS.is_dir() else []


def tshark_rows(capture: Path, *fields: str) -> list[list[str]]:
    cmd = ["tshark", "-n", "-r", str(capture), "-o", "frame.generate_md5_hash:TRUE", "-T", "fields"]
    for field in fields:
        cmd += ["-e", field]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t") for line in proc.stdout.splitlines()]


PACKET_FIELDS = ("frame.number", "frame.time_epoch", "frame.len", "frame.cap_len",
                 "frame.md5_hash", "frame.encap_type")  # fmt: skip


def assert_same_packets(original: Path, annotated: Path) -> dict[int, str]:
    """Same frames (bytes, lengths, timestamps, link type); returns frame -> comment."""
    before = tshark_rows(original, *PACKET_FIELDS)
    after = tshark_rows(annotated, *PACKET_FIELDS, "frame.comment")
    assert len(after) == len(before) > 0
    assert [row[: len(PACKET_FIELDS)] for row in after] == before
    return {int(row[0]): row[-1] for row in after if row[-1]}


# --- synthetic captures ----------------------------------------------------------------
def tcp_frame(
    src: str, dst: str, sport: int, dport: int, flags: int = 0x10, vlan: bool = False
) -> bytes:
    """Ethernet (optionally 802.1Q) / IPv4 / TCP, no payload; checksums left zero."""
    ip = bytes([0x45, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0])
    ip += bytes(map(int, src.split("."))) + bytes(map(int, dst.split(".")))
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 65535, 0, 0)
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    if vlan:
        eth += b"\x81\x00\x00\x07"
    return eth + b"\x08\x00" + ip + tcp


def raw_ipv6_tcp(sport: int, dport: int) -> bytes:
    src = bytes(15) + b"\x01"
    dst = bytes(15) + b"\x02"
    ip6 = struct.pack(">IHBB", 6 << 28, 20, 6, 64) + src + dst
    return ip6 + struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 65535, 0, 0)


def write_pcap(path: Path, frames: list[tuple[int, int, bytes]], order: str = "<",
               nanos: bool = False, linktype: int = 1) -> None:  # fmt: skip
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in frames:
        out += struct.pack(order + "IIII", sec, frac, len(data), len(data) + 4) + data
    path.write_bytes(out)


def _be_block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack(">II", block_type, total) + body + struct.pack(">I", total)


def _be_opt(code: int, value: bytes) -> bytes:
    return struct.pack(">HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def write_big_endian_pcapng(path: Path) -> None:
    """Two sections, big-endian; a nanosecond Ethernet interface and a raw-IP one, comments."""
    shb = _be_block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb_eth = _be_block(1, struct.pack(">HHI", 1, 0, 262144)
                        + _be_opt(2, b"eth0") + _be_opt(9, b"\x09") + _be_opt(0, b""))  # fmt: skip
    idb_raw = _be_block(1, struct.pack(">HHI", 101, 0, 0) + _be_opt(2, b"tun0") + _be_opt(0, b""))
    frame_a = tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, 0x02)
    ts_a = 1_700_000_000_123_456_789
    epb_a = _be_block(6, struct.pack(">IIIII", 0, ts_a >> 32, ts_a & 0xFFFFFFFF, len(frame_a),
                                     len(frame_a)) + frame_a + b"\0" * (-len(frame_a) % 4)
                      + _be_opt(1, b"an old note") + _be_opt(2, struct.pack(">I", 1))
                      + _be_opt(0, b""))  # fmt: skip
    frame_b = raw_ipv6_tcp(40001, 443)
    ts_b = 1_700_000_001_000_001
    pad_b = b"\0" * (-len(frame_b) % 4)
    epb_b = _be_block(6, struct.pack(">IIIII", 1, ts_b >> 32, ts_b & 0xFFFFFFFF, len(frame_b),
                                     len(frame_b)) + frame_b + pad_b)  # fmt: skip
    # A second section: interface ids restart at 0 there.
    epb_c = _be_block(6, struct.pack(">IIIII", 0, ts_b >> 32, (ts_b + 5) & 0xFFFFFFFF,
                                     len(frame_b), len(frame_b)) + frame_b)  # fmt: skip
    path.write_bytes(shb + idb_eth + idb_raw + epb_a + epb_b + shb + idb_raw + epb_c)


def replay_plain(src: Path, dst: Path, comments: dict[int, list[str]] | None = None) -> int:
    from tcp_teardown.pcapng_writer import replay

    comments = comments or {}
    with CaptureReader(src) as reader, dst.open("wb") as fh:
        return replay(reader, PcapngWriter(fh), lambda p: comments.get(p.frame_number, []))


@needs_tshark
@pytest.mark.parametrize(
    "kind", ["pcap-le-us", "pcap-be-us", "pcap-ns", "pcap-gzip", "pcapng-be-two-sections"]
)
def test_replay_keeps_every_packet_exactly(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "in.cap"
    frames = [
        (1_700_000_000, 1, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, 0x02)),
        (1_700_000_000, 999_999, tcp_frame("10.0.0.2", "10.0.0.1", 80, 40000, 0x12, vlan=True)),
        (1_700_000_001, 0, tcp_frame("10.0.0.1", "10.0.0.2", 40000, 80, 0x10)),
    ]
    if kind == "pcap-le-us":
        write_pcap(src, frames)
    elif kind == "pcap-be-us":
        write_pcap(src, frames, order=">")
    elif kind == "pcap-ns":
        write_pcap(src, [(s, f * 1000 + 7, d) for s, f, d in frames], nanos=True)
    elif kind == "pcap-gzip":
        write_pcap(tmp_path / "plain.pcap", frames)
        src.write_bytes(gzip.compress((tmp_path / "plain.pcap").read_bytes()))
    else:
        write_big_endian_pcapng(src)
    out = tmp_path / "out.pcapng"
    count = replay_plain(src, out, {2: ["tcp-teardown: x (y)"]})
    comments = assert_same_packets(src, out)
    assert count == len(tshark_rows(src, "frame.number"))
    if kind == "pcapng-be-two-sections":
        # The old comment is kept, ours is added; interface names survive the renumbering.
        assert comments == {1: "an old note", 2: "tcp-teardown: x (y)"}
        names = [r[0] for r in tshark_rows(out, "frame.interface_name")]
        assert names == ["eth0", "tun0", "tun0"]
    else:
        assert comments == {2: "tcp-teardown: x (y)"}


def test_reader_counts_frames_and_reports_damage(tmp_path: Path) -> None:
    src = tmp_path / "cut.pcap"
    frame = tcp_frame("10.0.0.1", "10.0.0.2", 1, 2)
    write_pcap(src, [(1, 0, frame), (2, 0, frame)])
    src.write_bytes(src.read_bytes()[:-5])  # the second record is cut short
    records = []
    with pytest.raises(CaptureFormatError, match="frame 2"):
        for record in read_records(src):
            records.append(record)
    assert [(r[0], r[1], r[2], r[3]) for r in records] == [(1, 1.0, len(frame), len(frame) + 4)]
    (tmp_path / "text.pcap").write_text("hello, not a capture")
    with pytest.raises(CaptureFormatError):
        list(read_records(tmp_path / "text.pcap"))


def test_writer_output_reads_back_through_our_reader(tmp_path: Path) -> None:
    path = tmp_path / "w.pcapng"
    with path.open("wb") as fh:
        writer = PcapngWriter(fh, userappl="test")
        iface = Interface(linktype=101, snaplen=0, options=((9, b"\x09"),))
        writer.add_interface(iface)
        data = raw_ipv6_tcp(1, 2)
        pkt = Packet(1, 0, 101, 0.0, 1_500_000_000_000_000_123, len(data), len(data), data)
        writer.write_packet(0, pkt, ["one", "two"])
    events = list(CaptureReader(path))
    assert isinstance(events[0], Interface) and events[0].tsresol == 9
    got = events[1]
    assert isinstance(got, Packet)
    assert got.ts_ticks == 1_500_000_000_000_000_123 and got.data == data
    assert [v for c, v in got.options if c == 1] == [b"one", b"two"]


# --- comments ----------------------------------------------------------------------------
def frames_df(rows: list[tuple[int, list[str], list[str]]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "file": ["x.pcap"] * len(rows),
            "frame_number": [r[0] for r in rows],
            "flow_id": ["00000000000000aa"] * len(rows),
            "tcp_stream": [0] * len(rows),
            "roles": [r[1] for r in rows],
            "labels": [r[2] for r in rows],
        }
    )


def test_comment_text_one_piece_per_label() -> None:
    df = frames_df([
        (1, ["SYN"], ["handshake"]),
        (9, ["second FIN", "FIN+ACK"], ["fin_by_client", "three_way_close"]),
        (12, ["key"], []),
    ])  # fmt: skip
    comments = key_frame_comments(df)
    assert comments[1] == "tcp-teardown: handshake (SYN)"
    assert comments[9] == (
        "tcp-teardown: fin_by_client (second FIN, FIN+ACK); "
        "tcp-teardown: three_way_close (second FIN, FIN+ACK)"
    )
    assert comments[12] == "tcp-teardown: key frame (key)"
    only = key_frame_comments(df, parse_labels("three_way_close"))
    assert only == {9: "tcp-teardown: three_way_close (second FIN, FIN+ACK)"}


def test_label_filter_does_not_match_a_longer_label() -> None:
    # "refused" is a prefix of "refused_after_handshake": the " (" keeps them apart.
    assert label_filter("refused") == 'frame.comment contains "tcp-teardown: refused ("'
    assert "tcp-teardown: refused (" not in "tcp-teardown: refused_after_handshake (FIN)"
    for a in ALL_LABELS:
        for b in ALL_LABELS:
            if a != b:
                assert f"{KEY_PREFIX}{a} (" not in f"{KEY_PREFIX}{b} (x)"


def test_parse_labels() -> None:
    assert parse_labels(None) is None
    assert parse_labels("") is None
    assert parse_labels(" fin_by_client, idle_close ") == {"fin_by_client", "idle_close"}
    with pytest.raises(ValueError, match="bogus"):
        parse_labels("fin_by_client,bogus")


def test_tcp_endpoints_of_common_link_types() -> None:
    eth = tcp_frame("192.0.2.1", "192.0.2.2", 1234, 80, vlan=True)
    assert tcp_endpoints(1, eth) == ((bytes([192, 0, 2, 1]), 1234), (bytes([192, 0, 2, 2]), 80))
    v6 = raw_ipv6_tcp(5555, 443)
    assert tcp_endpoints(101, v6) == ((bytes(15) + b"\x01", 5555), (bytes(15) + b"\x02", 443))
    sll = b"\x00\x00\x00\x01\x00\x06" + bytes(8) + b"\x08\x00" + eth[18:]
    assert tcp_endpoints(113, sll) == tcp_endpoints(1, eth)
    assert tcp_endpoints(1, eth[:20]) is None  # cut short: no 4-tuple, no crash
    assert tcp_endpoints(147, eth) is None  # a link type we do not parse


# --- against the real analysis --------------------------------------------------------------
def analysis(capture: Path) -> Any:
    """The shared analysis of one capture (api.Result)."""
    from tcp_teardown import api

    return api.analyze([capture])


@needs_tshark
@needs_seeds
@pytest.mark.slow
@pytest.mark.parametrize("capture", seed_captures(), ids=lambda p: p.stem)
def test_annotate_command_comments_exactly_the_key_frames(tmp_path: Path, capture: Path) -> None:
    out = tmp_path / "annotated.pcapng"
    proc = subprocess.run([str(CLI), "annotate", str(capture), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    comments = assert_same_packets(capture, out)
    result = analysis(capture)
    expected = build_annotations(result.frames).key
    assert set(comments) == set(result.frames["frame_number"].astype(int))
    assert comments == expected
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary name is gone


@needs_tshark
@needs_seeds
def test_annotate_twice_replaces_instead_of_doubling(tmp_path: Path) -> None:
    from tcp_teardown.annotate import annotate_file

    capture = SEEDS / "seed004_time_wait_port_reuse.pcap"
    once, twice = tmp_path / "once.pcapng", tmp_path / "twice.pcapng"
    annotate_file(capture, once)
    annotate_file(once, twice)
    assert assert_same_packets(capture, twice) == assert_same_packets(capture, once)


@needs_tshark
@needs_seeds
def test_all_frames_comments_every_frame_of_selected_connections(tmp_path: Path) -> None:
    from tcp_teardown.annotate import annotate_file

    capture = SEEDS / "seed004_time_wait_port_reuse.pcap"
    result = analysis(capture)
    out = tmp_path / "all.pcapng"
    annotate_file(capture, out, labels=parse_labels("time_wait_challenge"), all_frames=True)
    comments = assert_same_packets(capture, out)
    conns = result.connections
    chosen = conns[conns["flags"].map(lambda f: "time_wait_challenge" in list(f))]
    assert len(chosen) == 1
    row = chosen.iloc[0]
    streams = {int(r[0]): int(r[1]) for r in tshark_rows(capture, "frame.number", "tcp.stream")}
    first, last, stream = int(row["first_frame"]), int(row["last_frame"]), int(row["tcp_stream"])
    members = {n for n, s in streams.items() if s == stream and first <= n <= last}
    flow = f"{FLOW_PREFIX}{row['flow_id']}: "
    assert {n for n, c in comments.items() if flow in c} == members
    # Key-frame pieces only for the selected label.
    keyed = [c for c in comments.values() if KEY_PREFIX in c]
    assert keyed and all("tcp-teardown: time_wait_challenge (" in c for c in keyed)


@needs_seeds
def test_annotate_failure_leaves_out_untouched(tmp_path: Path) -> None:
    out = tmp_path / "keep.pcapng"
    out.write_bytes(b"previous")
    bad = tmp_path / "bad.pcap"
    bad.write_text("not a capture")
    proc = subprocess.run([str(CLI), "annotate", str(bad), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 4, proc.stderr  # ExitCode.NOT_A_CAPTURE
    assert len(proc.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"previous"
    assert not list(tmp_path.glob(".*.tmp"))


@needs_tshark
@needs_seeds
def test_annotate_and_wireshark_commands_through_clirunner(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from tcp_teardown.commands.wireshark_cmds import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    out = tmp_path / "a.pcapng"
    capture = SEEDS / "seed003_rst_closed_port.pcap"
    result = runner.invoke(app, ["annotate", str(capture), "--out", str(out)])
    assert result.exit_code == 0, result.output
    comments = assert_same_packets(capture, out)
    assert comments == build_annotations(analysis(capture).frames).key
    assert comments[1] == "tcp-teardown: refused (SYN)"
    result = runner.invoke(app, ["annotate", str(capture), "--out", str(out), "--labels", "x"])
    assert result.exit_code == 2 and "unknown label" in result.output
    result = runner.invoke(app, ["wireshark", "--help"])
    assert result.exit_code == 0 and "install" in result.output


@needs_tshark
@needs_seeds
def test_annotate_a_cut_capture_writes_the_frames_before_the_cut(tmp_path: Path) -> None:
    whole = SEEDS / "seed_all_in_one.pcap"
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole.read_bytes()[:1500])  # ends inside frame 14
    out = tmp_path / "cut.pcapng"
    proc = subprocess.run([str(CLI), "annotate", str(cut), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 6, proc.stderr  # ExitCode.TRUNCATED
    assert len(proc.stderr.strip().splitlines()) == 1 and "frame 14" in proc.stderr
    assert len(tshark_rows(out, "frame.number")) == 13
