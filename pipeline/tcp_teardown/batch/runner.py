"""Run a batch: discover, skip what the manifest says is done, run the rest, aggregate.

The driver (this process) never reads a capture: it hands tasks to a backend (a local
process pool on all cores, or a Dask cluster, dask_runner.py) and commits each unit
when its last task returns: delete the parts the capture had before (when they differ),
then append its manifest records. Tasks of units already started go first, so a large
capture's pieces do not wait behind the rest of the archive and its scratch files live
briefly. Endpoints and hosts are recomputed from every connection of the dataset at the
end, and only when the set of rows changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import heapq
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

from tcp_teardown.batch import dataset, jobs
from tcp_teardown.batch.discover import Unit, discover, group_units
from tcp_teardown.batch.manifest import Manifest, Record, Status, is_part_path
from tcp_teardown.batch.progress import Progress
from tcp_teardown.batch.tasks import TaskError
from tcp_teardown.digest import file_digest
from tcp_teardown.errors import ExitCode, TeardownError
from tcp_teardown.facts import Params
from tcp_teardown.output import prepare_out_dir

log = logging.getLogger(__name__)

DEFAULT_CHUNK_PACKETS = 500_000  # ~0.3 GB of tshark and ~0.2 GB of tables per running task
MAX_ATTEMPTS = 3  # a task whose worker process died is retried this often in all
POLL_S = 0.5  # how often the progress line is redrawn while tasks run


@dataclass(frozen=True)
class Options:
    """Everything `tcp-teardown batch` takes besides the inputs."""

    out: Path
    params: Params = field(default_factory=Params)
    engine: str = "auto"
    tshark: str | None = None
    jobs: int | None = None  # None: every core
    force: bool = False
    stitch: bool = True
    chunk_packets: int = DEFAULT_CHUNK_PACKETS
    dask: str | None = None  # a scheduler address, or "local" for a LocalCluster
    root: Path | None = None  # name captures relative to this folder (default: absolute paths)
    progress: bool | None = None  # None: when stderr is a terminal


@dataclass
class Summary:
    """What a batch run did."""

    dataset: str
    files: int = 0
    units: int = 0
    skipped: int = 0
    done: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    packets: int = 0
    connections: int = 0
    key_frames: int = 0
    pieces: int = 0
    rotation_sets: int = 0
    seconds: float = 0.0
    workers: int = 0
    backend: str = "processes"
    aggregates: dict[str, int] | None = None

    @property
    def exit_code(self) -> int:
        """0 when every capture is done; else the code of the first failure (4: not a capture ...)."""
        if self.failed:
            return int(self.failed[0]["exit_code"] or ExitCode.FAILED)
        if self.truncated:
            return int(ExitCode.TRUNCATED)
        return int(ExitCode.OK)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def render(self) -> str:
        lines = [f"{self.dataset}: {self.files} captures ({self.units} units, {self.rotation_sets} rotation sets): "
                 f"{self.done} analyzed, {self.skipped} already done, {len(self.failed)} failed",
                 f"{self.packets} TCP packets, {self.connections} connections, {self.key_frames} key frames "
                 f"in {self.seconds:.1f} s on {self.workers} workers ({self.backend})"]
        lines += [f"failed: {f['file']}: {f['error']}" for f in self.failed]
        lines += [f"truncated: {name}" for name in self.truncated]
        return "\n".join(lines)


class Backend(Protocol):
    """Where tasks run: a local process pool or a Dask cluster."""

    name: str
    slots: int

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def wait(self, futures: list[Any], timeout: float) -> list[Any]: ...

    def result(self, future: Any) -> Any: ...

    def close(self, abort: bool = False) -> None: ...


def _worker_init() -> None:
    """Pool workers: die with the driver (kill -9 of the driver leaves no orphan writing
    into the dataset), and leave Ctrl-C to the driver, which stops the pool itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class PoolBackend:
    """A process pool on this machine (spawned workers: no state shared with the driver)."""

    name = "processes"

    def __init__(self, jobs: int) -> None:
        self.slots = jobs
        self.executor = self._new()

    def _new(self) -> ProcessPoolExecutor:
        with signals_deferred():
            return ProcessPoolExecutor(self.slots, mp_context=get_context("spawn"), initializer=_worker_init)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self.executor.submit(fn, *args)

    def wait(self, futures: list[Any], timeout: float) -> list[Any]:
        done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, future: Any) -> Any:
        return future.result()

    def restart(self) -> None:
        """After a worker died the pool is broken: replace it."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self._new()

    def close(self, abort: bool = False) -> None:
        # Not interruptible: a Ctrl-C here would leave the pool's queues behind, and
        # multiprocessing's resource tracker would then print "leaked semaphore" warnings
        # after our one line on stderr. The signal takes effect as soon as this is done.
        with signals_deferred():
            if abort:
                # Ctrl-C: do not wait for running captures; what they wrote is swept next run.
                for process in list(getattr(self.executor, "_processes", {}).values()):
                    with contextlib.suppress(OSError):
                        process.kill()
            # Quick once the workers are dead; then the queues are freed (semaphores unlinked).
            self.executor.shutdown(wait=True, cancel_futures=True)
            del self.executor
            gc.collect()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block has ended, then take effect."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """One batch run per dataset at a time."""
    with (root / dataset.LOCK).open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TeardownError(f"{root}: another batch run is writing this dataset",
                                ExitCode.OUTPUT_UNWRITABLE) from None
        yield


def needs_work(unit: Unit, manifest: Manifest, root: Path, params_record: dict[str, float],
               force: bool, touched: list[Record]) -> bool:
    """True unless every capture of the unit is done, unchanged, with intact parts.

    Size and modification time are the quick test; when they differ the content hash
    decides (a file copied or touched with the same bytes is not redone).
    """
    if force:
        return True
    signature = jobs.set_signature(unit)
    refreshed = []
    for capture in unit.members:
        record = manifest.get(capture.name)
        if record is None or record.status != Status.DONE or record.params != params_record:
            return True
        if record.set_signature != signature or not dataset.parts_intact(root, record):
            return True
        if (record.size, record.mtime_ns) != (capture.size, capture.mtime_ns):
            _, sha = file_digest(capture.path)
            if sha != record.sha256:
                return True
            refreshed.append(Record(**{**record.__dict__, "mtime_ns": capture.mtime_ns, "path": str(capture.path)}))
    touched += refreshed
    return False


def make_backend(options: Options) -> Backend:
    jobs_count = options.jobs or os.cpu_count() or 1
    if options.dask:
        from tcp_teardown.batch.dask_runner import DaskBackend

        return DaskBackend(options.dask, jobs_count)
    return PoolBackend(jobs_count)


def run_batch(inputs: list[str], options: Options, backend: Backend | None = None) -> Summary:
    """Analyze every capture under `inputs` into the dataset `options.out`."""
    started = time.monotonic()
    root = prepare_out_dir(options.out)
    summary = Summary(dataset=str(root))
    with locked(root):
        manifest = Manifest(root)
        removed = dataset.sweep(root, manifest)
        if removed:
            log.info("%s: removed %d leftover files of an interrupted run", root, removed)
        dataset.write_common_metadata(root)
        units = group_units(discover(inputs, exclude=root, root=options.root), options.stitch)
        settings = jobs.Settings(root, options.params, options.engine, options.tshark, options.chunk_packets)
        touched: list[Record] = []
        todo = [u for u in units if needs_work(u, manifest, root, settings.params_record, options.force, touched)]
        manifest.append(touched)
        summary.files = sum(len(u.members) for u in units)
        summary.units = len(units)
        summary.rotation_sets = sum(1 for u in units if u.rotation_set)
        summary.skipped = summary.files - sum(len(u.members) for u in todo)
        if todo:
            if options.engine == "tshark" and options.dask in (None, "local"):
                from tcp_teardown.tshark import find_tshark

                find_tshark(options.tshark)  # fail once, now, rather than once per capture
            progress = Progress(sum(len(u.members) for u in todo), sum(u.size for u in todo), options.progress)
            owned = backend is None
            backend = backend or make_backend(options)
            summary.workers, summary.backend = backend.slots, backend.name
            try:
                _execute(todo, settings, backend, manifest, progress, summary)
            except BaseException:
                progress.close()
                if owned:
                    backend.close(abort=True)
                raise
            progress.close()
            if owned:
                backend.close()
        with contextlib.suppress(OSError):
            (root / dataset.SCRATCH).rmdir()  # empty unless a job failed to clean up
        if not dataset.aggregates_current(root, dataset.inputs_digest(manifest)):
            summary.aggregates = dataset.write_aggregates(root, manifest, options.params.msl)
        manifest.compact()
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _execute(todo: list[Unit], settings: jobs.Settings, backend: Backend, manifest: Manifest,
             progress: Progress, summary: Summary) -> None:
    """Run every job's tasks, at most a few more than the backend's slots in flight."""
    order = itertools.count()
    ready: list[tuple[int, int, int, jobs.Job, jobs.Task]] = []

    def push(job: jobs.Job, new: list[jobs.Task], first: bool) -> None:
        # Started units first (0), then new units largest first (longest work first).
        for task in new:
            heapq.heappush(ready, (0 if first else 1, -job.unit.size, next(order), job, task))

    for unit in todo:
        job = jobs.make_job(unit, settings)
        push(job, [jobs.Task(_start_marker, None, "start")], first=False)

    in_flight: dict[Any, tuple[jobs.Job, jobs.Task]] = {}
    limit = backend.slots + 2
    while ready or in_flight:
        while ready and len(in_flight) < limit:
            _, _, _, job, task = heapq.heappop(ready)
            if task.kind == "start":
                push(job, job.begin(), first=True)
                continue
            if job.finished:
                continue
            future = backend.submit(_run, task.fn, task.spec)
            in_flight[future] = (job, task)
        if not in_flight:
            continue
        for future in backend.wait(list(in_flight), POLL_S):
            job, task = in_flight.pop(future)
            try:
                result = backend.result(future)
            except BrokenProcessPool:
                _retry_all(backend, in_flight, ready, order, (job, task))
                break
            except Exception as exc:  # a task lost by the cluster (e.g. Dask's KilledWorker)
                result = TaskError(f"task lost: {type(exc).__name__}: {exc}", int(ExitCode.FAILED))
            _took(result, task, progress)
            if job.finished:
                continue
            push(job, job.done(task, result), first=True)
            if job.finished:
                _commit(job, manifest, progress, summary)
        progress.refresh()


def _start_marker(_: None) -> None:
    """Never run: marks where a job's first tasks are created (when it reaches the front)."""


