"""The acceptance corpus: every label of every seed connection, exactly; cross-checked with tshark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SEEDS, SHARED, needs_tshark, tshark_fields

SCORE = SHARED / "tools" / "score.py"


def test_seed_corpus_scores_exact(seed_run: Path) -> None:
    result = subprocess.run([sys.executable, str(SCORE), str(SEEDS / "expected.json"), str(seed_run)],
                            capture_output=True, text=True, check=False)
    last = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout
    assert last == "exact connections: 28/28"


@needs_tshark
def test_close_frames_agree_with_tshark_analysis(seed_run: Path) -> None:
    """tshark's own TCP analysis, joined by hand, must agree with our raw-header facts."""
    conns = pd.read_parquet(seed_run / "connections.parquet")
    checked = 0
    for file, group in conns.groupby("file"):
        rows = tshark_fields(Path(file), "frame.number", "tcp.connection.fin_active",
                             "tcp.analysis.acks_frame", "tcp.flags.fin")
        active = {int(r[0]) for r in rows if r[1] == "1"}
        acks = {int(r[0]): int(r[2]) for r in rows if r[2]}
        fins = {int(r[0]) for r in rows if r[3] in ("1", "True")}
        for conn in group.itertuples():
            if pd.notna(conn.first_fin_frame):
                assert int(conn.first_fin_frame) in active, (file, conn.first_fin_frame)
                checked += 1
            if pd.notna(conn.final_ack_frame):
                assert acks.get(int(conn.final_ack_frame)) in fins, (file, conn.final_ack_frame)
                checked += 1
    assert checked >= 40


@needs_tshark
@pytest.mark.parametrize("label", ["port_reuse_time_wait"])
def test_port_reuse_agrees_with_tshark(seed_run: Path, label: str) -> None:
    conns = pd.read_parquet(seed_run / "connections.parquet")
    flagged = conns[conns["flags"].map(lambda f: label in list(f))]
    assert len(flagged) == 2
    for conn in flagged.itertuples():
        rows = tshark_fields(Path(conn.file), "frame.number", display_filter="tcp.analysis.reused_ports")
        assert int(conn.syn_frame) in {int(r[0]) for r in rows}
