"""Malformed and unusual captures: right labels, or one clear line and a documented exit code.

Every capture is built in the test (tests/malformed/builders.py). Three outcomes are
allowed, and each case says which one it expects:

- unusual but valid (other byte orders and resolutions, other link types, unknown pcapng
  blocks, headers-only snaplen, fragments, sequence wrap, reuse, clock steps, duplicates):
  exit 0 and the labels the conversation was built with;
- damaged after a good start: exit 6 (TRUNCATED), one line saying so, and the labels of
  what was read before the damage;
- unusable: its exit code (3, 4 or 5), one line, and nothing written.

Never a traceback, never a temp file left behind. tests/test_bad_input.py holds the
first bad-input cases (text, empty, two-byte file, missing file, tshark failures); this
file adds to them.
"""

from __future__ import annotations

import gzip
import os
import random
import struct
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tcp_teardown.api import analyze_tables
from tcp_teardown.cli import app
from tcp_teardown.errors import ExitCode
from tcp_teardown.facts import Params
from tcp_teardown.ingest import read_packet_table
from tests.conftest import CLI, needs_tshark
from tests.malformed import builders as b
from tests.test_bad_input import no_leftovers

pytestmark = needs_tshark

runner = CliRunner()

FRAME_COLUMNS = ("syn_frame", "first_fin_frame", "second_fin_frame", "rst_frame", "final_ack_frame")
V6_CLIENT, V6_SERVER = ("fd00::1", 40001), ("fd00::2", 443)


@dataclass(frozen=True)
class Expect:
    """The labels of one connection, as the conversation was built."""

    open: str = "handshake"
    close: str = "fin_by_client"
    flags: frozenset[str] = frozenset()
    time_wait_side: str | None = "client"


TIME_WAIT = {"fin_by_client": "client", "fin_by_server": "server", "fin_simultaneous": "both"}


def expect(close: str, *flags: str) -> Expect:
    return Expect(close=close, flags=frozenset(flags), time_wait_side=TIME_WAIT.get(close))


def labels_of(conns: pd.DataFrame) -> list[Expect]:
    return [Expect(str(r.open), str(r.close), frozenset(r.flags),
                   None if pd.isna(r.time_wait_side) else str(r.time_wait_side))
            for r in conns.itertuples()]


def check_evidence(conns: pd.DataFrame) -> None:
    """Frame columns that every label can be checked by: present in key_frames, in order."""
    for row in conns.itertuples():
        keys = set(row.key_frames)
        for column in FRAME_COLUMNS:
            value = getattr(row, column)
            assert pd.isna(value) or int(value) in keys, (column, value, keys)
        if not pd.isna(row.first_fin_frame) and not pd.isna(row.second_fin_frame):
            assert row.first_fin_frame <= row.second_fin_frame
        assert row.duration_s >= 0


@dataclass(frozen=True)
class Outcome:
    code: int
    stderr: str
    out: Path


def analyze_cli(tmp_path: Path, *captures: Path, out: Path | None = None, engine: str = "auto") -> Outcome:
    """`tcp-teardown analyze` in-process; never an exception other than the exit."""
    out = out or tmp_path / "out"
    result = runner.invoke(app, ["analyze", *map(str, captures), "--out", str(out), "--engine", engine])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return Outcome(result.exit_code, result.stderr, out)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("tcp-teardown: ")
    return lines[0]


def conv(close: str = "fin_by_client", **kwargs: object) -> list[b.Seg]:
    return b.conversation(close, **kwargs)  # type: ignore[arg-type]


# --- unusual but valid -----------------------------------------------------------------------
def _fragmented() -> bytes:
    """Data segments and a FIN carrying data, each cut into 24-byte IPv4 fragments."""
    frames = []
    for seg in conv(data=[("c", 200), ("s", 100)], fin_data=50):
        pieces = b.fragments(seg, 24) if seg.payload else [b.ip_packet(seg)]
        frames += [(seg.ts, b.link_frame(piece)) for piece in pieces]
    return b.pcap_bytes(b.records(frames))