def _run(fn: Callable[[Any], Any], spec: Any) -> Any:
    from tcp_teardown.batch.tasks import guarded, release_memory

    try:
        return guarded(fn, spec)
    finally:
        release_memory()


def _took(result: Any, task: jobs.Task, progress: Progress) -> None:
    """Count the packets a reading task delivered."""
    inner = getattr(result, "result", result)
    packets = getattr(inner, "packets", 0) if task.kind in ("file", "piece") else 0
    if task.kind == "split":
        packets = sum(p.packets for p in getattr(inner, "written", []))
    if packets:
        progress.add(packets=int(packets))


def _retry_all(backend: Backend, in_flight: dict[Any, tuple[jobs.Job, jobs.Task]],
               ready: list, order: Iterator[int], lost: tuple[jobs.Job, jobs.Task]) -> None:
    """A worker died and took the pool down: run every task that was in flight again."""
    assert isinstance(backend, PoolBackend)
    victims = [lost, *in_flight.values()]
    in_flight.clear()
    backend.restart()
    for job, task in victims:
        task.attempts += 1
        if task.attempts >= MAX_ATTEMPTS:
            # Reported as the task's result: a job decides what that means for its captures.
            heapq.heappush(ready, (0, -job.unit.size, next(order), job,
                                   jobs.Task(_failed_task, jobs.worker_died(task), task.kind, task.member,
                                             task.attempts)))
        else:
            heapq.heappush(ready, (0, -job.unit.size, next(order), job, task))


