"""What a run of `analyze`, and the tasks of `batch`, load: never pandas (pyarrow imports it, ~0.2 s, when it
converts NumPy arrays or Python values itself), and tshark only when a file needs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE

# The start of a fresh interpreter that notes every attempt to import pandas (pyarrow
# swallows an ImportError there, so refusing the import would hide it).
WATCH = """
import sys

attempts = []


class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            attempts.append(name)
        return None


sys.meta_path.insert(0, Watch())
"""

# ... that then runs the CLI.
SCRIPT = WATCH + """
from tcp_teardown import cli

leave = cli._exit  # the CLI ends with os._exit: report just before it


def report_then_exit(code):
    print("pandas imported" if attempts else "pandas not imported", file=sys.stderr)
    leave(code)


cli._exit = report_then_exit
sys.argv = ["tcp-teardown", *sys.argv[1:]]
cli.main()
"""


def _analyze(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, "analyze", str(SAMPLE), "--out", str(tmp_path / "o"), *args],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("engine", ["auto", "native", "tshark"])
def test_analyze_never_imports_pandas(tmp_path: Path, engine: str) -> None:
    done = _analyze(tmp_path, "--engine", engine)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "pandas not imported"
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["connections"] > 0


def test_auto_looks_for_tshark_only_when_a_file_falls_back(tmp_path: Path) -> None:
    """No tshark on PATH: `auto` still reads what the native reader reads, and the
    summary names no tshark; a named tshark that is missing is an error even then."""
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    env.pop("TCP_TEARDOWN_TSHARK", None)
    done = _analyze(tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["tshark"] is None and summary["inputs"][0]["engine"] == "native"
    named = _analyze(tmp_path, "--tshark", str(bare / "tshark"), env=env)
    assert named.returncode != 0 and "tshark not found" in named.stderr


# A batch run whose tasks (what pool workers execute) run in this interpreter, each as it
# is submitted: the driver and every kind of task in one process that notes imports.
BATCH_SCRIPT = WATCH + """
from concurrent.futures import Future
from pathlib import Path

from tcp_teardown.batch.runner import Options, run_batch


class Inline:
    name, slots = "inline", 1

    def submit(self, fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future

    def wait(self, futures, timeout):
        return [f for f in futures if f.done()]

    def result(self, future):
        return future.result()

    def close(self, abort=False):
        pass


options = Options(out=Path(sys.argv[2]), chunk_packets=int(sys.argv[3]), progress=False)
summary = run_batch([sys.argv[1]], options, Inline())
assert not summary.failed and summary.connections > 0, summary
print("pandas imported" if attempts else "pandas not imported", file=sys.stderr)
"""


@pytest.mark.parametrize("chunk_packets", [0, 40], ids=["whole-file task", "pieces, buckets, finish"])
def test_batch_never_imports_pandas(tmp_path: Path, chunk_packets: int) -> None:
    done = subprocess.run([sys.executable, "-c", BATCH_SCRIPT, str(SAMPLE), str(tmp_path / "ds"), str(chunk_packets)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "pandas not imported"
