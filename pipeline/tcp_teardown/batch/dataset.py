"""The layout of a batch dataset, and writing into it so a crash never leaves a wrong row.

    DATASET/
      connections/day=2024-01-15/part-<capture id>[-<bucket>].parquet
      frames/day=2024-01-15/part-<capture id>[-<bucket>].parquet
      endpoints/part-0.parquet      aggregated over the whole dataset
      hosts/part-0.parquet          aggregated over the whole dataset
      filters/<capture id>.txt      Wireshark display filters per label, for that capture
      manifest.jsonl, manifest.parquet

(`-<bucket>`: a part per bucket, only for rotation sets too large to keep a part of each
capture open; see stitch.finish.)

`day` (UTC date of the capture's first TCP packet) is a hive partition: pandas, pyarrow,
DuckDB and Dask read `DATASET/connections` as one table with a `day` column.

Parts are written to a hidden temp name in their folder, synced, then renamed: a reader
or a killed run sees a whole part or none. Part names are a function of the capture's
name, so redoing a capture replaces its parts; a part that no done manifest record
names (its run died before the manifest was updated) is deleted by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tcp_teardown.arrays import strings
from tcp_teardown.batch.manifest import Manifest, Part, Record, Status
from tcp_teardown.errors import ExitCode, TeardownError
from tcp_teardown.output import parquet_options
from tcp_teardown.schema import CONNECTIONS, ENDPOINTS, FRAMES, HOSTS
from tcp_teardown.vocab import CLOSE_VALUES, OPEN_VALUES, TIME_WAIT_VALUES

log = logging.getLogger(__name__)

KINDS = {"connections": CONNECTIONS, "frames": FRAMES}
AGGREGATES = {"endpoints": ENDPOINTS, "hosts": HOSTS}
PARTITION = "day"
SCRATCH = ".scratch"
LOCK = ".lock"
INPUTS_KEY = b"tcp_teardown.inputs"  # what an aggregate table was computed from
# Label columns are written with the whole vocabulary as their dictionary: every part
# then has the same categories (a part with no TIME_WAIT at all would otherwise carry
# an empty dictionary, which Dask cannot concatenate with the others).
VOCABULARIES = {"open": OPEN_VALUES, "close": CLOSE_VALUES, "time_wait_side": TIME_WAIT_VALUES}
# Rows a part holds before writing them as one row group (see PartWriter).
ROW_GROUP_ROWS = 1 << 18


def capture_id(name: str) -> str:
    """A file-name-safe id of a capture: readable stem plus a hash of the full name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.rsplit("/", 1)[-1])[:60]
    return f"{stem}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"


def day_of(first_ts: float | None) -> str | None:
    if first_ts is None:
        return None
    return datetime.fromtimestamp(first_ts, UTC).strftime("%Y-%m-%d")


def part_path(kind: str, day: str, name: str, bucket: int | None = None) -> str:
    """The part file of one capture (and bucket), relative to the dataset root."""
    suffix = "" if bucket is None else f"-{bucket:04d}"
    return f"{kind}/{PARTITION}={day}/part-{capture_id(name)}{suffix}.parquet"


def filters_path(name: str) -> str:
    return f"filters/{capture_id(name)}.txt"


def _durable_replace(tmp: Path, target: Path) -> None:
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def conform_labels(table: pa.Table) -> pa.Table:
    """Dictionary label columns re-encoded against the fixed vocabulary (values unchanged).
    Columns whose every chunk already has the vocabulary as its dictionary (what the
    analysis writes) are kept as they are."""
    for name, vocabulary in VOCABULARIES.items():
        index = table.schema.get_field_index(name)
        if index < 0 or not pa.types.is_dictionary(table.schema.field(name).type):
            continue
        column = table.column(name)
        expected = _vocabulary_array(vocabulary)
        if column.type.index_type == pa.int8() and all(chunk.dictionary.equals(expected) for chunk in column.chunks):
            continue
        values = column.cast(pa.string()).combine_chunks()
        extra = sorted(set(pc.unique(values).drop_null().to_pylist()) - set(vocabulary))
        dictionary = strings([*vocabulary, *extra])  # a label added later is kept
        codes = pc.index_in(values, value_set=dictionary).cast(pa.int8())
        encoded = pa.DictionaryArray.from_arrays(codes, dictionary)
        table = table.set_column(index, table.schema.field(name), encoded)
    return table


@cache
def _vocabulary_array(vocabulary: tuple[str, ...]) -> pa.StringArray:
    return strings(vocabulary)


def write_part(root: Path, relative: str, table: pa.Table) -> Part:
    """Write one part atomically (temp name, fsync, rename)."""
    writer = PartWriter(root, relative)
    try:
        writer.write(table)
        return writer.commit()
    finally:
        writer.abandon()


