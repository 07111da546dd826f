"""Exploring results in Python and Jupyter: read outputs back, explain one connection, jump to Wireshark.

- `load(folder, filters=...)` reads an `analyze --out` folder or a batch dataset (hive-
  partitioned `connections/`, `frames/`, ...) with the filters pushed into the Parquet scan;
  it returns a `Loaded`, which offers the same DataFrames as `analyze`'s `Result`.
- `filter_for(rows)` is the display filter that selects those connections in Wireshark.
- `explain(source, flow_id)` draws one connection's ladder (text, or a figure).
- `packets(source, flow_id)` is that connection fully dissected, through pyshark.

`source` is a `Result`, a `Loaded`, or a path: a capture (analyzed on the spot) or an
output folder (loaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, overload

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tcp_teardown import endpoints as endpoint_tables
from tcp_teardown import filters as label_filters
from tcp_teardown.api import FileReport, Result, Tables, TableViews, analyze
from tcp_teardown.facts import Params
from tcp_teardown.ladder import Ladder
from tcp_teardown.schema import CONNECTIONS, ENDPOINTS, FRAMES, HOSTS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "connections": CONNECTIONS, "frames": FRAMES, "endpoints": ENDPOINTS, "hosts": HOSTS,
}
FilterTerm = tuple[str, str, Any]  # ("close", "==", "fin_simultaneous"), as pyarrow.parquet takes them
Filters = Sequence[FilterTerm] | Sequence[Sequence[FilterTerm]] | pc.Expression | None


# --- load ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanReport:
    """How much of one table a filtered read touched (what pushdown saved)."""

    table: str
    files: int  # Parquet files of the table
    files_read: int  # files with at least one row group read
    row_groups: int
    row_groups_read: int  # row groups read whole (others were skipped, or only their label column read)
    rows_read: int  # rows that passed the filter


def _dnf(filters: Filters) -> list[list[FilterTerm]] | None:
    """Tuple filters as OR-of-ANDs (pyarrow.parquet's convention); None for an Expression or nothing."""
    if filters is None or isinstance(filters, pc.Expression) or len(filters) == 0:
        return None
    first = filters[0]
    if isinstance(first, tuple):
        return [list(filters)]  # type: ignore[arg-type]
    return [list(conj) for conj in filters]  # type: ignore[union-attr]


def _expression(filters: Filters) -> pc.Expression | None:
    if filters is None:
        return None
    if isinstance(filters, pc.Expression):
        return filters
    return pq.filters_to_expression(filters) if len(filters) else None  # type: ignore[arg-type]


def _may_match(stats: dict[str, Any] | None, term: FilterTerm) -> bool:
    """False only when a row group's min/max prove that no row satisfies `term`."""
    column, op, value = term
    s = (stats or {}).get(column)
    if not s or "min" not in s or s["min"] is None:
        return True
    lo, hi = s["min"], s["max"]
    try:
        if op in ("=", "=="):
            return bool(lo <= value <= hi)
        if op == "in":
            return any(lo <= v <= hi for v in value)
        if op == "!=":
            return not (lo == hi == value)
        if op == "not in":
            return not (lo == hi and lo in value)
        if op == "<":
            return bool(lo < value)
        if op == "<=":
            return bool(lo <= value)
        if op == ">":
            return bool(hi > value)
        if op == ">=":
            return bool(hi >= value)
    except TypeError:  # a value of another type than the column: let the scan decide
        return True
    return True


def _open_dataset(root: Path, name: str) -> ds.Dataset | None:
    """`root/name.parquet`, or `root/name/` as a (hive-partitioned) dataset; None if neither."""
    single = root / f"{name}.parquet"
    if single.is_file():
        return ds.dataset(single, format="parquet")
    folder = root / name
    if folder.is_dir():
        # Files starting with "." or "_" (temp files of an interrupted write) are skipped.
        return ds.dataset(folder, format="parquet", partitioning="hive")
    return None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Our columns in our types and order, extra (partition) columns after them."""
    columns, names = [], []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            if column.type != field.type:
                # Written by another version when the cast fails: keep it as it is.
                with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    column = column.cast(field.type)
            columns.append(column)
            names.append(field.name)
    for name in table.column_names:
        if name not in names:
            columns.append(table.column(name))
            names.append(name)
    return pa.table(columns, names=names)


class Loaded(TableViews):
    """Result tables read back from disk; filters are pushed into the scan.

    `connections` holds the rows that pass the filters; `frames` the key frames of those
    connections; `endpoints` and `hosts` are the stored aggregates (filtered only by the
    filter terms whose columns they have, such as a partition key), or computed from the
    loaded connections when the folder has none.
    """

    def __init__(self, root: Path, filters: Filters = None, captures: Path | None = None) -> None:
        self.root = root
        self.captures = captures
        self._dnf = _dnf(filters)
        self.filter = _expression(filters)
        self._datasets = {name: _open_dataset(root, name) for name in TABLE_SCHEMAS}
        if self._datasets["connections"] is None:
            raise FileNotFoundError(
                f"{root}: no connections.parquet and no connections/ dataset (looked for both)")
        self._reports: dict[str, ScanReport] = {}

    def __repr__(self) -> str:
        return f"Loaded({str(self.root)!r}, filter={self.filter})"

    # -- scanning ---------------------------------------------------------------------------
    def _applicable(self, name: str) -> tuple[pc.Expression | None, list[list[FilterTerm]] | None, bool]:
        """The part of the user's filter a table can evaluate, and whether that is all of it.

        An AND of terms splits: the terms whose columns a table has still hold for the rows it
        keeps (a partition key of a connection is the key of its frames too). An OR of ANDs
        applies only whole.
        """
        dataset = self._datasets[name]
        if dataset is None or self.filter is None:
            return None, None, self.filter is None
        names = set(dataset.schema.names)
        if self._dnf is None:  # an Expression: only the connections are filtered by it
            return (self.filter, None, True) if name == "connections" else (None, None, False)
        if all(term[0] in names for conj in self._dnf for term in conj):
            return self.filter, self._dnf, True
        if len(self._dnf) == 1:
            terms = [term for term in self._dnf[0] if term[0] in names]
            if terms:
                return pq.filters_to_expression(terms), [terms], False
        return None, None, False

    def scan(self, name: str, extra: pc.Expression | None = None) -> pa.Table:
        """Read one table with its applicable filter (and `extra`) pushed down."""
        dataset = self._datasets[name]
        if dataset is None:
            return TABLE_SCHEMAS[name].empty_table()
        expr, dnf, _ = self._applicable(name)
        if extra is not None:
            expr = extra if expr is None else expr & extra
        fragments = list(dataset.get_fragments())
        kept = list(dataset.get_fragments(filter=expr)) if expr is not None else fragments
        pieces, total_groups, read_groups = [], 0, 0
        for fragment in fragments:
            total_groups += _row_group_count(fragment)
        for fragment in kept:
            groups = _surviving_row_groups(fragment, dataset.schema, expr, dnf)
            read_groups += len(groups) if groups is not None else _row_group_count(fragment)
            if groups is not None and isinstance(fragment, ds.ParquetFileFragment):
                if not groups:
                    continue  # no row group of this file can match: the file is not read
                fragment = fragment.subset(row_group_ids=groups)
            pieces.append(fragment)
        subset = ds.FileSystemDataset(pieces, dataset.schema, dataset.format, dataset.filesystem)
        table = subset.to_table(filter=expr)
        self._reports[name] = ScanReport(name, len(fragments), len(pieces), total_groups, read_groups, table.num_rows)
        return _conform(table, TABLE_SCHEMAS[name])

    def scan_report(self) -> pd.DataFrame:
        """Per table read so far: files and row groups in the folder versus read, rows read."""
        _ = self.tables  # the report describes a full load
        return pd.DataFrame([asdict(r) for r in self._reports.values()])

    # -- the Result-like surface ------------------------------------------------------------
    @cached_property
    def tables(self) -> Tables:
        conns = self.scan("connections")
        frames = self._frames_of(conns)
        params, files = self._summary()
        stored = {kind: self.scan(kind) for kind in ("endpoints", "hosts") if self._datasets[kind] is not None}
        if len(stored) < 2:  # computed once for both, from what analyze and batch use
            computed = endpoint_tables.aggregate_tables(conns.select(endpoint_tables.COLUMNS), params.msl)
            stored = {"endpoints": computed[0], "hosts": computed[1]} | stored
        endpoints, hosts = stored["endpoints"], stored["hosts"]
        return Tables(connections=conns, frames=frames, endpoints=endpoints, hosts=hosts,
                      files=files, params=params)

    def _frames_of(self, conns: pa.Table) -> pa.Table:
        """Key frames of the loaded connections: the filter itself where frames can take it, else a semi-join."""
        if self._applicable("frames")[2]:
            return self.scan("frames")
        ids = pc.unique(conns.column("flow_id"))
        files = pc.unique(conns.column("file").cast(pa.string()))
        # Both sets prune by min/max statistics: `file` skips whole captures, `flow_id` row groups.
        frames = self.scan("frames", extra=pc.field("flow_id").isin(ids) & pc.field("file").isin(files))
        # A flow_id names one connection in every file it appears in: keep the right files.
        wanted = pc.unique(_file_flow_key(conns))
        return frames.filter(pc.is_in(_file_flow_key(frames), value_set=wanted))

    @property
    def params(self) -> Params:
        return self._summary()[0]

    def _summary(self) -> tuple[Params, list[FileReport]]:
        """Parameters and inputs from summary.json when the folder has one (an analyze run)."""
        path = self.root / "summary.json"
        if not path.is_file():
            return Params(), []
        run = json.loads(path.read_text(encoding="utf-8"))
        p = run.get("parameters", {})
        params = Params(float(p.get("idle_threshold_s", 5.0)), float(p.get("msl_s", 30.0)))
        names = {f.name for f in fields(FileReport)}
        files = [FileReport(**{k: v for k, v in f.items() if k in names}) for f in run.get("inputs", [])]
        return params, files

    def _repr_html_(self) -> str:
        conns = self.tables.connections
        where = f" where <code>{self.filter}</code>" if self.filter is not None else ""
        captures = pc.count_distinct(conns.column("file")).as_py()
        return (f"<b>tcp-teardown</b> (loaded from <code>{self.root}</code>{where}): {conns.num_rows} connections "
                f"in {captures} capture(s){self.counts_html()}")


Source: TypeAlias = "Result | Loaded | str | os.PathLike[str]"


def _file_flow_key(table: pa.Table) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(table.column("file").cast(pa.string()),
                                       table.column("flow_id").cast(pa.string()), "\x1f")


def _row_group_count(fragment: ds.Fragment) -> int:
    if isinstance(fragment, ds.ParquetFileFragment):
        fragment.ensure_complete_metadata()
        return fragment.num_row_groups
    return 1


def _surviving_row_groups(fragment: ds.Fragment, schema: pa.Schema, expr: pc.Expression | None,
                          dnf: list[list[FilterTerm]] | None) -> list[int] | None:
    """Row groups that can hold a matching row; None where the fragment is read whole.

    pyarrow prunes on min/max statistics, but not on our label columns: they are
    dictionary-encoded, and it cannot match their (plain string) statistics. Checking
    min/max ourselves helps little, as a range of label names spans most labels
    ("fin_by_client".."rst_by_server"). So for a filter on a label column, only the
    filtered columns of each row group are read first (dictionary indices: a byte a row),
    and the whole row group only where some row matches.
    """
    if expr is None or not isinstance(fragment, ds.ParquetFileFragment):
        return None
    fragment.ensure_complete_metadata()
    # The dataset schema, not the file's: the filter may name partition keys too.
    pieces = fragment.split_by_row_group(filter=expr, schema=schema)
    candidates = [group.id for piece in pieces for group in piece.row_groups]
    if dnf is None:
        return candidates
    stats = {rg.id: rg.statistics for rg in fragment.row_groups}
    candidates = [i for i in candidates
                  if any(all(_may_match(stats.get(i), term) for term in conj) for conj in dnf)]
    columns = sorted({term[0] for conj in dnf for term in conj})
    if not any(pa.types.is_dictionary(schema.field(c).type) for c in columns if c in schema.names):
        return candidates
    return [i for i in candidates
            if fragment.subset(row_group_ids=[i]).to_table(schema=schema, columns=columns, filter=expr).num_rows]


def load(folder: str | os.PathLike[str], filters: Filters = None, *,
         captures: str | os.PathLike[str] | None = None) -> Loaded:
    """Read an `analyze --out` folder or a batch dataset back, with `filters` pushed into the scan.

    `filters` follows pyarrow.parquet: `[("close", "==", "fin_simultaneous")]` (AND of
    terms), a list of such lists (OR of ANDs), or a pyarrow compute Expression. Terms
    select connections; their key frames come along. Label columns compare as strings.
    `captures` is where to find the capture files when `file` paths are relative to
    another folder (`explain` and `packets` read the capture again).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    return Loaded(root, filters, Path(captures) if captures is not None else None)


# --- Wireshark filters ---------------------------------------------------------------------
def _as_frame(rows: pd.DataFrame | pd.Series | dict[str, Any]) -> pd.DataFrame:
    if isinstance(rows, pd.Series):
        return rows.to_frame().T
    if isinstance(rows, dict):
        return pd.DataFrame([rows])
    return rows


def _ip_field(ip: str) -> str:
    return "ipv6.addr" if ":" in ip else "ip.addr"


def frame_ranges(frames: Iterable[int]) -> str:
    """`[21, 22, 23, 27]` -> `21..23,27` (a set with ranges, as tshark 4.0 parses it)."""
    unique = sorted({int(f) for f in frames})
    parts: list[str] = []
    i = 0
    while i < len(unique):
        j = i
        while j + 1 < len(unique) and unique[j + 1] == unique[j] + 1:
            j += 1
        parts.append(str(unique[i]) if i == j else f"{unique[i]}..{unique[j]}")
        i = j + 1
    return ",".join(parts)


def _one_file(rows: pd.DataFrame) -> str:
    files = rows["file"].astype(str).unique().tolist()
    if len(files) != 1:
        raise ValueError(f"the rows come from {len(files)} captures ({', '.join(files[:3])}...); a display "
                         "filter applies to one capture: use filters_by_file()")
    return files[0]


def filter_for(rows: pd.DataFrame | pd.Series | dict[str, Any], *, key_frames: bool = False,
               among: pd.DataFrame | None = None) -> str:
    """The Wireshark display filter that selects these connection rows (all from one capture).

    `tcp.stream in {…}` by default; with `key_frames=True`, `frame.number in {…}` of the
    frames that prove their labels. `among` (all connections of the capture) lets a
    stream that also holds an unselected connection be narrowed to the selected frames;
    rows without a stream number are selected by 4-tuple and frame range.
    """
    rows = _as_frame(rows)
    if rows.empty:
        raise ValueError("no connection rows to build a filter for")
    file = _one_file(rows)
    if key_frames:
        frames = [int(f) for kf in rows["key_frames"] for f in (kf if kf is not None else [])]
        if not frames:
            raise ValueError("these connections have no key frames")
        return " || ".join(label_filters.set_filters("frame.number", frames))
    shared: set[int] = set()
    if among is not None:
        others = among[(among["file"].astype(str) == file) & ~among["flow_id"].isin(rows["flow_id"])]
        shared = {int(s) for s in others["tcp_stream"].dropna()}
    whole, parts = [], []
    for row in rows.itertuples(index=False):
        stream = row.tcp_stream
        span = f"frame.number in {{{int(row.first_frame)}..{int(row.last_frame)}}}"
        if stream is None or pd.isna(stream):
            ip = _ip_field(str(row.client_ip))
            parts.append(f"({ip} == {row.client_ip} && {ip} == {row.server_ip} && tcp.port == {row.client_port}"
                         f" && tcp.port == {row.server_port} && {span})")
        elif int(stream) in shared:
            parts.append(f"(tcp.stream == {int(stream)} && {span})")
        else:
            whole.append(int(stream))
    return " || ".join([*label_filters.set_filters("tcp.stream", whole), *parts])


def filters_by_file(rows: pd.DataFrame, *, key_frames: bool = False,
                    among: pd.DataFrame | None = None) -> dict[str, str]:
    """`filter_for` per capture file, for rows from several captures."""
    return {str(file): filter_for(group, key_frames=key_frames, among=among)
            for file, group in rows.groupby(rows["file"].astype(str), sort=False)}


# --- one connection ------------------------------------------------------------------------
def _resolve_source(source: Source) -> Result | Loaded:
    if isinstance(source, Result | Loaded):
        return source
    path = Path(source)
    return load(path) if path.is_dir() else analyze(path)


def _connection_row(source: Result | Loaded, flow_id: str, file: str | None) -> dict[str, Any]:
    match = pc.field("flow_id") == flow_id
    if file is not None:
        match = match & (pc.field("file") == file)
    if isinstance(source, Loaded) and "tables" not in source.__dict__:
        table = source.scan("connections", extra=match)  # only this connection is read
    else:
        table = source.tables.connections.filter(match)
    if table.num_rows == 0:
        where = f" in {file}" if file else ""
        raise KeyError(f"no connection {flow_id}{where}")
    if table.num_rows > 1:
        files = ", ".join(sorted(set(table.column("file").to_pylist())))
        raise ValueError(f"connection {flow_id} appears in several captures ({files}): pass file=")
    row = table.slice(0, 1).to_pylist()[0]
    for column in ("open", "close", "time_wait_side"):
        row[column] = None if row[column] is None else str(row[column])
    return row


def _frame_roles(source: Result | Loaded, row: dict[str, Any]) -> dict[int, list[str]]:
    match = (pc.field("flow_id") == row["flow_id"]) & (pc.field("file") == row["file"])
    if isinstance(source, Loaded) and "tables" not in source.__dict__:
        table = source.scan("frames", extra=match)
    else:
        table = source.tables.frames.filter(match)
    return {int(f): list(r) for f, r in zip(table.column("frame_number").to_pylist(),
                                            table.column("roles").to_pylist(), strict=True)}


def capture_path(source: Result | Loaded, file: str) -> Path:
    """Where the capture named `file` is now; the error lists every place looked at."""
    candidate = Path(file)
    roots: list[Path] = [Path.cwd()]
    if isinstance(source, Loaded):
        roots = [r for r in (source.captures, source.root, source.root.parent) if r is not None] + roots
    tried = [candidate] if candidate.is_absolute() else [root / candidate for root in roots]
    if not candidate.is_absolute() and isinstance(source, Loaded) and source.captures is not None:
        tried.append(source.captures / candidate.name)  # an archive moved as a flat folder
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"capture {file} not found; looked in: " + ", ".join(str(p) for p in tried)
                            + " (pass captures= to load())")


