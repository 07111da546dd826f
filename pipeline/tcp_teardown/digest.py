"""The size and SHA-256 of an input file, computed beside the analysis that reads it.

Hashing runs at about 1.4 GB/s (SHA-NI): on a full-payload capture that is as long as the
whole analysis. `hashlib` and file reads release the GIL, so on a thread of its own the
digest costs no wall time where a second core is free. On a single core the thread would
only interleave with the analysis (and share its caches): there it runs when asked for.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from types import TracebackType

from tcp_teardown.errors import ExitCode, TeardownError

# Large enough that the thread takes the GIL rarely (once per ~12 ms of hashing).
CHUNK_BYTES = 16 << 20


def file_digest(path: Path, stop: threading.Event | None = None) -> tuple[int, str]:
    """Size and SHA-256 of the bytes read (a file that cannot be read is an input error).
    `stop` set: give up early (the result is then meaningless)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb", buffering=0) as fh:
            # No bigger than the file (+1 to see its end in one read): a new buffer is
            # zeroed page by page, which for a small capture would cost more than hashing it.
            buffer = bytearray(min(CHUNK_BYTES, os.fstat(fh.fileno()).st_size + 1))
            view = memoryview(buffer)
            while (count := fh.readinto(buffer)) and not (stop is not None and stop.is_set()):
                digest.update(view[:count])
                size += count
    except OSError as exc:
        raise TeardownError(f"{path}: cannot read: {exc.strerror or exc}", ExitCode.INPUT_MISSING) from exc
    return size, digest.hexdigest()


class BackgroundDigest:
    """`file_digest(path)` on a thread started on entry (when this process may use more
    than one CPU); `result()` waits for it. Leaving the block without asking for the
    result (an error in the analysis) stops it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self._outcome: tuple[int, str] | BaseException | None = None
        self._thread: threading.Thread | None = None
        if usable_cpus() > 1:
            self._thread = threading.Thread(target=self._run, name="tcp-teardown-digest", daemon=True)

    def _run(self) -> None:
        try:
            self._outcome = file_digest(self._path, self._stop)
        except BaseException as exc:  # handed to the caller by result()
            self._outcome = exc

    def __enter__(self) -> BackgroundDigest:
        if self._thread is not None:
            self._thread.start()
        return self

    def result(self) -> tuple[int, str]:
        if self._thread is None:
            return file_digest(self._path)
        self._thread.join()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, e.g. under taskset), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