class PartWriter:
    """One part, written a row group at a time (a stitched capture's rows come bucket by
    bucket) under a temp name; `commit` syncs it and renames it into place, `abandon`
    (after a failure) removes the temp file. Label columns are conformed (conform_labels).

    Rows are held until `flush` (or ROW_GROUP_ROWS of them): a row group costs about a
    millisecond whatever its size, and a reader prefers few large ones to many small."""

    def __init__(self, root: Path, relative: str) -> None:
        self.relative = relative
        self.target = root / relative
        self.rows = 0
        self.pending_rows = 0
        self._pending: list[pa.Table] = []
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        self._pending.append(conform_labels(table))
        self.pending_rows += table.num_rows
        if self.pending_rows >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        """Write the rows held as one row group."""
        if not self._pending:
            return
        table = self._pending[0] if len(self._pending) == 1 else pa.concat_tables(self._pending)
        with self._errors():
            if self._writer is None:
                self.target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp_name = tempfile.mkstemp(dir=self.target.parent, prefix=f".{self.target.name}.",
                                                suffix=".tmp")
                os.close(fd)
                self._tmp = Path(tmp_name)
                self._writer = pq.ParquetWriter(self._tmp, table.schema, **parquet_options(table.schema))
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.rows += table.num_rows
        self._pending, self.pending_rows = [], 0

    def commit(self) -> Part:
        self.flush()
        assert self._writer is not None and self._tmp is not None, "nothing written"
        with self._errors():
            self._writer.close()
            self._writer = None
            _durable_replace(self._tmp, self.target)
            self._tmp = None
            return Part(self.relative, self.rows, self.target.stat().st_size)

    def abandon(self) -> None:
        self._pending, self.pending_rows = [], 0
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self.abandon()
            raise TeardownError(f"{self.target}: cannot write: {exc.strerror or exc}",
                                ExitCode.OUTPUT_UNWRITABLE) from exc


def write_text_part(root: Path, relative: str, text: str) -> Part:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    _durable_replace(Path(tmp_name), target)
    return Part(relative, text.count("\n"), target.stat().st_size)


def parts_intact(root: Path, record: Record) -> bool:
    """A done record's parts are all there, with the size they were written with."""
    for part in record.parts:
        try:
            if (root / part.path).stat().st_size != part.bytes:
                return False
        except OSError:
            return False
    return True


def sweep(root: Path, manifest: Manifest) -> int:
    """Delete temp files, scratch, and parts no done record names. Returns files deleted."""
    keep = manifest.done_parts()
    deleted = 0
    shutil.rmtree(root / SCRATCH, ignore_errors=True)
    for top in (*KINDS, *AGGREGATES, "filters"):
        folder = root / top
        if not folder.is_dir():
            continue
        for dirpath, _, filenames in os.walk(folder):
            for name in filenames:
                path = Path(dirpath) / name
                relative = path.relative_to(root).as_posix()
                stale_tmp = name.startswith(".") and name.endswith(".tmp")
                orphan = top not in AGGREGATES and not name.startswith((".", "_")) and relative not in keep
                if stale_tmp or orphan:
                    path.unlink(missing_ok=True)
                    deleted += 1
    for name in os.listdir(root):
        if name.startswith(".") and name.endswith(".tmp"):
            (root / name).unlink(missing_ok=True)
            deleted += 1
    return deleted


def write_common_metadata(root: Path) -> None:
    """`_common_metadata` per table: the schema, so readers agree even before the first row."""
    for kind, schema in KINDS.items():
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "_common_metadata"
        if not target.exists():
            fd, tmp_name = tempfile.mkstemp(dir=folder, prefix="._common_metadata.", suffix=".tmp")
            os.close(fd)
            pq.write_metadata(schema, tmp_name)
            _durable_replace(Path(tmp_name), target)


def inputs_digest(manifest: Manifest) -> str:
    """Identity of the dataset's rows: every done capture, its content, parts, parameters and run."""
    items = sorted((r.file, r.sha256 or "", [p.path for p in r.parts], r.finished, sorted(r.params.items()))
                   for r in manifest.records.values() if r.status == Status.DONE)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def aggregates_current(root: Path, digest: str) -> bool:
    for kind in AGGREGATES:
        path = root / kind / "part-0.parquet"
        try:
            meta = pq.read_schema(path).metadata or {}
        except (OSError, pa.ArrowInvalid):
            return False
        if meta.get(INPUTS_KEY) != digest.encode():
            return False
    return True


def read_connections(root: Path, columns: list[str], parts: set[str]) -> pa.Table:
    """Some columns of the connections in the given parts (those of done captures), part by
    part in the schema's types (pyarrow.dataset would do the same, but importing it costs
    0.4 s: it imports pandas)."""
    schema = pa.schema([CONNECTIONS.field(name) for name in columns])
    files = sorted(root / p for p in parts if p.startswith("connections/"))
    if not files:
        return schema.empty_table()
    return pa.concat_tables([_read_part(path, schema) for path in files])


def _read_part(path: Path, schema: pa.Schema) -> pa.Table:
    with pq.ParquetFile(path) as part:
        return part.read(columns=schema.names).cast(schema)


def write_aggregates(root: Path, manifest: Manifest, msl: float) -> dict[str, int]:
    """Recompute endpoints and hosts from every connection of the dataset; replace atomically.

    Memory grows with the dataset's connections (about 0.5 KB each: their nine Arrow
    columns and the aggregation's integer codes), not with its packets. One pass serves
    both tables, on Arrow columns (no pandas).
    """
    from tcp_teardown import endpoints

    digest = inputs_digest(manifest)
    # test_batch compares the dataset's aggregates with a single run's over all columns.
    conns = read_connections(root, endpoints.COLUMNS, manifest.done_parts())
    endpoint_rows, host_rows = endpoints.aggregate_tables(conns, msl)
    tables = {"endpoints": endpoint_rows, "hosts": host_rows}
    rows = {}
    for kind, table in tables.items():
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        stamped = table.replace_schema_metadata({INPUTS_KEY: digest.encode()})
        write_part(root, f"{kind}/part-0.parquet", stamped)
        rows[kind] = table.num_rows
    return rows
