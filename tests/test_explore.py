"""The exploring API: explain (ladder text and figure), packets (pyshark), filter_for (in tshark), load (pushdown)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from tcp_teardown import explore
from tcp_teardown.api import Result, analyze, analyze_tables
from tcp_teardown.report import write_run
from tests.conftest import ROOT, SAMPLE, SEEDS, needs_seeds, needs_tshark, tshark_fields

pytestmark = needs_tshark

REAL = ROOT / "tests" / "captures" / "real"
CROSSING_PORT = 56155  # the sample's simultaneous close (the seed000_simultaneous_close source)


@pytest.fixture(scope="module")
def sample() -> Result:
    return analyze(SAMPLE)


@pytest.fixture(scope="module")
def crossing(sample: Result) -> pd.Series:
    conns = sample.connections
    return conns[conns["client_port"] == CROSSING_PORT].iloc[0]


def ladder_line(text: str, frame: int) -> str:
    """The ladder line of one frame."""
    for line in text.splitlines():
        fields = line[1:].split()
        if fields and fields[0] == str(frame):
            return line
    raise AssertionError(f"no line for frame {frame} in:\n{text}")


# --- explain -------------------------------------------------------------------------------
def test_explain_shows_the_fins_crossing(sample: Result, crossing: pd.Series) -> None:
    ladder = explore.explain(sample, crossing["flow_id"])
    text = str(ladder)
    first, second = int(crossing["first_fin_frame"]), int(crossing["second_fin_frame"])
    assert (first, second) == (27, 28)
    # The server's FIN first, then the client's FIN, which acks only up to the server's FIN.
    server_fin, client_fin = ladder_line(text, first), ladder_line(text, second)
    assert server_fin.startswith("*") and "<--" in server_fin and "FIN,ACK seq=138 ack=144" in server_fin
    assert server_fin.rstrip().endswith("first FIN")
    assert client_fin.startswith("*") and "-->" in client_fin and "FIN,ACK seq=144 ack=138" in client_fin
    assert client_fin.rstrip().endswith("second FIN")
    assert "second FIN: frame 28 (client, ack=138) does not cover it: the FINs crossed" in text
    assert "acknowledged by ack>=139" in text  # the first FIN needs ack 139 to be covered
    # Every key frame is marked, and only key frames are.
    marked = {int(line[1:].split()[0]) for line in text.splitlines() if line.startswith("*")}
    assert marked == set(crossing["key_frames"]) == {21, 27, 28, 29, 30}
    assert "final ACK" in ladder_line(text, 30) and "retransmitted FIN" in ladder_line(text, 29)
    assert "frames 24-26: client->server 1 segment (143 B), server->client 1 segment (137 B)" in text


def test_explain_relative_numbers_match_tshark(sample: Result, crossing: pd.Series) -> None:
    """Our relative seq/ack (from raw headers) agree with tshark's own, an independent computation."""
    ladder = explore.explain(sample, crossing["flow_id"])
    theirs = tshark_fields(SAMPLE, "frame.number", "tcp.seq", "tcp.ack",
                           display_filter=f"tcp.stream == {int(crossing['tcp_stream'])}")
    ours = ladder.rows.set_index("frame_number")
    assert len(theirs) == len(ours)
    for frame, seq, ack in theirs:
        assert int(ours.at[int(frame), "seq"]) == int(seq), frame
        if int(ours.at[int(frame), "ack"]) >= 0:
            assert int(ours.at[int(frame), "ack"]) == int(ack), frame


def test_every_sample_connection_explains_with_all_its_packets(sample: Result) -> None:
    for row in sample.connections.itertuples():
        ladder = explore.explain(sample, row.flow_id)
        assert len(ladder.rows) == row.packets_c2s + row.packets_s2c, row.flow_id
        assert int(ladder.rows["c2s"].sum()) == row.packets_c2s
        shown = ladder.rows[ladder.rows["shown"]]
        assert set(ladder.rows.loc[ladder.rows["key"], "frame_number"]) <= set(shown["frame_number"])
        assert row.close in str(ladder)


def test_orderly_close_is_explained_as_covered(sample: Result) -> None:
    conns = sample.connections
    row = conns[conns["close"] == "fin_by_client"].iloc[0]
    text = str(explore.explain(sample, row["flow_id"]))
    assert "covers it: the other side had seen the first FIN" in text
    assert f"final ACK: frame {int(row['final_ack_frame'])}" in text


def test_figure_has_title_and_labelled_axes(sample: Result, crossing: pd.Series) -> None:
    fig = explore.explain(sample, crossing["flow_id"], plot=True)
    ax = fig.axes[0]
    assert crossing["flow_id"] in ax.get_title() and "fin_simultaneous" in ax.get_title()
    assert "FINs crossed" in ax.get_title()
    assert ax.get_xlabel() and ax.get_ylabel()
    ladder = explore.explain(sample, crossing["flow_id"])
    segments = [s for s in ladder.steps if s.kind == "segment"]
    assert len(ax.texts) >= len(segments)  # one label per arrow (plus roles and folded runs)
    assert len(ladder.figure().axes) == 1