def _clock_steps() -> bytes:
    """Timestamps that go backwards (a clock step) inside the connection and at the FIN."""
    segs = conv()
    return b.pcap_of([replace(s, ts=s.ts - 5.0) if i in (3, 7) else s for i, s in enumerate(segs)])


def _captured_twice() -> bytes:
    """Every packet seen on two interfaces of one pcapng (a span port and a tap, say)."""
    recs = []
    for ts, frame in b.frames_of(conv()):
        recs += [b.Record(ts, frame, interface=0), b.Record(ts + 1e-6, frame, interface=1)]
    return b.pcapng_bytes(recs, (b.LINKTYPE_ETHERNET, b.LINKTYPE_ETHERNET))


def _two_link_types() -> bytes:
    """One pcapng, two interfaces of different link types, one connection on each."""
    first = b.records(b.frames_of(conv(), b.LINKTYPE_ETHERNET), interface=0)
    second = b.records(b.frames_of(conv("fin_by_server", client=("10.9.0.1", 50000), t0=1_700_000_000.005),
                                   b.LINKTYPE_RAW), interface=1)
    merged = sorted(first + second, key=lambda r: r.ts)
    return b.pcapng_bytes(merged, (b.LINKTYPE_ETHERNET, b.LINKTYPE_RAW))


WRAP = {"isn_c": 2**32 - 150, "isn_s": 2**32 - 2, "data": [("c", 100), ("s", 300), ("c", 200)]}
WRAP_AT_ISN = {"isn_c": 2**32 - 1, "isn_s": 2**32 - 1}

VALID: dict[str, tuple[bytes, list[Expect]]] = {
    "pcap-nanosecond": (b.pcap_of(conv(), nanosecond=True), [Expect()]),
    "pcap-big-endian": (b.pcap_of(conv(), big_endian=True), [Expect()]),
    "pcap-big-endian-nanosecond": (b.pcap_of(conv(), big_endian=True, nanosecond=True), [Expect()]),
    "pcapng-nanosecond": (b.pcapng_bytes(b.records(b.frames_of(conv())), nanosecond=True), [Expect()]),
    "pcapng-unknown-blocks": (b.pcapng_bytes(b.records(b.frames_of(conv())), extra={
        0: b.unknown_block(), 3: b.unknown_block(0x8000_0001, b"local use"), 6: b.custom_block(),
        -1: b.unknown_block()}), [Expect()]),
    "pcapng-two-link-types": (_two_link_types(), [Expect(), expect("fin_by_server")]),
    "raw-ip": (b.pcap_of(conv(), b.LINKTYPE_RAW), [Expect()]),
    "linux-sll": (b.pcap_of(conv(), b.LINKTYPE_LINUX_SLL), [Expect()]),
    "linux-sll2-ipv6": (b.pcap_of(conv(client=V6_CLIENT, server=V6_SERVER), b.LINKTYPE_LINUX_SLL2), [Expect()]),
    "bsd-null": (b.pcap_of(conv("fin_by_server"), b.LINKTYPE_NULL), [expect("fin_by_server")]),
    "bsd-null-ipv6": (b.pcap_of(conv(client=V6_CLIENT, server=V6_SERVER), b.LINKTYPE_NULL), [Expect()]),
    "snaplen-headers-only": (b.pcap_bytes(b.records(b.frames_of(
        conv("fin_by_server", data=[("c", 1000), ("s", 1400)])), snaplen=54), snaplen=54), [expect("fin_by_server")]),
    "ipv4-fragments": (_fragmented(), [Expect()]),
    "clock-steps-back": (_clock_steps(), [Expect()]),
    # Decided: a packet seen twice is what a retransmission looks like on the wire, so
    # open and close stay as they are and the retransmission flags say what was seen twice.
    "captured-twice": (_captured_twice(), [expect("fin_by_client", "syn_retransmitted", "syn_ack_retransmitted",
                                                  "fin_retransmitted")]),
    **{f"seq-wrap-{close}": (b.pcap_of(conv(close, **WRAP)), [expect(close)])  # type: ignore[arg-type]
       for close in ("fin_by_client", "fin_by_server", "fin_simultaneous", "rst_by_server", "half_closed")},
    "seq-wrap-three-way": (b.pcap_of(conv("three_way", **WRAP)),  # type: ignore[arg-type]
                           [expect("fin_by_client", "three_way_close")]),
    "seq-wrap-at-isn": (b.pcap_of(conv("fin_by_server", **WRAP_AT_ISN)), [expect("fin_by_server")]),  # type: ignore[arg-type]
    "seq-wrap-fin-on-wrap": (b.pcap_of(conv("fin_by_client", isn_c=2**32 - 102, data=[("c", 100)], fin_data=0)),
                             [Expect()]),  # the client's FIN has sequence number 2**32 - 1
}


