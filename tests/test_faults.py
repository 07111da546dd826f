"""Faults around a run: tshark dying, the disk filling up, Ctrl-C and SIGTERM, kill -9.

The contract (README, "Exit codes"): one line on stderr and a documented exit code,
outputs replaced whole or not at all (an earlier result survives a failed run), no
temp file left behind, no child process left running, and a batch that was stopped in
any way resumes to a complete dataset whose every Parquet file reads back.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tcp_teardown import output
from tcp_teardown.cli import app
from tcp_teardown.errors import ExitCode
from tests.conftest import CLI, needs_tshark
from tests.malformed import builders as b

pytestmark = needs_tshark
runner = CliRunner()
REAL_TSHARK = shutil.which("tshark") or "tshark"


def capture(folder: Path, name: str = "c.pcap", connections: int = 3) -> Path:
    """A small capture of `connections` orderly connections (each its own 4-tuple)."""
    segs = [s for i in range(connections)
            for s in b.conversation(client=("10.1.0.1", 40000 + i), t0=1_700_000_000.0 + i)]
    path = folder / name
    path.write_bytes(b.pcap_of(segs))
    return path


def fake_tshark(folder: Path, body: str) -> Path:
    """A tshark stand-in: reports 4.0, answers -G with nothing, then runs `body` (sh) for a read.

    `$REAL` is the real tshark; the stand-in writes its pid to `tshark.pid` first.
    """
    fake = folder / "tshark"
    fake.write_text(f'''#!/bin/sh
case "$1" in
  --version) echo "TShark (Wireshark) 4.0.99 (stand-in)"; exit 0;;
  -G) exit 0;;
esac
echo $$ > "{folder}/tshark.pid"
REAL="{REAL_TSHARK}"
{body}
''')
    fake.chmod(0o755)
    return fake


def default_sigint() -> None:
    """In the child: Ctrl-C as a terminal delivers it (a test run in the background would
    otherwise pass SIGINT on ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def files_in(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}


def hidden(out: Path) -> list[str]:
    return [p.name for p in out.rglob(".*")] if out.exists() else []


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


def gone(pid_file: Path) -> bool:
    """The process whose pid the stand-in wrote has ended (reaped or never a zombie for long)."""
    if not pid_file.exists():
        return True
    pid = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


# --- tshark dies ------------------------------------------------------------------------------
TSHARK_DEATHS = {
    "sigterm-mid-file": ('"$REAL" "$@" | head -c 900\nkill -TERM $$', ExitCode.TSHARK_FAILED, "killed by signal 15"),
    "segfault-mid-file": ('"$REAL" "$@" | head -c 900\nkill -SEGV $$', ExitCode.TSHARK_FAILED, "killed by signal 11"),
    "fails-with-a-message": ('"$REAL" "$@" | head -c 900\necho "tshark: out of memory" >&2\nexit 2',
                             ExitCode.TSHARK_FAILED, "out of memory"),
    "prints-no-ek": ('echo "Capture: 3 packets, all fine"', ExitCode.TSHARK_FAILED, "output unreadable"),
    "prints-bare-null": ("printf 'null\\nnull\\n'", ExitCode.OK, "no TCP"),  # once crashed the JSON reader
}


@pytest.mark.parametrize("name", list(TSHARK_DEATHS))
def test_tshark_dying_is_one_line_and_writes_nothing(tmp_path: Path, name: str) -> None:
    body, code, words = TSHARK_DEATHS[name]
    fake = fake_tshark(tmp_path, body)
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(capture(tmp_path)), "--out", str(out), "--engine", "tshark",
                                 "--tshark", str(fake)])
    assert result.exit_code == code, result.stderr
    assert words in one_line(result.stderr)
    if code != ExitCode.OK:
        assert not (out / "connections.parquet").exists()
    assert not hidden(out)
    assert gone(tmp_path / "tshark.pid")


