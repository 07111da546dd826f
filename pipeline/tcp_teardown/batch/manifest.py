"""The manifest: what happened to every capture of a dataset, so a re-run skips what is done.

`DATASET/manifest.jsonl` is an append-only log, one JSON record per line, written after
the capture's Parquet parts are in place and flushed to disk: the last record of a file
wins. A run killed mid-append leaves at most one torn last line, which is ignored (the
capture is then simply redone). At the end of a run the log is compacted (one line per
capture, written to a temp name and renamed) and `manifest.parquet` holds the same as a
table for pandas or DuckDB.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.json as pa_json

from tcp_teardown.output import write_parquet, write_text

log = logging.getLogger(__name__)

LOG_NAME = "manifest.jsonl"
TABLE_NAME = "manifest.parquet"


class Status:
    DONE = "done"
    FAILED = "failed"


@dataclass
class Part:
    """One Parquet part file of the dataset (path relative to the dataset root)."""

    path: str
    rows: int
    bytes: int


@dataclass
class Record:
    """The manifest entry of one capture."""

    file: str  # the dataset name, the `file` column of its rows
    path: str  # where it was read from, this time
    size: int
    mtime_ns: int
    sha256: str | None
    status: str
    error: str | None = None
    exit_code: int | None = None
    engine: str | None = None
    packets: int = 0
    connections: int = 0
    key_frames: int = 0
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    day: str | None = None  # the partition its rows went to
    parts: list[Part] = field(default_factory=list)
    rotation_set: str | None = None
    set_signature: str | None = None  # identity of the whole set it was stitched with
    chunks: int = 1  # pieces the capture was read in
    params: dict[str, float] = field(default_factory=dict)
    version: str = ""
    started: str = ""
    finished: str = ""
    seconds: float = 0.0  # wall time of its unit
    task_seconds: float = 0.0  # worker time spent on it

    @classmethod
    def from_json(cls, data: dict) -> Record:
        data = dict(data)
        parts = [Part(**p) for p in data.get("parts", [])]
        if not all(is_part_path(p.path) for p in parts):
            # A manifest names files batch may delete or read: one that points outside the
            # dataset's own part folders is foreign or tampered with. Refuse the record.
            raise ValueError(f"part path outside the dataset in the record of {data.get('file')!r}")
        data["parts"] = parts
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


PART_FOLDERS = ("connections", "frames", "filters")


def is_part_path(path: str) -> bool:
    """A relative path inside one of the dataset's part folders, with no way out of it."""
    pure = PurePosixPath(path)
    return (not pure.is_absolute() and "\\" not in path and len(pure.parts) >= 2
            and pure.parts[0] in PART_FOLDERS and all(part not in ("..", ".", "") for part in pure.parts))


class Manifest:
    """The latest record of every capture, backed by the append-only log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / LOG_NAME
        self.records: dict[str, Record] = {}
        self.torn_lines = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        with self.path.open("r", encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = Record.from_json(json.loads(line))
                except (ValueError, TypeError) as exc:
                    # A torn line from a killed run: that capture has no valid record, it is redone.
                    self.torn_lines += 1
                    log.warning("%s: ignoring an unreadable manifest line (%s)", self.path, exc)
                    continue
                self.records[record.file] = record

    def get(self, name: str) -> Record | None:
        return self.records.get(name)

    def append(self, records: list[Record]) -> None:
        """Record captures as finished: appended, flushed and synced before returning."""
        if not records:
            return
        text = "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in records)
        # One write call per unit: a set's members become done together or not at all
        # (a torn line invalidates only what it holds, and the reader drops it).
        with self.path.open("a", encoding="utf-8") as fh:
            if fh.tell() > 0 and not self._ends_with_newline():
                fh.write("\n")  # a torn last line must not swallow the next record
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        for record in records:
            self.records[record.file] = record

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def done_parts(self) -> set[str]:
        """Every part file the dataset should hold (those of done captures)."""
        return {p.path for r in self.records.values() if r.status == Status.DONE for p in r.parts}

    def compact(self) -> None:
        """Rewrite the log with one line per capture, and the Parquet copy of it."""
        ordered = [self.records[k] for k in sorted(self.records)]
        write_text("".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in ordered), self.path)
        write_parquet(self.table(), self.root / TABLE_NAME)

    def table(self) -> pa.Table:
        lines = []
        for r in sorted(self.records.values(), key=lambda r: r.file):
            row = asdict(r)
            row["parts"] = [p["path"] for p in row["parts"]]
            row["params"] = json.dumps(row["params"], sort_keys=True)
            lines.append(json.dumps(row) + "\n")
        if not lines:
            return MANIFEST_SCHEMA.empty_table()
        # Arrow's JSON reader, not Table.from_pylist: converting Python objects makes
        # pyarrow import pandas (0.2 s). One block holds every line.
        text = "".join(lines).encode()
        table = pa_json.read_json(
            io.BytesIO(text),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=max(len(text), 1 << 20)),
            parse_options=pa_json.ParseOptions(explicit_schema=MANIFEST_SCHEMA, unexpected_field_behavior="ignore"),
        )
        return table.select(MANIFEST_SCHEMA.names)


MANIFEST_SCHEMA = pa.schema([
    pa.field("file", pa.string()), pa.field("path", pa.string()), pa.field("size", pa.int64()),
    pa.field("mtime_ns", pa.int64()), pa.field("sha256", pa.string()), pa.field("status", pa.string()),
    pa.field("error", pa.string()), pa.field("exit_code", pa.int64()), pa.field("engine", pa.string()),
    pa.field("packets", pa.int64()), pa.field("connections", pa.int64()), pa.field("key_frames", pa.int64()),
    pa.field("truncated", pa.bool_()), pa.field("warnings", pa.list_(pa.string())), pa.field("day", pa.string()),
    pa.field("parts", pa.list_(pa.string())), pa.field("rotation_set", pa.string()),
    pa.field("set_signature", pa.string()), pa.field("chunks", pa.int64()), pa.field("params", pa.string()),
    pa.field("version", pa.string()), pa.field("started", pa.string()), pa.field("finished", pa.string()),
    pa.field("seconds", pa.float64()), pa.field("task_seconds", pa.float64()),
])
