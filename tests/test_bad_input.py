"""Bad input: one clear line on stderr, its own exit code, nothing half-written, nothing lost."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest

from tcp_teardown.errors import ExitCode
from tests.conftest import SAMPLE, needs_tshark, run_cli

pytestmark = needs_tshark


def pcap(records: list[bytes], linktype: int = 1) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for i, data in enumerate(records):
        out += struct.pack("<IIII", 1_700_000_000 + i, 0, len(data), len(data)) + data
    return out


def udp_frame() -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
    return eth + ip + struct.pack("!HHHH", 5353, 53, 8, 0)


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tcp-teardown: ")
    return lines[0]


def no_leftovers(out: Path) -> None:
    if out.exists():
        assert not [p for p in out.iterdir() if p.name.startswith(".")], list(out.iterdir())


@pytest.mark.parametrize(
    ("name", "content", "code", "words"),
    [
        ("text.pcap", b"hello, this is not a capture\n", ExitCode.NOT_A_CAPTURE, "not a capture"),
        ("empty.pcap", b"", ExitCode.EMPTY_CAPTURE, "empty"),
        ("short-header.pcap", b"\xd4\xc3", ExitCode.NOT_A_CAPTURE, "truncated in the file header"),
        ("random.bin", bytes(range(256)) * 8, ExitCode.NOT_A_CAPTURE, "not a capture"),
    ],
)
def test_unusable_file(tmp_path: Path, name: str, content: bytes, code: ExitCode, words: str) -> None:
    bad = tmp_path / name
    bad.write_bytes(content)
    out = tmp_path / "out"
    result = run_cli("analyze", bad, "--out", out)
    assert result.returncode == code
    assert words in one_line_error(result)
    assert not (out / "connections.parquet").exists()
    no_leftovers(out)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    result = run_cli("analyze", tmp_path / "nope.pcap", "--out", tmp_path / "out")
    assert result.returncode == ExitCode.INPUT_MISSING
    assert "no such file" in one_line_error(result)
    result = run_cli("analyze", tmp_path, "--out", tmp_path / "out")
    assert result.returncode == ExitCode.INPUT_MISSING
    assert "directory" in one_line_error(result)


def test_truncated_capture_labels_what_was_read(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])
    out = tmp_path / "out"
    result = run_cli("analyze", cut, "--out", out)
    assert result.returncode == ExitCode.TRUNCATED, result.stderr
    assert "cut short" in result.stderr and "Traceback" not in result.stderr
    conns = pd.read_parquet(out / "connections.parquet")
    assert 3 <= len(conns) < 28
    no_leftovers(out)


def test_capture_without_tcp_gives_empty_tables(tmp_path: Path) -> None:
    capture = tmp_path / "udp.pcap"
    capture.write_bytes(pcap([udp_frame(), udp_frame()]))
    out = tmp_path / "out"
    result = run_cli("analyze", capture, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "no TCP" in one_line_error(result)
    for table in ("connections", "frames", "endpoints"):
        assert len(pd.read_parquet(out / f"{table}.parquet")) == 0


def test_unwritable_output_keeps_earlier_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("analyze", SAMPLE, "--out", out).returncode == 0
    before = (out / "connections.parquet").read_bytes()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("analyze", SAMPLE, "--out", blocker / "sub")
    assert result.returncode == ExitCode.OUTPUT_UNWRITABLE
    assert "not writable" in one_line_error(result)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"garbage garbage garbage")
    assert run_cli("analyze", bad, "--out", out).returncode == ExitCode.NOT_A_CAPTURE
    assert (out / "connections.parquet").read_bytes() == before
    no_leftovers(out)


def _fake_tshark(tmp_path: Path, body: str) -> Path:
    fake = tmp_path / "tshark"
    fake.write_text("#!/bin/sh\n" + body)
    fake.chmod(0o755)
    return fake


def test_tshark_missing_lists_where_it_looked(tmp_path: Path) -> None:
    result = run_cli("analyze", SAMPLE, "--out", tmp_path / "o", "--tshark", tmp_path / "none")
    assert result.returncode == ExitCode.TSHARK_MISSING
    line = one_line_error(result)
    assert "tshark not found" in line and "--tshark option" in line
    env = {**os.environ, "TCP_TEARDOWN_TSHARK": str(tmp_path / "none")}
    result = run_cli("analyze", SAMPLE, "--out", tmp_path / "o", env=env)
    assert result.returncode == ExitCode.TSHARK_MISSING


def test_tshark_too_old(tmp_path: Path) -> None:
    fake = _fake_tshark(tmp_path, 'echo "TShark (Wireshark) 3.6.2 (Git v3.6.2)"\n')
    result = run_cli("analyze", SAMPLE, "--out", tmp_path / "o", "--tshark", fake)
    assert result.returncode == ExitCode.TSHARK_TOO_OLD
    assert "too old" in one_line_error(result) and "4.0" in result.stderr


def test_tshark_killed_mid_file(tmp_path: Path) -> None:
    real = shutil.which("tshark")
    fake = _fake_tshark(tmp_path, f'''case "$1" in --version|-G) exec {real} "$@";; esac
{real} "$@" | head -c 700
kill -9 $$
''')
    out = tmp_path / "o"
    result = run_cli("analyze", SAMPLE, "--out", out, "--tshark", fake, "--engine", "tshark")
    assert result.returncode == ExitCode.TSHARK_FAILED, result.stderr
    assert "killed" in one_line_error(result)
    assert not (out / "connections.parquet").exists()
    no_leftovers(out)
