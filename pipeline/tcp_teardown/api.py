"""The Python API: analyze captures into DataFrames (the CLI, notebooks and extcap use it)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from tcp_teardown import endpoints, filters
from tcp_teardown.analysis import analyze_packets
from tcp_teardown.digest import BackgroundDigest
from tcp_teardown.errors import display_path
from tcp_teardown.facts import Params
from tcp_teardown.ingest import ReadReport, read_packet_table
from tcp_teardown.schema import CONNECTIONS, FRAMES
from tcp_teardown.tshark import TSHARK_ENV, Tshark, find_tshark

if TYPE_CHECKING:  # pandas loads only when a DataFrame is asked for (CLI start-up time)
    import pandas as pd

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("open", "close", "time_wait_side")


@dataclass
class FileReport:
    """What happened to one input capture."""

    path: str
    size: int
    sha256: str
    engine: str
    packets: int
    connections: int
    truncated: bool
    warnings: list[str] = field(default_factory=list)
    fallback_reason: str | None = None


@dataclass
class Tables:
    """The Arrow tables of one run."""

    connections: pa.Table
    frames: pa.Table
    endpoints: pa.Table
    hosts: pa.Table
    files: list[FileReport]
    params: Params
    tshark: Tshark | None = None


def analyze_file(path: Path, params: Params, engine: str = "auto",
                 tshark: Tshark | None = None, name: str | None = None) -> tuple[pa.Table, pa.Table, FileReport]:
    """Labelled connections and key frames of one capture, and a report of the read."""
    report = ReadReport()
    with BackgroundDigest(path) as digest:
        holder = [read_packet_table(path, engine, tshark, report)]
        packet_count = holder[0].num_rows
        # The list lets analyze_packets drop the only reference once it has its own arrays.
        name = name or display_path(path)
        result = analyze_packets(holder, name, params)
        size, sha = digest.result()
    return result.connections, result.frames, FileReport(
        path=name, size=size, sha256=sha, engine=report.engine,
        packets=packet_count, connections=result.connections.num_rows,
        truncated=report.truncated, warnings=report.warnings,
        fallback_reason=report.fallback_reason,
    )


def _tshark_needed_upfront(engine: str, explicit: str | None) -> bool:
    """Whether tshark is found (and its version checked) before any file is read.

    The tshark engine needs it, and a tshark the user named (option or environment
    variable) that is missing or too old is an error even when the native reader would
    not have needed it. Otherwise `auto` looks for tshark only when a file falls back:
    starting tshark to learn its version costs a sixth of a second.
    """
    return engine == "tshark" or (engine == "auto" and bool(explicit or os.environ.get(TSHARK_ENV)))


def analyze_tables(paths: Iterable[Path | str], params: Params | None = None,
                   engine: str = "auto", tshark_path: str | None = None) -> Tables:
    """Analyze captures one after the other; combine their tables."""
    params = params or Params()
    paths = [Path(p) for p in paths]
    tshark = find_tshark(tshark_path) if _tshark_needed_upfront(engine, tshark_path) else None
    conns, frames, reports = [], [], []
    for path in paths:
        c, f, report = analyze_file(path, params, engine, tshark, name=display_path(path))
        conns.append(c)
        frames.append(f)
        reports.append(report)
    if tshark is None and any(report.engine == "tshark" for report in reports):
        tshark = find_tshark(tshark_path)  # the one a fallback used (its version check is cached)
    conn_table = pa.concat_tables(conns) if conns else CONNECTIONS.empty_table()
    frame_table = pa.concat_tables(frames) if frames else FRAMES.empty_table()
    endpoint_table, host_table = endpoints.aggregate_tables(conn_table, params.msl)
    return Tables(
        connections=conn_table, frames=frame_table, endpoints=endpoint_table, hosts=host_table,
        files=reports, params=params, tshark=tshark,
    )


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow table -> DataFrame with pyarrow-backed columns and categorical labels."""
    import pandas as pd

    df = table.to_pandas(types_mapper=pd.ArrowDtype)
    for column in LABEL_COLUMNS:
        if column in df:
            df[column] = df[column].astype(str).replace({"<NA>": None, "None": None}).astype("category")
    return df