ENGINES = ("auto", "tshark")  # auto: the native reader, tshark where it declines


@pytest.fixture(scope="module", params=ENGINES)
def valid_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    """All valid captures in one analysis per engine (no process start per file)."""
    folder = tmp_path_factory.mktemp("valid")
    paths = []
    for name, (data, _) in VALID.items():
        paths.append(folder / f"{name}.pcap")
        paths[-1].write_bytes(data)
    tables = analyze_tables(paths, Params(), engine=request.param)
    for report in tables.files:
        assert not report.truncated and not report.warnings, (report.path, report.warnings)
    conns = tables.connections.to_pandas()
    return {Path(file).stem: group.reset_index(drop=True) for file, group in conns.groupby("file")}


@pytest.mark.parametrize("name", list(VALID))
def test_unusual_but_valid_capture_gets_its_labels(valid_run: dict[str, pd.DataFrame], name: str) -> None:
    conns = valid_run.get(name, pd.DataFrame())
    assert labels_of(conns) == VALID[name][1]
    check_evidence(conns)


def test_timestamps_keep_their_resolution(valid_run: dict[str, pd.DataFrame]) -> None:
    for name in ("pcap-nanosecond", "pcap-big-endian-nanosecond", "pcapng-nanosecond", "pcap-big-endian"):
        assert valid_run[name]["first_ts"][0] == pytest.approx(1_700_000_000.0, abs=1e-6)
        assert valid_run[name]["duration_s"][0] == pytest.approx(0.1, abs=1e-6)


def test_headers_only_capture_counts_payload_from_the_ip_length(valid_run: dict[str, pd.DataFrame]) -> None:
    row = valid_run["snaplen-headers-only"].iloc[0]
    assert (row.bytes_c2s, row.bytes_s2c) == (1000, 1400)


def test_sequence_wrap_keeps_the_proving_frames(valid_run: dict[str, pd.DataFrame]) -> None:
    """FINs past 2**32: the same frames prove the close as without the wrap."""
    row = valid_run["seq-wrap-fin_by_client"].iloc[0]
    assert (row.first_fin_frame, row.second_fin_frame, row.final_ack_frame) == (10, 12, 13)
    row = valid_run["seq-wrap-fin_simultaneous"].iloc[0]
    assert (row.first_fin_frame, row.second_fin_frame, row.final_ack_frame) == (10, 11, 13)


def test_captured_twice_doubles_packets_not_connections(valid_run: dict[str, pd.DataFrame]) -> None:
    conns = valid_run["captured-twice"]
    assert len(conns) == 1
    assert conns["packets_c2s"][0] == 2 * 6 and conns["packets_s2c"][0] == 2 * 5


def test_four_tuple_reused_thousands_of_times(tmp_path: Path) -> None:
    """3,000 connections on one 4-tuple, back to back: each its own connection, fast."""
    count = 3000
    segs: list[b.Seg] = []
    for i in range(count):
        segs += conv(isn_c=(i * 7919 + 1) % 2**32, isn_s=(i * 104729 + 5) % 2**32,
                     t0=1_700_000_000.0 + i * 0.5, step=0.001, data=[("c", 10)])
    capture = tmp_path / "reuse.pcap"
    capture.write_bytes(b.pcap_of(segs))
    packets = read_packet_table(capture)
    from tcp_teardown.analysis import analyze_packets

    start = time.monotonic()
    conns = analyze_packets(packets, "reuse", Params()).connections.to_pandas()
    elapsed = time.monotonic() - start
    assert len(conns) == count and conns["flow_id"].nunique() == count
    assert set(conns["open"].astype(str)) == {"handshake"} and set(conns["close"].astype(str)) == {"fin_by_client"}
    reused = conns["flags"].map(lambda f: "port_reuse_time_wait" in f)
    assert not reused[0] and reused[1:].all()  # each reuse is 0.5 s after the last close
    assert elapsed < 10, f"labelling {count} reuses took {elapsed:.1f} s"