# --- the disk fills up ------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 200 KiB tmpfs (root only; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as fh:
        try:
            while fh.write(b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_disk_full_keeps_earlier_results_and_no_temp_files(tmp_path: Path, small_disk: Path) -> None:
    out = small_disk / "out"
    assert runner.invoke(app, ["analyze", str(capture(tmp_path)), "--out", str(out)]).exit_code == 0
    before = files_in(out)
    fill(small_disk)
    bigger = capture(tmp_path, "bigger.pcap", connections=40)
    result = runner.invoke(app, ["analyze", str(bigger), "--out", str(out)])
    assert result.exit_code == ExitCode.OUTPUT_UNWRITABLE, result.stderr
    assert "No space left" in one_line(result.stderr) or "space" in result.stderr
    assert files_in(out) == before
    assert not hidden(out)
    # A new folder on the full disk: created (folders cost no data blocks), then nothing in it.
    result = runner.invoke(app, ["analyze", str(bigger), "--out", str(small_disk / "new")])
    assert result.exit_code == ExitCode.OUTPUT_UNWRITABLE
    assert not (small_disk / "new" / "connections.parquet").exists() and not hidden(small_disk / "new")


@pytest.mark.parametrize("where", ["parquet", "text"])
@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_write_fault_at_any_file_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       where: str, fault: BaseException) -> None:
    """The disk fills or Ctrl-C lands while the second file of its kind is being written."""
    out = tmp_path / "out"
    source = capture(tmp_path)
    assert runner.invoke(app, ["analyze", str(source), "--out", str(out)]).exit_code == 0
    before = files_in(out)
    calls = {"n": 0}
    real_parquet, real_text = output.pq.write_table, Path.write_text

    def faulty(real):  # type: ignore[no-untyped-def]
        def write(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 2:
                target = args[1] if real is real_parquet else args[0]
                Path(target).write_bytes(b"half")  # as a full disk leaves it
                raise fault
            return real(*args, **kwargs)
        return write

    if where == "parquet":
        monkeypatch.setattr(output.pq, "write_table", faulty(real_parquet))
    else:
        monkeypatch.setattr(Path, "write_text", faulty(real_text))
    result = runner.invoke(app, ["analyze", str(source), "--out", str(out)])
    expected = ExitCode.OUTPUT_UNWRITABLE if isinstance(fault, OSError) else ExitCode.INTERRUPTED
    assert result.exit_code == expected or isinstance(result.exception, KeyboardInterrupt)
    assert files_in(out) == before
    assert not hidden(out)


# --- Ctrl-C and SIGTERM -----------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_tshark_is_quiet_stops_at_once(tmp_path: Path, sig: signal.Signals) -> None:
    """tshark has printed a little and then nothing: the run still stops within a second."""
    fake = fake_tshark(tmp_path, '"$REAL" "$@" | head -c 900\nexec sleep 120')
    out = tmp_path / "out"
    source = capture(tmp_path)
    assert runner.invoke(app, ["analyze", str(source), "--out", str(out)]).exit_code == 0
    before = files_in(out)
    proc = subprocess.Popen([str(CLI), "analyze", str(source), "--out", str(out), "--engine", "tshark",
                             "--tshark", str(fake)], stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    pid_file = tmp_path / "tshark.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # tshark's first bytes are read; it now says nothing
    sent = time.monotonic()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5, "the interrupt waited for tshark"
    assert proc.returncode == ExitCode.INTERRUPTED
    assert one_line(stderr) == "tcp-teardown: interrupted"
    assert files_in(out) == before and not hidden(out)
    assert gone(pid_file), "tshark was left running"


def test_signal_at_any_moment_gives_old_or_new_results_whole(tmp_path: Path) -> None:
    """Interrupted somewhere in reading, labelling or writing: never a mix, never a temp file."""
    out = tmp_path / "out"
    assert runner.invoke(app, ["analyze", str(capture(tmp_path, "first.pcap", 2)), "--out", str(out)]).exit_code == 0
    before = files_in(out)
    big = capture(tmp_path, "big.pcap", connections=3000)
    for sig, delay in ((signal.SIGINT, 0.7), (signal.SIGTERM, 1.5), (signal.SIGINT, 2.3)):
        proc = subprocess.Popen([str(CLI), "analyze", str(big), "--out", str(out)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
        time.sleep(delay)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode in (0, ExitCode.INTERRUPTED), stderr
        assert "Traceback" not in stderr and not hidden(out)
        now = files_in(out)
        if proc.returncode == ExitCode.INTERRUPTED and now == before:
            continue
        assert set(now) == set(before)  # a complete new set: every table reads, all from the same run
        assert pq.read_table(out / "connections.parquet").num_rows == 3000
        before = now


# --- batch: stopped any way, resumed, nothing lost or doubled ---------------------------------
def test_batch_stopped_by_signals_resumes_to_a_complete_dataset(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    expected = {}
    for i in range(16):
        path = capture(archive, f"c{i:02d}.pcap", connections=1 + i % 5)
        expected[str(path)] = 1 + i % 5
    dataset = tmp_path / "dataset"
    command = [str(CLI), "batch", str(archive), "--out", str(dataset), "--quiet", "--jobs", "2"]
    for sig, delay in ((signal.SIGINT, 2.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, preexec_fn=default_sigint)
        time.sleep(delay)
        running = proc.poll() is None
        if running:
            os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        assert "Traceback" not in stderr, stderr
        if running and sig != signal.SIGKILL:
            assert proc.returncode == ExitCode.INTERRUPTED, (sig, proc.returncode, stderr)
            assert len(stderr.strip().splitlines()) <= 1, stderr
        else:
            assert proc.returncode in (0, -signal.SIGKILL), (sig, proc.returncode, stderr)
    final = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert final.returncode == 0, final.stderr
    check_dataset(dataset, expected)
    again = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0 and '"done": 0' in again.stdout  # nothing left to do


def check_dataset(dataset: Path, expected: dict[str, int]) -> None:
    """Every Parquet file reads; each capture's rows are there exactly once; no temp files."""
    for path in dataset.rglob("*.parquet"):
        pq.read_table(path)
    assert not [p for p in dataset.rglob("*.tmp")]
    conns = pq.read_table(dataset / "connections").to_pandas()
    counts = conns.groupby("file").size().to_dict()
    assert counts == expected
    assert not conns.duplicated(["file", "flow_id"]).any()
    manifest = pq.read_table(dataset / "manifest.parquet").to_pandas()
    assert set(manifest["status"]) == {"done"} and len(manifest) == len(expected)
