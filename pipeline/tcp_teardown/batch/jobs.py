"""The work of one unit as tasks: a lone capture is one task; a large capture or a
rotation set is split -> read pieces -> analyze buckets -> finish (chunks.py, stitch.py).

A job hands out tasks and takes back their outcomes; the runner decides where and
when they run. When a job is finished it yields the manifest records of its captures.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tcp_teardown import __version__
from tcp_teardown.batch import chunks, dataset, stitch, tasks
from tcp_teardown.batch.discover import Capture, Unit
from tcp_teardown.batch.manifest import Part, Record, Status
from tcp_teardown.errors import ExitCode
from tcp_teardown.facts import Params

# Piece files hold several buckets per expected task, so buckets can be grouped into
# tasks of about `chunk_packets` once the real packet counts are known.
BUCKETS_PER_TASK = 4
MAX_BUCKETS = 1024


@dataclass(frozen=True)
class Settings:
    """What every job of a run shares."""

    root: Path
    params: Params
    engine: str
    tshark: str | None
    chunk_packets: int

    @property
    def params_record(self) -> dict[str, float]:
        return {"idle_threshold": self.params.idle_threshold, "msl": self.params.msl}


@dataclass
class Task:
    fn: Callable[[Any], Any]
    spec: Any
    kind: str
    member: int | None = None
    attempts: int = 0


def set_signature(unit: Unit) -> str | None:
    """Identity of a rotation set's membership (None for a lone capture)."""
    if unit.rotation_set is None:
        return None
    return hashlib.sha1("\n".join(m.name for m in unit.members).encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class MemberState:
    """What a job learned about one of its captures."""

    capture: Capture
    size: int | None = None
    sha256: str | None = None
    engine: str | None = None
    packets: int = 0
    connections: int = 0
    key_frames: int = 0
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    day: str | None = None
    first_ts: float | None = None  # of its first TCP packet: decides `day`
    parts: list[Part] = field(default_factory=list)
    chunks: int = 0
    error: tasks.TaskError | None = None
    task_seconds: float = 0.0


class Job:
    """Base: the unit, its timing and how its records are made."""

    def __init__(self, unit: Unit, settings: Settings) -> None:
        self.unit = unit
        self.settings = settings
        self.members = [MemberState(m) for m in unit.members]
        self.finished = False
        self.started_at = ""
        self.started = 0.0

    def begin(self) -> list[Task]:
        """The unit's first tasks (called when it is its turn: timings start here)."""
        self.started_at, self.started = _now(), time.monotonic()
        return self.start()

    def start(self) -> list[Task]:
        raise NotImplementedError

    def done(self, task: Task, result: Any) -> list[Task]:
        raise NotImplementedError

    def records(self) -> list[Record]:
        finished_at, seconds = _now(), time.monotonic() - self.started
        signature = set_signature(self.unit)
        out = []
        for m in self.members:
            ok = m.error is None
            out.append(Record(
                file=m.capture.name, path=str(m.capture.path), size=m.size if m.size is not None else m.capture.size,
                mtime_ns=m.capture.mtime_ns, sha256=m.sha256, status=Status.DONE if ok else Status.FAILED,
                error=None if ok else m.error.message, exit_code=None if ok else m.error.code, engine=m.engine,
                packets=m.packets if ok else 0, connections=m.connections if ok else 0,
                key_frames=m.key_frames if ok else 0, truncated=m.truncated, warnings=m.warnings,
                day=m.day if ok else None, parts=m.parts if ok else [], rotation_set=self.unit.rotation_set,
                set_signature=signature, chunks=max(m.chunks, 1), params=self.settings.params_record,
                version=__version__, started=self.started_at, finished=finished_at, seconds=round(seconds, 3),
                task_seconds=round(m.task_seconds, 3),
            ))
        return out

    def cleanup(self) -> None:
        """Remove this job's scratch files."""


class FileJob(Job):
    """One capture, read and analyzed whole by one task."""

    def start(self) -> list[Task]:
        capture = self.unit.members[0]
        s = self.settings
        spec = tasks.FileSpec(str(capture.path), capture.name, str(s.root), s.params, s.engine, s.tshark)
        return [Task(tasks.analyze_capture, spec, "file", 0)]

    def done(self, task: Task, result: Any) -> list[Task]:
        m = self.members[0]
        self.finished = True
        if isinstance(result, tasks.TaskError):
            m.error = result
            return []
        r: tasks.FileOutcome = result
        m.size, m.sha256, m.engine = r.size, r.sha256, r.engine
        m.packets, m.connections, m.key_frames = r.packets, r.connections, r.key_frames
        m.truncated, m.warnings, m.day, m.parts = r.truncated, list(r.warnings), r.day, list(r.parts)
        m.chunks, m.task_seconds = 1, r.seconds
        return []


class StitchJob(Job):
    """A large capture read in pieces, or a rotation set stitched into one capture."""

    def __init__(self, unit: Unit, settings: Settings) -> None:
        super().__init__(unit, settings)
        self.scratch = settings.root / dataset.SCRATCH / dataset.capture_id(unit.label)
        per_task = settings.chunk_packets if settings.chunk_packets > 0 else None
        estimates = [chunks.estimated_packets(m.path, m.size) for m in unit.members]
        self.split = [per_task is not None and e > per_task for e in estimates]
        self.buckets = 1 if per_task is None else int(
            min(max(math.ceil(sum(estimates) / per_task) * BUCKETS_PER_TASK, 1), MAX_BUCKETS))
        if per_task is not None and sum(estimates) <= per_task:
            self.buckets = 1
        self.pieces: list[chunks.PieceOutcome] = []
        self.renumber: set[int] = set()
        self.reading = 0
        self.bucket_results: dict[int, stitch.BucketOutcome] = {}
        self.bucket_tasks = 0
        self.shared_seconds = 0.0

    def start(self) -> list[Task]:
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        s = self.settings
        out = []
        for index, capture in enumerate(self.unit.members):
            if self.split[index]:
                spec = tasks.SplitSpec(index, str(capture.path), str(self.scratch), s.chunk_packets,
                                       self.buckets, s.engine, s.tshark)
                out.append(Task(tasks.split_capture, spec, "split", index))
            else:
                source = chunks.PieceSource(index, str(capture.path), 0, 0, s.engine, False)
                out.append(self._piece(source, digest=True))
        self.reading = len(out)
        return out

    def _piece(self, source: chunks.PieceSource, digest: bool = False) -> Task:
        target = self.scratch / f"piece-{source.member:05d}-{source.chunk:06d}.arrow"
        spec = tasks.PieceSpec(source, str(target), self.buckets, self.settings.tshark, digest)
        return Task(tasks.read_piece, spec, "piece", source.member)

    def done(self, task: Task, result: Any) -> list[Task]:
        if task.kind in ("split", "piece"):
            self.reading -= 1
            new = self._read_done(task, result)
            self.reading += len(new)
            if self.reading == 0:
                new += self._analyze()
            return new
        if isinstance(result, tasks.TaskError):
            self._fail_all(result)
            self.finished = True
            return []
        if task.kind == "bucket":
            self.bucket_results[result.bucket] = result
            self.shared_seconds += result.seconds
            if len(self.bucket_results) == self.bucket_tasks:
                return [self._finish()]
            return []
        # finish
        for m, rows in zip(self.members, result, strict=True):
            if m.error is None:
                m.connections, m.key_frames, m.parts = rows.connections, rows.key_frames, list(rows.parts or [])
        self._share_seconds()
        self.finished = True
        return []

    def _read_done(self, task: Task, result: Any) -> list[Task]:
        m = self.members[task.member]
        if isinstance(result, tasks.TaskError):
            m.error = m.error or result
            return []
        if isinstance(result, tasks.Digested):
            m.size, m.sha256 = result.size, result.sha256
            result = result.result
        if isinstance(result, chunks.SplitOutcome):
            m.task_seconds += result.seconds
            m.truncated |= result.truncated
            m.warnings += result.warnings
            if result.renumber:
                self.renumber.add(result.member)
            for piece in result.written:
                self._add_piece(m, piece)
            return [self._piece(source) for source in result.to_read]
        self._add_piece(m, result)
        return []

    def _add_piece(self, m: MemberState, piece: chunks.PieceOutcome) -> None:
        self.pieces.append(piece)
        m.packets += piece.packets
        m.chunks += 1
        m.engine = piece.engine
        m.truncated |= piece.truncated
        m.warnings += piece.warnings
        m.task_seconds += piece.seconds
        if piece.min_ts is not None:
            m.first_ts = piece.min_ts if m.first_ts is None else min(m.first_ts, piece.min_ts)
            m.day = dataset.day_of(m.first_ts)

    def _analyze(self) -> list[Task]:
        """All pieces are in: group buckets into tasks of about chunk_packets rows."""
        good = {i for i, m in enumerate(self.members) if m.error is None}
        self.pieces = sorted((p for p in self.pieces if p.member in good), key=lambda p: (p.member, p.chunk))
        if not self.pieces:
            self.finished = True
            return []
        rows = np.sum([p.bucket_rows for p in self.pieces], axis=0)
        limit = self.settings.chunk_packets if self.settings.chunk_packets > 0 else int(rows.sum()) + 1
        groups: list[list[int]] = []
        size = 0
        for bucket, count in enumerate(rows.tolist()):
            if not groups or (size + count > limit and size > 0):
                groups.append([])
                size = 0
            groups[-1].append(bucket)
            size += count
        paths = tuple(p.path for p in self.pieces)
        renumber = frozenset(self.renumber & good)
        self.bucket_tasks = len(groups)
        return [Task(tasks.analyze_bucket,
                     stitch.BucketSpec(i, tuple(g), paths, renumber, self.settings.params, str(self.scratch)),
                     "bucket") for i, g in enumerate(groups)]

    def _finish(self) -> Task:
        results = [self.bucket_results[i] for i in range(self.bucket_tasks)]
        openers = np.unique(np.concatenate([r.openers for r in results])) if results else np.zeros(0, np.int64)
        members = tuple(stitch.MemberInfo(m.capture.name, m.day) for m in self.members)
        spec = stitch.FinishSpec(str(self.settings.root), members,
                                 tuple((r.connections_path, r.frames_path) for r in results), openers)
        return Task(tasks.finish_unit, spec, "finish")

    def _fail_all(self, error: tasks.TaskError) -> None:
        for m in self.members:
            if m.error is None:
                m.error = error

    def _share_seconds(self) -> None:
        good = [m for m in self.members if m.error is None]
        for m in good:
            m.task_seconds += self.shared_seconds / len(good)

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def make_job(unit: Unit, settings: Settings) -> Job:
    """A lone capture small enough to read whole is one task; anything else is stitched."""
    if unit.rotation_set is None and len(unit.members) == 1:
        capture = unit.members[0]
        limit = settings.chunk_packets
        if limit <= 0 or chunks.estimated_packets(capture.path, capture.size) <= limit:
            return FileJob(unit, settings)
    return StitchJob(unit, settings)


def worker_died(task: Task) -> tasks.TaskError:
    return tasks.TaskError(f"the worker process died running this {task.kind} task (killed, or out of memory; "
                           "try a smaller --chunk-packets)", int(ExitCode.FAILED))
