"""Byte sources: a capture file as consecutive windows of bytes.

Plain files are memory-mapped, so a window is a zero-copy view; gzip and zstd files are
decompressed as a stream. Either way the format readers see a NumPy uint8 array that
starts at the first unconsumed byte, and say how much of it they consumed.
"""

from __future__ import annotations

import contextlib
import mmap
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from tcp_teardown.native.errors import NativeUnsupported

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Other compressions tshark may or may not read: declined rather than guessed at.
OTHER_MAGICS = {b"\xfd7zXZ": "xz", b"BZh": "bzip2", b"\x04\x22\x4d\x18": "lz4"}

WINDOW_BYTES = 64 << 20
RAW_CHUNK = 1 << 20  # compressed bytes read at a time


class ByteSource(Protocol):
    """Consecutive windows over the bytes of a capture."""

    def window(self, min_bytes: int = WINDOW_BYTES) -> np.ndarray:
        """Bytes from the current position: at least `min_bytes` unless the data ends."""
        ...

    def consume(self, n: int) -> None:
        """Advance the current position by `n` bytes."""
        ...

    @property
    def at_end(self) -> bool:
        """True once `window` has returned everything that is left."""
        ...

    @property
    def cut_short(self) -> bool:
        """True if the compressed stream itself ended early (a truncated .gz/.zst)."""
        ...

    @property
    def size(self) -> int | None:
        """Bytes in all, if known before reading them."""
        ...

    def close(self) -> None: ...


class MappedSource:
    """A plain file, memory-mapped; consumed pages are handed back to the kernel so the
    resident set stays about one window, whatever the file size."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        size = path.stat().st_size
        self._size = size
        self._pos = 0
        self._released = 0
        self._window_end = 0
        self._map: mmap.mmap | None = None
        self._array = np.zeros(0, np.uint8)
        if size:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            if hasattr(self._map, "madvise"):
                self._map.madvise(mmap.MADV_SEQUENTIAL)
            self._array = np.frombuffer(self._map, dtype=np.uint8)

    def window(self, min_bytes: int = WINDOW_BYTES) -> np.ndarray:
        end = min(self._size, self._pos + max(min_bytes, WINDOW_BYTES))
        self._window_end = end
        return self._array[self._pos : end]

    def consume(self, n: int) -> None:
        self._pos += n
        # Drop pages we are done with from our resident set (they stay in the page cache).
        page = mmap.PAGESIZE
        upto = (self._pos // page) * page
        if self._map is not None and upto - self._released >= (64 << 20):
            self._map.madvise(mmap.MADV_DONTNEED, self._released, upto - self._released)
            self._released = upto

    @property
    def at_end(self) -> bool:
        return self._window_end >= self._size

    @property
    def size(self) -> int | None:
        return self._size

    @property
    def cut_short(self) -> bool:
        return False

    def close(self) -> None:
        self._array = np.zeros(0, np.uint8)
        if self._map is not None:
            # BufferError: a caller still holds a view; the GC unmaps it later.
            with contextlib.suppress(BufferError):
                self._map.close()
        self._file.close()


class _Decompressor(Protocol):
    eof: bool
    unused_data: bytes

    def decompress(self, data: bytes) -> bytes: ...


class Decompressing:
    """A compressed file read as a stream of decompressed chunks.

    Decompression objects (not GzipFile and friends) so that a truncated stream still
    yields everything before the cut, as tshark shows it; concatenated members/frames are
    read one after the other."""

    def __init__(self, raw: BinaryIO, new: Callable[[], _Decompressor], magic: bytes) -> None:
        self._raw = raw
        self._new = new
        self._magic = magic
        self._current = new()
        self._started = False  # input fed to the current member
        self.cut_short = False
        self.ended = False

    def read_chunk(self) -> bytes:
        """The next decompressed bytes (b"" once the stream is over)."""
        while not self.ended:
            data = self._raw.read(RAW_CHUNK)
            if not data:
                self.ended = True
                self.cut_short = self._started and not self._current.eof
                return b""
            out = self._feed(data)
            if out:
                return out
        return b""

    def _feed(self, data: bytes) -> bytes:
        parts = []
        while data:
            self._started = True
            parts.append(self._current.decompress(data))
            if not self._current.eof:
                break
            data = self._current.unused_data
            self._started = False
            if not data.startswith(self._magic):
                # trailing bytes that are no further member: ignored
                self.ended = True
                break
            self._current = self._new()
        return b"".join(parts)

    def close(self) -> None:
        self._raw.close()


class StreamSource:
    """A compressed file, decompressed chunk by chunk into fresh buffers."""

    def __init__(self, stream: Decompressing) -> None:
        self._stream = stream
        self._pending = b""
        self._eof = False

    def _read_more(self, want: int) -> None:
        parts = [self._pending]
        have = len(self._pending)
        while have < want and not self._eof:
            try:
                chunk = self._stream.read_chunk()
            except Exception:  # any decompressor error means "the stream ends here"
                # Damaged compressed data: keep what decompressed so far, as tshark does,
                # and report the file as cut short.
                self._stream.cut_short = True
                chunk = b""
            if not chunk:
                self._eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        self._pending = b"".join(parts)

    def window(self, min_bytes: int = WINDOW_BYTES) -> np.ndarray:
        want = max(min_bytes, WINDOW_BYTES)
        if len(self._pending) < want and not self._eof:
            self._read_more(want)
        return np.frombuffer(self._pending, dtype=np.uint8)

    def consume(self, n: int) -> None:
        self._pending = self._pending[n:]

    @property
    def at_end(self) -> bool:
        return self._eof

    @property
    def size(self) -> int | None:
        return None

    @property
    def cut_short(self) -> bool:
        return self._stream.cut_short

    def close(self) -> None:
        self._stream.close()


def open_source(path: Path) -> ByteSource:
    """Open `path` as plain, gzip or zstd, judged by its first bytes (not its name)."""
    with open(path, "rb") as probe:
        head = probe.read(4)
    if head.startswith(GZIP_MAGIC):
        raw = open(path, "rb")  # noqa: SIM115 - owned by the source
        return StreamSource(
            Decompressing(raw, lambda: zlib.decompressobj(wbits=31), GZIP_MAGIC)  # type: ignore[arg-type,return-value]
        )
    if head.startswith(ZSTD_MAGIC):
        try:
            import zstandard
        except ImportError as exc:
            raise NativeUnsupported("zstd-compressed and `zstandard` is not installed") from exc
        raw = open(path, "rb")  # noqa: SIM115 - owned by the source
        return StreamSource(Decompressing(raw, lambda: zstandard.ZstdDecompressor().decompressobj(), ZSTD_MAGIC))
    for magic, name in OTHER_MAGICS.items():
        if head.startswith(magic):
            raise NativeUnsupported(f"{name}-compressed capture")
    return MappedSource(path)
