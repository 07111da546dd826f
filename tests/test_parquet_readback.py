"""The Parquet we write reads back the same through pyarrow, pandas and DuckDB."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tcp_teardown.schema import CONNECTIONS, ENDPOINTS, FRAMES
from tcp_teardown.vocab import CLOSE_VALUES, FLAG_VALUES, OPEN_VALUES


@pytest.mark.parametrize(("name", "schema"), [("connections", CONNECTIONS), ("frames", FRAMES),
                                              ("endpoints", ENDPOINTS)])
def test_declared_schema_on_disk(seed_run: Path, name: str, schema) -> None:
    table = pq.read_table(seed_run / f"{name}.parquet")
    assert table.schema.remove_metadata().equals(schema, check_metadata=False), table.schema


def test_labels_are_categorical_and_from_the_vocabulary(seed_run: Path) -> None:
    conns = pd.read_parquet(seed_run / "connections.parquet")
    assert isinstance(conns["open"].dtype, pd.CategoricalDtype)
    assert set(conns["open"].astype(str)) <= set(OPEN_VALUES)
    assert set(conns["close"].astype(str)) <= set(CLOSE_VALUES)
    assert set(conns["flags"].explode().dropna()) <= set(FLAG_VALUES)


def test_duckdb_reads_the_same_rows(seed_run: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    path = str(seed_run / "connections.parquet")
    con = duckdb.connect()
    by_close = dict(con.execute(
        f"select close, count(*) from read_parquet('{path}') group by close").fetchall())
    conns = pd.read_parquet(path)
    assert by_close == conns["close"].astype(str).value_counts().to_dict()
    flagged = con.execute(
        f"select count(*) from read_parquet('{path}') where list_contains(flags, 'three_way_close')"
    ).fetchone()[0]
    assert flagged == conns["flags"].map(lambda f: "three_way_close" in list(f)).sum() == 4


def test_endpoint_share_of_server_active_closes(seed_run: Path) -> None:
    ends = pd.read_parquet(seed_run / "endpoints.parquet")
    row = ends[(ends["server_ip"] == "192.168.221.1") & (ends["server_port"] == 82)].iloc[0]
    assert row["connections"] == 4 and row["close_fin_by_server"] == 4
    assert row["server_active_close_share"] == 1.0
    assert row["port_reuse_time_wait"] == 2
    web = ends[(ends["server_ip"] == "192.168.0.1") & (ends["server_port"] == 8080)].iloc[0]
    # 8080: two client closes (x2 files), one simultaneous (x2): no server close.
    assert web["server_active_close_share"] == 0.0


def test_key_frames_table_matches_connections(seed_run: Path) -> None:
    conns = pd.read_parquet(seed_run / "connections.parquet")
    frames = pd.read_parquet(seed_run / "frames.parquet")
    # flow_id is the same connection in several files (it joins files), so key on both.
    from_frames = frames.groupby(["file", "flow_id"])["frame_number"].apply(sorted).to_dict()
    for conn in conns.itertuples():
        assert sorted(conn.key_frames) == from_frames.get((conn.file, conn.flow_id), [])