@needs_seeds
def test_explain_on_the_seed_simultaneous_close() -> None:
    seed = SEEDS / "seed000_simultaneous_close.pcap"
    result = analyze(seed)
    row = result.connections.iloc[0]
    text = str(explore.explain(result, row["flow_id"]))
    assert "does not cover it: the FINs crossed" in text
    assert ladder_line(text, 7).startswith("*") and ladder_line(text, 8).startswith("*")


def test_explain_from_a_capture_path(crossing: pd.Series) -> None:
    assert "FINs crossed" in str(explore.explain(SAMPLE, crossing["flow_id"]))


def test_unknown_flow_id_is_a_key_error(sample: Result) -> None:
    with pytest.raises(KeyError, match="no connection"):
        explore.explain(sample, "0000000000000000")


# --- packets (pyshark) ---------------------------------------------------------------------
def test_packets_are_the_connection_fully_dissected(sample: Result, crossing: pd.Series) -> None:
    pytest.importorskip("pyshark")
    dissected = explore.packets(sample, crossing["flow_id"])
    assert len(dissected) == crossing["packets_c2s"] + crossing["packets_s2c"]
    assert [int(p.number) for p in dissected] == list(range(21, 33))
    assert {int(p.tcp.stream) for p in dissected} == {int(crossing["tcp_stream"])}
    assert {int(p.tcp.port) for p in dissected} <= {CROSSING_PORT, 80}


def test_frame_ranges() -> None:
    assert explore.frame_ranges([27, 21, 22, 23, 29, 28, 40]) == "21..23,27..29,40"
    assert explore.frame_ranges([5]) == "5"


# --- filter_for ----------------------------------------------------------------------------
def frames_in_tshark(display_filter: str) -> set[int]:
    return {int(line[0]) for line in tshark_fields(SAMPLE, "frame.number", display_filter=display_filter)}


def connection_frames(result: Result, rows: pd.DataFrame) -> set[int]:
    return {int(f) for fid in rows["flow_id"]
            for f in explore.connection_packets(result, fid)["frame_number"]}


def test_filter_for_selects_exactly_those_connections(sample: Result) -> None:
    conns = sample.connections
    rows = conns[conns["close"].isin(["fin_by_client", "fin_simultaneous"])]
    text = explore.filter_for(rows)
    assert text.startswith("tcp.stream in {")
    assert frames_in_tshark(text) == connection_frames(sample, rows)


def test_filter_for_key_frames(sample: Result) -> None:
    conns = sample.connections
    rows = conns[conns["close"] == "fin_simultaneous"]
    text = explore.filter_for(rows, key_frames=True)
    assert text.startswith("frame.number in {")
    assert frames_in_tshark(text) == {int(f) for kf in rows["key_frames"] for f in kf}


def test_filter_for_without_a_stream_number_uses_the_4_tuple_and_frames(sample: Result) -> None:
    """The port-reusing connection: the same 4-tuple as the one before it, told apart by frames."""
    conns = sample.connections
    reuse = conns[conns["flags"].map(lambda flags: "port_reuse_time_wait" in flags)].copy()
    reuse["tcp_stream"] = pd.NA
    text = explore.filter_for(reuse)
    assert "tcp.port == 31387" in text
    assert frames_in_tshark(text) == connection_frames(sample, reuse) == set(range(110, 124))


def test_filter_for_a_shared_stream_narrows_to_the_frames(sample: Result) -> None:
    conns = sample.connections.copy()
    conns.loc[conns["client_port"] == 31387, "tcp_stream"] = 12  # as if tshark kept one stream
    second = conns[(conns["client_port"] == 31387) & (conns["open"] == "handshake")]
    assert explore.filter_for(second, among=conns) == "(tcp.stream == 12 && frame.number in {110..123})"


def test_filter_for_refuses_rows_of_several_captures(sample: Result) -> None:
    rows = pd.concat([sample.connections.head(2), sample.connections.head(1).assign(file="other.pcap")])
    with pytest.raises(ValueError, match="2 captures"):
        explore.filter_for(rows)
    per_file = explore.filters_by_file(rows)
    assert per_file == {str(SAMPLE): "tcp.stream in {0,1}", "other.pcap": "tcp.stream in {0}"}


# --- load ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An analyze --out folder and a hive-partitioned dataset of the same run."""
    captures = [SAMPLE, REAL / "fin_simultaneous.pcap", REAL / "fin_by_server.pcap", REAL / "half_closed.pcap"]
    tables = analyze_tables(captures)
    out = tmp_path_factory.mktemp("analyze-out")
    write_run(out, tables)
    dataset = tmp_path_factory.mktemp("dataset")
    for name in ("connections", "frames"):
        table = getattr(tables, name)
        capture = pa.array([Path(f).name for f in table.column("file").to_pylist()], pa.string())
        # Small row groups, so that pruning can be seen row group by row group.
        ds.write_dataset(table.append_column("capture", capture), dataset / name, format="parquet",
                         partitioning=["capture"], partitioning_flavor="hive",
                         min_rows_per_group=1, max_rows_per_group=3)
    ds.write_dataset(tables.endpoints, dataset / "endpoints", format="parquet")
    return {"tables": tables, "out": out, "dataset": dataset}