# --- damaged after a good start ----------------------------------------------------------------
def _with_bad_record(good: int, caplen: int) -> bytes:
    recs = b.records(b.frames_of(conv()))[:good]
    return b.pcap_bytes([*recs, b.Record(1_800_000_000.0, bytes(60), caplen=caplen)])


NG = b.pcapng_bytes(b.records(b.frames_of(conv())))
OPEN_ONLY = [Expect("handshake", "not_closed", time_wait_side=None)]  # cut before any FIN


def _pcapng_length_lie(length: int) -> bytes:
    """The pcapng of conv() with the sixth packet block's length field replaced."""
    offset, blocks = 0, []
    while offset < len(NG):
        blocks.append(offset)
        offset += struct.unpack_from("<I", NG, offset + 4)[0]
    at = blocks[2 + 5] + 4  # section header, interface, five packet blocks
    return NG[:at] + struct.pack("<I", length) + NG[at + 4:]


FULL = b.pcap_of(conv())
HEADER_AND_THREE = 24 + sum(16 + len(f) for _, f in b.frames_of(conv()[:3]))

DAMAGED: dict[str, tuple[bytes, str, list[Expect]]] = {
    "cut-in-last-packet": (FULL[:-30], "cut short", [expect("fin_by_client", "final_ack_missing")]),
    "cut-in-record-header": (FULL[:HEADER_AND_THREE + 9], "cut short", OPEN_ONLY),
    "absurd-caplen": (_with_bad_record(5, 0xFFFF_FFF0), "damaged", OPEN_ONLY),
    "garbage-after-header": (FULL[:24] + random.Random(7).randbytes(3000), "damaged", []),
    "pcapng-cut-in-block": (NG[:-40], "cut short", [expect("fin_by_client", "final_ack_missing")]),
    "pcapng-block-length-too-large": (_pcapng_length_lie(0x7FFF_FFF0), "damaged", OPEN_ONLY),
    "pcapng-block-length-too-small": (_pcapng_length_lie(12), "damaged", OPEN_ONLY),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", list(DAMAGED))
def test_damaged_capture_labels_what_was_read(tmp_path: Path, name: str, engine: str) -> None:
    data, words, expected = DAMAGED[name]
    capture = tmp_path / f"{name}.pcap"
    capture.write_bytes(data)
    outcome = analyze_cli(tmp_path, capture, engine=engine)
    line = one_line(outcome.stderr)
    assert outcome.code == ExitCode.TRUNCATED, line
    assert words in line or engine != "tshark"  # the native reader words it its own way
    conns = pd.read_parquet(outcome.out / "connections.parquet")
    assert labels_of(conns) == expected
    check_evidence(conns)
    no_leftovers(outcome.out)


# --- unusable ----------------------------------------------------------------------------------
UNUSABLE: dict[str, tuple[bytes, ExitCode, str]] = {
    "nul-bytes": (bytes(4096), ExitCode.NOT_A_CAPTURE, "not a capture"),
    "random-bytes": (b"\x00" + random.Random(1).randbytes(8191), ExitCode.NOT_A_CAPTURE, "not a capture"),
    "bad-magic": (b"\xd4\xc3\xb2\xa2" + FULL[4:], ExitCode.NOT_A_CAPTURE, "not a capture"),
    "pcap-cut-in-file-header": (FULL[:14], ExitCode.NOT_A_CAPTURE, "truncated in the file header"),
    "pcapng-cut-in-section-header": (NG[:20], ExitCode.NOT_A_CAPTURE, "truncated in the file header"),
    "pcapng-bad-section-length": (NG[:4] + b"\x05\x00\x00\x00" + NG[8:], ExitCode.NOT_A_CAPTURE, "section header"),
    "gzip-of-nothing": (gzip.compress(b""), ExitCode.EMPTY_CAPTURE, "empty"),
    "gzip-cut": (gzip.compress(FULL)[:12], ExitCode.NOT_A_CAPTURE, "gzip"),
    "gzip-of-pcap-header-cut": (gzip.compress(FULL[:10]), ExitCode.NOT_A_CAPTURE, "truncated in the file header"),
}


@pytest.mark.parametrize("name", list(UNUSABLE))
def test_unusable_file_writes_nothing(tmp_path: Path, name: str) -> None:
    data, code, words = UNUSABLE[name]
    capture = tmp_path / f"{name}.pcap"
    capture.write_bytes(data)
    outcome = analyze_cli(tmp_path, capture)
    assert outcome.code == code, outcome.stderr
    assert words in one_line(outcome.stderr)
    assert not (outcome.out / "connections.parquet").exists()
    no_leftovers(outcome.out)


def test_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A named pipe nobody writes to would block a plain open forever."""
    fifo = tmp_path / "live.pcap"
    os.mkfifo(fifo)
    result = subprocess.run([str(CLI), "analyze", str(fifo), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == ExitCode.INPUT_MISSING
    assert "not a regular file" in one_line(result.stderr)


def test_directory_among_captures_keeps_the_earlier_result(tmp_path: Path) -> None:
    good = tmp_path / "good.pcap"
    good.write_bytes(FULL)
    out = tmp_path / "out"
    assert analyze_cli(tmp_path, good, out=out).code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    folder = tmp_path / "looks-like-a.pcap"
    folder.mkdir()
    outcome = analyze_cli(tmp_path, good, folder, out=out)
    assert outcome.code == ExitCode.INPUT_MISSING
    assert "is a directory" in one_line(outcome.stderr)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --- file names --------------------------------------------------------------------------------
ODD_NAMES = ["-starts-with-dash.pcap", "-", "with space.pcap", "quote's \"double\".pcap", "ünïcødé-捕获.pcap",
             "semi;colon$(echo no)`x`.pcap"]


def test_odd_file_names_reach_tshark_untouched(tmp_path: Path) -> None:
    """Names are passed as argv items after `--`, never through a shell; '-' is a file."""
    names = [*ODD_NAMES, os.fsdecode(b"not-utf8-\xff.pcap")]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(b.pcap_of(conv(client=("10.1.0.1", 41000 + i))))
    out = tmp_path / "out dir"
    result = subprocess.run([str(CLI), "analyze", "--out", str(out), "--", *names], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    conns = pd.read_parquet(out / "connections.parquet")
    by_port = dict(zip(conns["client_port"], conns["file"], strict=True))
    assert [by_port[41000 + i] for i in range(len(names))] == [*ODD_NAMES, "not-utf8-\\xff.pcap"]
    assert set(conns["close"].astype(str)) == {"fin_by_client"}
    assert "## -starts-with-dash.pcap" in (out / "filters.txt").read_text()


def test_leading_dash_without_double_dash_is_one_usage_line(tmp_path: Path) -> None:
    result = subprocess.run([str(CLI), "analyze", "-x.pcap", "--out", str(tmp_path)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == ExitCode.USAGE
    assert "No such option" in one_line(result.stderr) and "--help" in result.stderr


def test_control_characters_in_a_name_stay_on_one_escaped_line(tmp_path: Path) -> None:
    name = "two\nlines\x1b[31m red\u202e.pcap"
    result = subprocess.run([str(CLI), "analyze", "--out", str(tmp_path / "o"), "--", name], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == ExitCode.INPUT_MISSING
    line = one_line(result.stderr)
    assert "\x1b" not in line and "\u202e" not in line
    assert "two\\nlines\\x1b[31m red\\u202e.pcap: no such file" in line
