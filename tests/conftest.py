"""Shared test helpers: where things are, how to run the real CLI and the real tshark."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SEEDS = SHARED / "corpus" / "seeds"
SAMPLE = ROOT / "samples" / "teardowns.pcap"
CLI = Path(sys.executable).with_name("tcp-teardown")


def seed_captures() -> list[Path]:
    return sorted(SEEDS.glob("*.pcap")) if SEEDS.is_dir() else []


needs_seeds = pytest.mark.skipif(not SEEDS.is_dir(), reason="the shared seed corpus is not beside the checkout")
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def run_cli(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed `tcp-teardown` console script as a real subprocess."""
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def tshark_fields(capture: Path, *fields: str, display_filter: str | None = None) -> list[list[str]]:
    """Rows of `tshark -T fields` for the given fields."""
    cmd = ["tshark", "-n", "-r", str(capture), "-T", "fields"]
    if display_filter:
        cmd += ["-Y", display_filter]
    for field in fields:
        cmd += ["-e", field]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    return [line.split("\t") for line in out.splitlines()]


@pytest.fixture(scope="session")
def seed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `analyze` run over the whole seed corpus, shared by the tests that read it."""
    if not SEEDS.is_dir():
        pytest.skip("the shared seed corpus is not beside the checkout")
    out = tmp_path_factory.mktemp("seed-run")
    result = run_cli("analyze", *seed_captures(), "--out", out)
    assert result.returncode == 0, result.stderr
    return out