class TableViews:
    """DataFrame views and per-connection drill-downs over `self.tables` (shared by the
    result of `analyze` and by results loaded back from disk)."""

    tables: Tables

    @property
    def connections(self) -> pd.DataFrame:
        return to_frame(self.tables.connections)

    @property
    def frames(self) -> pd.DataFrame:
        return to_frame(self.tables.frames)

    @property
    def endpoints(self) -> pd.DataFrame:
        return to_frame(self.tables.endpoints)

    @property
    def hosts(self) -> pd.DataFrame:
        return to_frame(self.tables.hosts)

    def filters(self) -> list[filters.LabelFilter]:
        return filters.label_filters(self.tables.connections, self.tables.frames)

    def explain(self, flow_id: str, *, file: str | None = None, plot: bool = False) -> object:
        """The ladder of one connection (text; a matplotlib figure with plot=True)."""
        from tcp_teardown import explore

        return explore.explain(self, flow_id, file=file, plot=plot)

    def packets(self, flow_id: str, *, file: str | None = None) -> list:
        """The full dissection of one connection's packets, through pyshark."""
        from tcp_teardown import explore

        return explore.packets(self, flow_id, file=file)

    def filter_for(self, rows: pd.DataFrame, *, key_frames: bool = False) -> str:
        """The Wireshark display filter selecting these connection rows."""
        from tcp_teardown import explore

        return explore.filter_for(rows, key_frames=key_frames, among=self.connections)

    def counts_html(self) -> str:
        """Connections per label as an HTML table."""
        rows = "".join(
            f"<tr><td>{kind}</td><td>{label}</td><td>{n}</td></tr>"
            for kind, values in summary_counts(self.tables.connections).items() for label, n in values.items()
        )
        return f"<table><tr><th>kind</th><th>label</th><th>connections</th></tr>{rows}</table>"


@dataclass
class Result(TableViews):
    """What `analyze` returns: DataFrames of connections, key frames, endpoints and hosts."""

    tables: Tables

    def _repr_html_(self) -> str:
        return (f"<b>tcp-teardown</b>: {self.tables.connections.num_rows} connections in "
                f"{len(self.tables.files)} capture(s){self.counts_html()}")


def summary_counts(conns: pa.Table) -> dict[str, dict[str, int]]:
    """Connections per open value, close value and flag (counted in Arrow, most first;
    ties in order of first appearance)."""
    def counts(column: pa.ChunkedArray) -> dict[str, int]:
        # Chunk by chunk, without concatenating them; a dictionary chunk is counted on its
        # indices (a byte a row), not on its values cast back to text.
        found: dict[str, int] = {}
        for chunk in column.chunks:
            if pa.types.is_dictionary(chunk.type):
                pairs = pc.value_counts(chunk.indices)
                values = chunk.dictionary.take(pairs.field("values"))
            else:
                pairs = pc.value_counts(chunk)
                values = pairs.field("values")
            for value, count in zip(values.to_pylist(), pairs.field("counts").to_pylist(), strict=True):
                found[str(value)] = found.get(str(value), 0) + count
        return dict(sorted(found.items(), key=lambda kv: -kv[1]))

    if conns.num_rows == 0:
        return {"open": {}, "close": {}, "flags": {}}
    return {
        "open": counts(conns.column("open")),
        "close": counts(conns.column("close")),
        "flags": counts(pc.list_flatten(conns.column("flags"))),
    }


def analyze(paths: Iterable[Path | str] | Path | str, idle_threshold: float = 5.0,
            msl: float = 30.0, engine: str = "auto", tshark: str | None = None) -> Result:
    """Analyze one or more captures; returns a `Result` with DataFrames."""
    if isinstance(paths, str | Path):
        paths = [paths]
    return Result(analyze_tables(paths, Params(idle_threshold, msl), engine, tshark))
