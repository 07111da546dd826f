"""The input digest: the same bytes' SHA-256 whether hashed on a thread or when asked for."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tcp_teardown import digest
from tcp_teardown.digest import BackgroundDigest, file_digest
from tcp_teardown.errors import ExitCode, TeardownError

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "teardowns.pcap"


def _expected(path: Path) -> tuple[int, str]:
    data = path.read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


@pytest.fixture
def several_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(digest, "CHUNK_BYTES", 4096)
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 100 + b"tail")  # 6 chunks and a partial one
    return path


@pytest.mark.parametrize("cpus", [1, 2])
def test_digest_of_every_byte(several_chunks: Path, monkeypatch: pytest.MonkeyPatch, cpus: int) -> None:
    monkeypatch.setattr(digest, "usable_cpus", lambda: cpus)
    with BackgroundDigest(several_chunks) as running:
        assert (running._thread is not None) == (cpus > 1)
        assert running.result() == _expected(several_chunks)
    assert file_digest(several_chunks) == _expected(several_chunks)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097])
def test_digest_around_the_buffer_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """The buffer is sized to the file (at most CHUNK_BYTES): empty, smaller, equal, larger."""
    monkeypatch.setattr(digest, "CHUNK_BYTES", 4096)
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(i % 251 for i in range(size)))
    assert file_digest(path) == _expected(path)


@pytest.mark.parametrize("cpus", [1, 2])
def test_unreadable_input_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int) -> None:
    monkeypatch.setattr(digest, "usable_cpus", lambda: cpus)
    with BackgroundDigest(tmp_path / "gone.pcap") as running, pytest.raises(TeardownError) as caught:
        running.result()
    assert caught.value.code == ExitCode.INPUT_MISSING
    assert "gone.pcap" in str(caught.value)


def test_an_abandoned_digest_stops(several_chunks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error in the analysis leaves the block: the thread is stopped and joined, not left hashing."""
    monkeypatch.setattr(digest, "usable_cpus", lambda: 2)
    running = BackgroundDigest(several_chunks)
    chunks_hashed = []
    original = digest.hashlib.sha256

    class UntilStopped:
        """Hashes one chunk, then waits until the digest is told to stop."""

        def __init__(self) -> None:
            self._inner = original()

        def update(self, data: memoryview) -> None:
            chunks_hashed.append(len(data))
            assert running._stop.wait(5)
            self._inner.update(data)

        def hexdigest(self) -> str:
            return self._inner.hexdigest()

    monkeypatch.setattr(digest.hashlib, "sha256", UntilStopped)
    with pytest.raises(RuntimeError), running:
        raise RuntimeError("analysis failed")
    assert running._thread is not None and not running._thread.is_alive()
    # Stopped at the chunk it was hashing, if it had begun one (7 if it ran to the end).
    assert chunks_hashed in ([], [4096])


def test_summary_names_the_digest_of_the_capture(tmp_path: Path) -> None:
    """The CLI on two CPUs and on one (taskset when there is one) writes the same, true digest."""
    size, sha = _expected(SAMPLE)
    runs = [[]]
    if sys.platform.startswith("linux") and len(digest.os.sched_getaffinity(0)) > 1:
        runs.append(["taskset", "-c", str(min(digest.os.sched_getaffinity(0)))])
    for index, prefix in enumerate(runs):
        out = tmp_path / f"out{index}"
        cli = [sys.executable, "-m", "tcp_teardown", "analyze", str(SAMPLE), "--out", str(out)]
        subprocess.run(prefix + cli, check=True, capture_output=True)
        summary = json.loads((out / "summary.json").read_text())
        assert (summary["inputs"][0]["size"], summary["inputs"][0]["sha256"]) == (size, sha)
