"""Hand freed memory back to the operating system between the stages of a run.

Arrow's allocator and glibc's malloc keep freed pages for reuse; between stages (read,
label, write) nothing reuses them, so the peak would add up stage by stage.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import pyarrow as pa


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    # Named directly: find_library() forks helper programs, which a large process should not.
    for name in ("libc.so.6", "libc.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def release_unused() -> None:
    """Return cached free memory of Arrow's pool and of malloc to the system."""
    pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
