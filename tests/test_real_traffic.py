"""Labels of real Linux TCP traffic.

tests/captures/real/ holds one small capture per taxonomy label or flag, made by real
kernel endpoints in network namespaces (tests/realtraffic/), with the labels they must
get in expected.json (the corpus format). The analyzer runs through its command line and
the shared scorer compares, so this checks exactly what a user would get.

As root (network namespaces, nftables, tcpdump), the captures are also made afresh and
labelled again: the labels must not depend on one lucky run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tcp_teardown.vocab import CLOSE_VALUES, FLAG_VALUES, OPEN_VALUES

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "captures" / "real"
SCORE = REPO.parent / "shared" / "tools" / "score.py"
CLI = Path(sys.executable).with_name("tcp-teardown")

VOCABULARY = {"open": set(OPEN_VALUES), "close": set(CLOSE_VALUES), "flags": set(FLAG_VALUES)}


def _needs_analyzer_and_scorer() -> None:
    if not CLI.exists():
        pytest.skip(f"the tcp-teardown console script is not installed ({CLI})")
    if not SCORE.exists():
        pytest.skip(f"the scorer is not there ({SCORE})")


def _analyze_and_score(captures: Path, out: Path) -> None:
    pcaps = sorted(str(p) for p in captures.glob("*.pcap"))
    assert pcaps, f"no captures in {captures}"
    analyzed = subprocess.run(
        [str(CLI), "analyze", *pcaps, "--out", str(out)], capture_output=True, text=True, timeout=600, check=False
    )
    assert analyzed.returncode == 0, f"analyze failed:\n{analyzed.stdout}\n{analyzed.stderr}"
    scored = subprocess.run(
        [sys.executable, str(SCORE), str(captures / "expected.json"), str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert scored.returncode == 0, f"labels differ:\n{scored.stdout}{scored.stderr}"


def test_fixtures_cover_the_taxonomy() -> None:
    """Every capture is described, every description has its capture, labels are
    taxonomy names, and every open and close value and every flag occurs at least once."""
    expected = json.loads((REAL / "expected.json").read_text())
    files = expected["files"]
    assert set(files) == {p.name for p in REAL.glob("*.pcap")}
    seen: dict[str, set[str]] = {"open": set(), "close": set(), "flags": set()}
    for name, entry in files.items():
        assert entry["connections"], name
        for conn in entry["connections"]:
            seen["open"].add(conn["open"])
            seen["close"].add(conn["close"])
            seen["flags"].update(conn["flags"])
    for key, values in VOCABULARY.items():
        assert seen[key] <= values, f"{key}: not taxonomy names: {sorted(seen[key] - values)}"
        assert seen[key] == values, f"{key}: no capture for {sorted(values - seen[key])}"
    assert any(":" in conn["client"].rpartition(":")[0] for entry in files.values() for conn in entry["connections"]), (
        "no IPv6 capture"
    )


def test_committed_captures_get_their_labels(tmp_path: Path) -> None:
    _needs_analyzer_and_scorer()
    _analyze_and_score(REAL, tmp_path / "out")


def _cannot_generate() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, tcpdump)"
    missing = [tool for tool in ("ip", "tcpdump", "nft") if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return None


@pytest.mark.root
@pytest.mark.slow
def test_regenerated_captures_get_their_labels(tmp_path: Path) -> None:
    reason = _cannot_generate()
    if reason:
        pytest.skip(reason)
    _needs_analyzer_and_scorer()
    captures = tmp_path / "captures"
    generator = subprocess.Popen(
        [sys.executable, "-m", "tests.realtraffic.generate", str(captures)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = generator.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the generator then removes its namespaces before exiting.
        generator.terminate()
        output, _ = generator.communicate(timeout=60)
        pytest.fail(f"generation took more than 300 s:\n{output}")
    assert generator.returncode == 0, f"generation failed:\n{output}"
    _analyze_and_score(captures, tmp_path / "out")
