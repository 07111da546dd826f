"""Dense integer codes for arrays of values: the one factorization every stage uses."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from tcp_teardown.arrays import from_numpy, to_numpy


def sorted_distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values, as np.unique gives them, by sort and neighbour compare:
    numpy 2's np.unique hashes (slower here) and imports numpy.ma the first time (10 ms).
    Values already ascending, or all equal (one link type, one file), are only checked."""
    values = np.ravel(values)
    if len(values) < 2 or (values[1:] > values[:-1]).all():
        return values
    if values[0] == values[-1] and (values == values[0]).all():
        return values[:1]
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]]


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the values and the distinct values (first-seen order), hashed by Arrow."""
    encoded = pc.dictionary_encode(from_numpy(values))
    return to_numpy(encoded.indices).astype(np.int64), to_numpy(encoded.dictionary)


def radix_order(keys: np.ndarray, limit: int, order: np.ndarray | None = None) -> np.ndarray:
    """Stable argsort of integer keys in [0, limit), applied after `order` when given.

    numpy sorts 16-bit integers stably by radix, in one linear pass: 16 bits at a time,
    least significant first, is far cheaper than a comparison sort of int64 keys."""
    result = order
    for shift in range(0, max(int(limit) - 1, 1).bit_length(), 16):  # at least one pass
        current = keys if result is None else keys[result]
        # the cast keeps the low 16 bits: the digit this pass sorts by
        step = np.argsort((current >> shift).astype(np.uint16), kind="stable")
        result = step if result is None else result[step]
    return result if result is not None else np.arange(len(keys))
