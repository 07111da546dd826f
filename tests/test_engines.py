"""The native engine's labelled output equals the tshark engine's, capture by capture.

Where the native reader declines (tunnels, other link types) `auto` falls back to tshark
and the run's file report says so; those files are listed, not compared.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tcp_teardown.api import analyze_file
from tcp_teardown.facts import Params
from tcp_teardown.tshark import find_tshark
from tests.conftest import ROOT, SHARED, needs_tshark

CAPTURES = sorted(
    [*(SHARED / "corpus").rglob("*.pcap"), *(SHARED / "corpus").rglob("*.pcapng"),
     *(SHARED / "corpus").rglob("*.gz"), *(ROOT / "tests" / "captures").rglob("*.pcap")]
) if SHARED.is_dir() else sorted((ROOT / "tests" / "captures").rglob("*.pcap"))


@pytest.fixture(scope="module")
def tshark():
    return find_tshark()


@needs_tshark
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_native_labels_equal_tshark_labels(capture: Path, tshark) -> None:
    params = Params()
    native_conns, native_frames, report = analyze_file(capture, params, "auto", tshark)
    if report.engine != "native":
        assert report.fallback_reason, "a fallback must say why"
        pytest.skip(f"native reader declined: {report.fallback_reason}")
    ref_conns, ref_frames, ref_report = analyze_file(capture, params, "tshark", tshark)
    assert ref_report.engine == "tshark"
    assert report.packets == ref_report.packets
    assert _rows(native_conns) == _rows(ref_conns)
    assert _rows(native_frames) == _rows(ref_frames)


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()
