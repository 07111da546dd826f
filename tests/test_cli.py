"""The command line, in-process (typer's CliRunner) and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from tcp_teardown.cli import app
from tcp_teardown.rules import FLAG_RULES
from tests.conftest import SAMPLE, needs_tshark, run_cli

runner = CliRunner()


def test_labels_lists_every_label_with_its_docstring() -> None:
    result = runner.invoke(app, ["labels"])
    assert result.exit_code == 0
    for rule in FLAG_RULES:
        assert f"{rule.label}" in result.output and rule.summary in result.output


def test_labels_json() -> None:
    data = json.loads(runner.invoke(app, ["labels", "--json"]).output)
    assert set(data) == {"open", "close", "flags"}
    assert "fin_simultaneous" in data["close"]


@needs_tshark
def test_analyze_prints_summary_and_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["analyze", str(SAMPLE), "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "28 connections" not in result.output  # the sample is one capture: 14
    assert "14 connections in 1 capture(s)" in result.output
    assert "fin_simultaneous  2" in result.output
    result = run_cli("analyze", SAMPLE, "--out", tmp_path / "b", "--json")
    summary = json.loads(result.stdout)
    assert summary["counts"]["close"]["fin_by_server"] == 4
    assert summary["inputs"][0]["sha256"] and summary["parameters"]["msl_s"] == 30.0
    on_disk = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert on_disk["counts"] == summary["counts"]


@needs_tshark
def test_parameters_change_labels(tmp_path: Path) -> None:
    """--idle-threshold above the 10 s gap of the sample removes idle_close."""
    result = run_cli("analyze", SAMPLE, "--out", tmp_path, "--json", "--idle-threshold", "11")
    assert "idle_close" not in json.loads(result.stdout)["counts"]["flags"]
    result = run_cli("analyze", SAMPLE, "--out", tmp_path, "--json", "--msl", "0.0001")
    assert "port_reuse_time_wait" not in json.loads(result.stdout)["counts"]["flags"]


def test_help_is_fast_and_module_entry_works() -> None:
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tcp_teardown", "--help"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and "analyze" in result.stdout
    assert time.monotonic() - start < 5


def test_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("analyze", SAMPLE, "--out", tmp_path, "--idle-threshold", "-3")
    assert result.returncode == 2