def _failed_task(error: Any) -> Any:
    """Stands in for a task that killed its worker too often: its result is the error."""
    return error


def _commit(job: jobs.Job, manifest: Manifest, progress: Progress, summary: Summary) -> None:
    """Old parts that the new run did not rewrite go, then the records (the commit point)."""
    records = job.records()
    root = job.settings.root
    for record in records:
        old = manifest.get(record.file)
        if old is not None:
            keep = {p.path for p in record.parts}
            for part in old.parts:
                if part.path not in keep and is_part_path(part.path):
                    (root / part.path).unlink(missing_ok=True)
    manifest.append(records)
    job.cleanup()
    failed = 0
    for record in records:
        if record.status == Status.DONE:
            summary.done += 1
            summary.packets += record.packets
            summary.connections += record.connections
            summary.key_frames += record.key_frames
            summary.pieces += record.chunks
            if record.truncated:
                summary.truncated.append(record.file)
        else:
            failed += 1
            # The message names the path already known from `file`: keep the reason only.
            reason = (record.error or "").removeprefix(f"{record.path}: ")
            summary.failed.append({"file": record.file, "error": reason, "exit_code": record.exit_code})
            log.info("%s: %s", record.file, record.error)
    progress.add(files=len(records), bytes_done=job.unit.size, failed=failed)