def _engine_of(source: Result | Loaded, file: str) -> str:
    """The engine that read `file` first (all number frames alike; the default when unknown)."""
    reports = source._summary()[1] if isinstance(source, Loaded) else source.tables.files
    for report in reports:
        if report.path == file and report.engine in ("tshark", "native"):
            return report.engine
    return "auto"


@lru_cache(maxsize=2)
def _packet_table(path: str, mtime_ns: int, size: int, engine: str) -> pa.Table:
    """The packet table of a capture, kept for the next connection of the same file."""
    from tcp_teardown.ingest import read_packet_table
    from tcp_teardown.tshark import find_tshark

    return read_packet_table(Path(path), engine, find_tshark() if engine != "native" else None)


def connection_packets(source: Source, flow_id: str, *, file: str | None = None) -> pd.DataFrame:
    """Our packet-table rows (schema.PACKETS) of one connection: its 4-tuple within its frame range."""
    result = _resolve_source(source)
    row = _connection_row(result, flow_id, file)
    return _packets_of(result, row)


def _packets_of(source: Result | Loaded, row: dict[str, Any]) -> pd.DataFrame:
    path = capture_path(source, row["file"])
    stat = path.stat()
    table = _packet_table(str(path), stat.st_mtime_ns, stat.st_size, _engine_of(source, row["file"]))
    c = (row["client_ip"], row["client_port"])
    s = (row["server_ip"], row["server_port"])

    def sent(a: tuple[str, int], b: tuple[str, int]) -> pc.Expression:
        return ((pc.field("src_ip") == a[0]) & (pc.field("src_port") == a[1])
                & (pc.field("dst_ip") == b[0]) & (pc.field("dst_port") == b[1]))

    # Connections on one 4-tuple follow each other, so the frame range separates them.
    span = (pc.field("frame_number") >= row["first_frame"]) & (pc.field("frame_number") <= row["last_frame"])
    picked = ds.dataset(table).to_table(filter=(sent(c, s) | sent(s, c)) & span)
    return picked.to_pandas()