def simultaneous_count(archive: dict[str, object]) -> int:
    conns = archive["tables"].connections.to_pandas()  # type: ignore[attr-defined]
    return int((conns["close"] == "fin_simultaneous").sum())


@pytest.mark.parametrize("layout", ["out", "dataset"])
def test_load_pushes_a_label_filter_down(archive: dict[str, object], layout: str) -> None:
    loaded = explore.load(archive[layout], filters=[("close", "==", "fin_simultaneous")])  # type: ignore[arg-type]
    conns = loaded.connections
    expected = simultaneous_count(archive)
    assert expected == 3 and len(conns) == expected
    assert set(conns["close"].astype(str)) == {"fin_simultaneous"}
    assert isinstance(conns["close"].dtype, pd.CategoricalDtype)
    report = loaded.scan_report().set_index("table")
    assert report.loc["connections", "rows_read"] == expected
    if layout == "dataset":  # several small row groups: those without the label are never read
        assert report.loc["connections", "row_groups_read"] < report.loc["connections", "row_groups"]
        assert report.loc["connections", "files_read"] < report.loc["connections", "files"]
    # The key frames of exactly those connections come along.
    all_frames = archive["tables"].frames.to_pandas()  # type: ignore[attr-defined]
    wanted = all_frames[all_frames["flow_id"].isin(conns["flow_id"])]
    assert sorted(loaded.frames["frame_number"].tolist()) == sorted(wanted["frame_number"].tolist())
    assert {f.label for f in loaded.filters()} >= {"fin_simultaneous", "handshake"}
    assert "3 connections" in loaded._repr_html_()


def test_load_partition_filter_reads_one_capture(archive: dict[str, object]) -> None:
    loaded = explore.load(archive["dataset"], filters=[("capture", "==", "teardowns.pcap")])  # type: ignore[arg-type]
    assert len(loaded.connections) == 14
    report = loaded.scan_report().set_index("table")
    assert report.loc["connections", "files_read"] == 1 < report.loc["connections", "files"]
    assert report.loc["frames", "files_read"] == 1
    assert len(loaded.hosts) > 0  # no hosts/ in the dataset: computed from the connections


def test_load_computes_missing_aggregates_as_analyze_does(tmp_path: Path) -> None:
    """A dataset without endpoints/ and hosts/: they are computed from its connections,
    equal to analyze's (a 4-tuple reused during TIME_WAIT ends it: client_port counts)."""
    tables = analyze_tables([SAMPLE, REAL / "port_reuse_time_wait.pcap"])
    for name in ("connections", "frames"):
        ds.write_dataset(getattr(tables, name), tmp_path / name, format="parquet")
    loaded = explore.load(tmp_path)
    assert loaded.tables.endpoints.equals(tables.endpoints)
    assert loaded.tables.hosts.equals(tables.hosts)


def test_load_or_filters_and_expressions(archive: dict[str, object]) -> None:
    import pyarrow.compute as pc

    either = explore.load(archive["out"], filters=[[("close", "==", "half_closed")],  # type: ignore[arg-type]
                                                   [("close", "==", "fin_simultaneous")]])
    assert set(either.connections["close"].astype(str)) == {"half_closed", "fin_simultaneous"}
    by_port = explore.load(archive["dataset"], filters=pc.field("client_port") == CROSSING_PORT)  # type: ignore[arg-type]
    assert by_port.connections["client_port"].tolist() == [CROSSING_PORT]
    assert len(explore.load(archive["out"]).connections) == archive["tables"].connections.num_rows  # type: ignore[attr-defined]


def test_explain_on_loaded_results_finds_relative_captures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    out.mkdir()
    write_run(out, analyze_tables([Path("samples/teardowns.pcap")]))  # `file` is relative to ROOT
    monkeypatch.chdir(tmp_path)
    loaded = explore.load(out, filters=[("client_port", "==", CROSSING_PORT)])
    flow_id = loaded.connections["flow_id"].item()
    with pytest.raises(FileNotFoundError, match="looked in"):
        loaded.explain(flow_id)
    found = explore.load(out, captures=ROOT)
    assert "FINs crossed" in str(found.explain(flow_id))
    assert found.filter_for(found.connections[found.connections["flow_id"] == flow_id]) == "tcp.stream in {2}"


def test_load_refuses_a_folder_without_connections(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="connections"):
        explore.load(tmp_path)


def test_exports_are_lazy() -> None:
    code = ("import sys, tcp_teardown as t; assert 'tcp_teardown.explore' not in sys.modules; "
            "assert t.load is __import__('tcp_teardown.explore').explore.load; "
            "assert {'load', 'explain', 'packets', 'filter_for'} <= set(dir(t))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
