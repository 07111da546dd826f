"""pandas' value hashes (`pd.util.hash_array`) computed with NumPy over whole columns.

Flow ids are pandas row hashes, fixed by earlier releases. Computing them here keeps
the bulk path free of a pandas import (a third of a second at start-up) and of a Python
object per connection: SipHash-2-4 runs over many strings at once (cache-sized chunks of
rows), one 8-byte block at a time, on rows ordered by length so that the rows still
hashing are always a prefix.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pyarrow as pa

from tcp_teardown.arrays import from_numpy
from tcp_teardown.codes import radix_order

# pandas' default hash key, "0123456789123456", as SipHash's two little-endian words.
_KEY = np.frombuffer(b"0123456789123456", dtype="<u8")
_INIT = np.array([0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573], dtype=np.uint64)
# Rows hashed together: four state arrays of this many words fit in a core's L2 cache.
_CHUNK_ROWS = 32768


def hash_int64(values: np.ndarray) -> np.ndarray:
    """pd.util.hash_array of an int64 array."""
    return mix(np.asarray(values, dtype=np.int64).view(np.uint64))


def hash_text(values: pa.Array) -> np.ndarray:
    """pd.util.hash_array of strings (UTF-8 SipHash-2-4 with pandas' key, then its mixing)."""
    values = values.cast(pa.string())
    if values.null_count:
        raise ValueError("hash_text: nulls have no string hash")
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint64)
    order = _longest_first(_lengths(values))
    words, blocks = _blocks(values.take(from_numpy(order)))
    out = np.empty(len(values), dtype=np.uint64)
    out[order] = _siphash(words, blocks)
    return mix(out)


def combine_row_hashes(columns: tuple[np.ndarray, ...]) -> np.ndarray:
    """pandas' combination of per-column hashes into a row hash (CPython's tuple hash),
    as `pd.util.hash_pandas_object(frame, index=False)` does."""
    mult = np.uint64(1000003)
    out = np.zeros_like(columns[0]) + np.uint64(0x345678)
    for i, column in enumerate(columns):
        inverse_i = len(columns) - i
        out ^= column
        out *= mult
        mult += np.uint64(82520 + inverse_i + inverse_i)
    return out + np.uint64(97531)


def _lengths(values: pa.StringArray) -> np.ndarray:
    """Bytes per string."""
    return np.diff(_offsets(values))


def _offsets(values: pa.StringArray) -> np.ndarray:
    return np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset:values.offset + len(values) + 1]


def _longest_first(lengths: np.ndarray) -> np.ndarray:
    """The order of the strings by length, longest first (ties in their order)."""
    longest = int(lengths.max())
    return radix_order(longest - lengths, longest + 1)


def _blocks(values: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """Each string (longest first) as SipHash's message blocks (little-endian words, the
    last one carrying the length in its top byte), one row per string, and the number of
    blocks per row."""
    offsets = _offsets(values)
    lengths = np.diff(offsets)
    data = values.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    count = len(values)
    blocks = (lengths // 8 + 1).astype(np.int64)
    matrix = np.zeros((count, int(blocks[0]) * 8), dtype=np.uint8)
    # Strings of one length are adjacent rows whose bytes are adjacent in the buffer: each
    # such run is copied as one 2-D block (a few lengths, not a byte-wise scatter).
    run_bounds = np.flatnonzero(np.r_[True, lengths[1:] != lengths[:-1], True])
    for first, end in pairwise(run_bounds.tolist()):
        length = int(lengths[first])
        rows = slice(first, end)
        matrix[rows, :length] = data[offsets[first]:offsets[end]].reshape(end - first, length)
        matrix[rows, length // 8 * 8 + 7] = length & 0xFF
    return matrix.view("<u8"), blocks


def _siphash(words: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """SipHash-2-4 of each row's first blocks[i] words; rows come longest first, so the
    rows still hashing at any block form a prefix."""
    out = np.empty(len(blocks), dtype=np.uint64)
    # A chunk's state arrays stay in the core's cache across the ~100 passes over them:
    # about twice as fast as passing over every row each time.
    for start in range(0, len(blocks), _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        out[rows] = _siphash_chunk(words[rows], blocks[rows])
    return out


def _siphash_chunk(words: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    n = len(blocks)
    v0 = np.full(n, _INIT[0] ^ _KEY[0])
    v1 = np.full(n, _INIT[1] ^ _KEY[1])
    v2 = np.full(n, _INIT[2] ^ _KEY[0])
    v3 = np.full(n, _INIT[3] ^ _KEY[1])
    state = [v0, v1, v2, v3]
    for j in range(int(blocks[0])):
        active = int(np.count_nonzero(blocks > j))
        part = [v[:active] for v in state]
        m = words[:active, j]
        part[3] ^= m
        _rounds(part, 2)
        part[0] ^= m
    v2 ^= np.uint64(0xFF)
    _rounds(state, 4)
    v0 ^= v1
    v0 ^= v2
    v0 ^= v3
    return v0


def _rounds(v: list[np.ndarray], count: int) -> None:
    """SipRounds, in place on the four state arrays (views update the callers' arrays)."""
    v0, v1, v2, v3 = v
    spare = np.empty_like(v0)

    def rotate(x: np.ndarray, bits: int) -> None:
        np.right_shift(x, np.uint64(64 - bits), out=spare)
        x <<= np.uint64(bits)
        x |= spare

    for _ in range(count):
        v0 += v1
        rotate(v1, 13)
        v1 ^= v0
        rotate(v0, 32)
        v2 += v3
        rotate(v3, 16)
        v3 ^= v2
        v0 += v3
        rotate(v3, 21)
        v3 ^= v0
        v2 += v1
        rotate(v1, 17)
        v1 ^= v2
        rotate(v2, 32)


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads every input bit over the output (uint64 wraps).
    pandas ends every value hash with it."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
