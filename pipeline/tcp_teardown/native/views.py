"""Fixed-width integer views of a byte buffer at every byte offset.

`Views(buf).u32be[p]` is the big-endian uint32 starting at byte `p` of `buf`. The views
overlap (stride one byte), so reading a header field for a million packets is one NumPy
gather instead of four byte gathers and shifts.
"""

from __future__ import annotations

import numpy as np


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
