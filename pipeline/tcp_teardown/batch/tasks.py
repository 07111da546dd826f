"""The functions a worker runs (in a local process pool or on a Dask cluster).

Each takes one picklable spec and returns one picklable outcome; `guarded` turns any
error into a `TaskError` value, so the driver sees a failed capture, not a dead run.
Tasks write only under the dataset folder (parts: atomically; scratch: private names).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tcp_teardown import filters
from tcp_teardown.batch import chunks, dataset, stitch
from tcp_teardown.batch.manifest import Part
from tcp_teardown.errors import ExitCode, TeardownError
from tcp_teardown.facts import Params


@dataclass
class TaskError:
    """A task that failed: the one-line message and exit code the manifest records."""

    message: str
    code: int
    detail: str = ""  # traceback of an unexpected error (a bug), for the log


def release_memory() -> None:
    """Hand the memory a finished task freed back to the system.

    Workers live for many tasks. Without this, Arrow's allocator and the C heap keep
    what each task freed, and a worker's footprint creeps towards the sum of its tasks
    instead of staying at the largest one.

    What survives the collection is live: it is frozen (left out of later collections),
    so each task's collection walks only the objects made since, not every module's."""
    gc.collect()
    gc.freeze()
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def guarded(fn: Callable[[Any], Any], spec: Any) -> Any:
    """Run a task; errors become a TaskError value."""
    try:
        return fn(spec)
    except TeardownError as error:
        return TaskError(error.message, int(error.code))
    except MemoryError:
        return TaskError("out of memory (try a smaller --chunk-packets)", int(ExitCode.FAILED))
    except Exception as exc:  # a bug: keep the run going, report it on that capture
        return TaskError(f"internal error: {type(exc).__name__}: {exc}", int(ExitCode.FAILED),
                         traceback.format_exc())


# --- one capture, whole -------------------------------------------------------------


@dataclass(frozen=True)
class FileSpec:
    path: str
    name: str
    root: str
    params: Params
    engine: str
    tshark: str | None


@dataclass
class FileOutcome:
    name: str
    size: int
    sha256: str
    engine: str
    packets: int
    connections: int
    key_frames: int
    truncated: bool
    warnings: list[str]
    day: str | None
    parts: list[Part] = field(default_factory=list)
    seconds: float = 0.0


def analyze_capture(spec: FileSpec) -> FileOutcome:
    """Analyze one capture file and write its parts and filters."""
    from tcp_teardown.api import analyze_file
    from tcp_teardown.tshark import find_tshark

    started = time.monotonic()
    # auto finds tshark itself if the native reader declines (unless a path was given).
    tshark = find_tshark(spec.tshark) if spec.engine == "tshark" or spec.tshark else None
    conns, frames, report = analyze_file(Path(spec.path), spec.params, spec.engine, tshark, name=spec.name)
    root = Path(spec.root)
    parts: list[Part] = []
    day = None
    if conns.num_rows:
        day = dataset.day_of(pc.min(conns.column("first_ts")).as_py())
        parts.append(dataset.write_part(root, dataset.part_path("connections", day, spec.name), conns))
        if frames.num_rows:
            parts.append(dataset.write_part(root, dataset.part_path("frames", day, spec.name), frames))
        text = filters.render_text(filters.label_filters(conns, frames))
        parts.append(dataset.write_text_part(root, dataset.filters_path(spec.name), text))
    return FileOutcome(spec.name, report.size, report.sha256, report.engine, report.packets,
                       conns.num_rows, frames.num_rows, report.truncated, report.warnings, day, parts,
                       time.monotonic() - started)


# --- large captures and rotation sets: pieces, buckets, finish ----------------------


@dataclass(frozen=True)
class SplitSpec:
    member: int
    path: str
    scratch: str
    chunk_packets: int
    buckets: int
    engine: str
    tshark: str | None


@dataclass
class Digested:
    """A task's result plus the size and SHA-256 of the capture it read."""

    result: Any
    size: int
    sha256: str


def split_capture(spec: SplitSpec) -> Digested:
    from tcp_teardown.digest import BackgroundDigest

    with BackgroundDigest(Path(spec.path)) as digest:
        outcome = chunks.split_member(spec.member, Path(spec.path), Path(spec.scratch), spec.chunk_packets,
                                      spec.buckets, spec.engine, spec.tshark)
        size, sha = digest.result()
    return Digested(outcome, size, sha)


@dataclass(frozen=True)
class PieceSpec:
    source: chunks.PieceSource
    target: str
    buckets: int
    tshark: str | None
    digest: bool  # the piece is the whole capture: hash it too


def read_piece(spec: PieceSpec) -> Digested | chunks.PieceOutcome:
    from tcp_teardown.digest import BackgroundDigest

    if not spec.digest:
        return chunks.read_piece(spec.source, Path(spec.target), spec.buckets, spec.tshark)
    with BackgroundDigest(Path(spec.source.path)) as digest:
        outcome = chunks.read_piece(spec.source, Path(spec.target), spec.buckets, spec.tshark)
        size, sha = digest.result()
    return Digested(outcome, size, sha)


def analyze_bucket(spec: stitch.BucketSpec) -> stitch.BucketOutcome:
    return stitch.analyze_bucket(spec)


def finish_unit(spec: stitch.FinishSpec) -> list[stitch.MemberRows]:
    return stitch.finish(spec)
