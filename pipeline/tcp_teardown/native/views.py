"""Fixed-width integer views of a byte buffer at every byte offset (and the small array
helpers the readers share: blocks, is_in, empty).

`Views(buf).u32be[p]` is the big-endian uint32 starting at byte `p` of `buf`. The views
overlap (stride one byte), so reading a header field for a million packets is one NumPy
gather instead of four byte gathers and shifts.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Rows of gathered headers whose fields are read while they are in the L2 cache (~1 MB
# of headers): reading each field of a whole window's headers instead streams every
# header from memory once per field, which was most of the decoding time.
BLOCK_ROWS = 1 << 14


def _strided(buf: np.ndarray, dtype: str | np.dtype, width: int) -> np.ndarray:
    count = max(len(buf) - width + 1, 0)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.ndarray((count,), dtype=dtype, buffer=buf, offset=0, strides=(1,))


class Views:
    """uint8/16/32 readers of `buf` (a contiguous uint8 array) in both byte orders."""

    def __init__(self, buf: np.ndarray) -> None:
        if not buf.flags.c_contiguous:
            buf = np.ascontiguousarray(buf)
        self.buf = buf
        self.n = len(buf)
        self.u8 = buf
        self.u16be = _strided(buf, ">u2", 2)
        self.u16le = _strided(buf, "<u2", 2)
        self.u32be = _strided(buf, ">u4", 4)
        self.u32le = _strided(buf, "<u4", 4)

    def gather(self, offsets: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """The headers of structured type `dtype` at `offsets`, as one array.

        Gathered as opaque fixed-size byte strings (a plain copy per header, several
        times faster than gathering a structured type or each field) and then viewed
        as `dtype`."""
        raw = _strided(self.buf, np.dtype(f"V{dtype.itemsize}"), dtype.itemsize)
        return raw[offsets].view(dtype)

    def u16(self, little: bool) -> np.ndarray:
        return self.u16le if little else self.u16be

    def u32(self, little: bool) -> np.ndarray:
        return self.u32le if little else self.u32be


def is_in(values: np.ndarray, choices: np.ndarray) -> np.ndarray:
    """np.isin for integers, always by a lookup table over the range of `choices` (small
    here): its sorting method calls np.unique, which would import numpy.ma."""
    return np.isin(values, choices, kind="table")


def blocks(count: int, rows: int = BLOCK_ROWS) -> Iterator[slice]:
    """Consecutive slices of at most `rows` covering range(count)."""
    for start in range(0, count, rows):
        yield slice(start, min(start + rows, count))


# NumPy asks the kernel to back arrays of 4 MiB and more with huge pages, which it can do
# only for whole 2 MiB-aligned stretches: an array that starts there takes one page fault
# per 2 MiB when first written, instead of hundreds of 4 KiB faults at its two ends.
HUGE_PAGE = 1 << 21
HUGE_PAGES_FROM = 1 << 22


def empty(rows: int, dtype: np.dtype | type) -> np.ndarray:
    """An uninitialized column, starting on a huge-page boundary if it is big."""
    size = rows * np.dtype(dtype).itemsize
    if size < HUGE_PAGES_FROM:
        return np.empty(rows, dtype)
    raw = np.empty(size + HUGE_PAGE, dtype=np.uint8)
    skip = -raw.ctypes.data % HUGE_PAGE
    return raw[skip : skip + size].view(dtype)