@overload
def explain(source: Source, flow_id: str, *, file: str | None = ..., plot: Literal[False] = ...) -> Ladder: ...
@overload
def explain(source: Source, flow_id: str, *, file: str | None = ..., plot: Literal[True]) -> Figure: ...
@overload
def explain(source: Source, flow_id: str, *, file: str | None = ..., plot: bool) -> Ladder | Figure: ...


def explain(source: Source, flow_id: str, *, file: str | None = None, plot: bool = False) -> Ladder | Figure:
    """The ladder of one connection: `str()` of it is the text, `.figure()` the drawing.

    With `plot=True` the figure is returned directly. `file` picks the capture when the
    flow_id appears in several (one connection split across files).
    """
    result = _resolve_source(source)
    row = _connection_row(result, flow_id, file)
    params = result.params if isinstance(result, Loaded) else result.tables.params
    ladder = Ladder(row, _packets_of(result, row), _frame_roles(result, row), idle_threshold=params.idle_threshold)
    return ladder.figure() if plot else ladder


def packets(source: Source, flow_id: str, *, file: str | None = None) -> list[Any]:
    """Every frame of one connection, fully dissected by tshark through pyshark (optional extra).

    tshark re-reads the capture with `frame.number in {…}` of the connection's frames. It
    runs in a worker thread with its own event loop, so this works in Jupyter (whose loop
    is already running) as well as in scripts; the capture is closed before returning.
    """
    try:
        import pyshark
    except ImportError as exc:
        raise ImportError("packets() needs pyshark: pip install 'tcp-teardown[pyshark]'") from exc
    from tcp_teardown.tshark import find_tshark

    result = _resolve_source(source)
    row = _connection_row(result, flow_id, file)
    frames = _packets_of(result, row)["frame_number"].tolist()
    if not frames:
        return []
    path = capture_path(result, row["file"])
    display_filter = f"frame.number in {{{frame_ranges(frames)}}}"
    tshark_path = find_tshark().path

    def read() -> list[Any]:
        loop = asyncio.new_event_loop()
        capture = pyshark.FileCapture(str(path), display_filter=display_filter, tshark_path=tshark_path,
                                      eventloop=loop)
        try:
            capture.load_packets()
            return list(capture)
        finally:
            capture.close()
            loop.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(read).result()
