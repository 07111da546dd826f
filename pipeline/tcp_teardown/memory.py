"""Hand freed memory back to the operating system between the stages of a run.

Arrow's allocator and glibc's malloc keep freed pages for reuse; between stages (read,
label, write) nothing reuses them, so the peak would add up stage by stage.
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    # Named directly: find_library() forks helper programs, which a large process should not.
    for name in ("libc.so.6", "libc.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_REUSE_LIMIT = 1 << 30

_keep_for_reuse = False


def release_unused() -> None:
    """Return cached free memory of Arrow's pool and of malloc to the system (unless this
    process chose `keep_for_reuse`: the next stage would only fault the pages back in,
    which cost 0.1 s of a 1.9 s run on 2M packets, at the same peak)."""
    if _keep_for_reuse:
        return
    import pyarrow as pa  # here, so that `keep_for_reuse` can run before NumPy loads

    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def keep_for_reuse() -> None:
    """Let malloc keep freed memory and hand it out again, for a short process that runs
    once (one `analyze`), rather than return it to the system.

    By default glibc serves arrays of megabytes with fresh mappings and unmaps them when
    freed; every new array then costs the kernel zeroing its pages. On 2M packets that
    zeroing took a fifth of the run: keeping the memory cut the run from 2.83 s to 2.61 s
    (median of five) for a peak of 660 MB instead of 535 MB. Long-lived processes (batch
    workers, notebooks) keep the default and give memory back between captures.

    Called before NumPy is imported, it also stops NumPy from asking for transparent huge
    pages for its large arrays: with the kernel's default `defrag=madvise`, each such
    fault may compact memory first, and a run of 2M packets took 0.1 s more CPU (median
    of eight) with them than with plain pages, for the same peak.
    """
    global _keep_for_reuse
    if "numpy" not in sys.modules:
        os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return
    if libc.mallopt(M_MMAP_THRESHOLD, _REUSE_LIMIT) and libc.mallopt(M_TRIM_THRESHOLD, _REUSE_LIMIT):
        _keep_for_reuse = True
