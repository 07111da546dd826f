"""Dense integer codes for arrays of values: the one factorization every stage uses."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from tcp_teardown.arrays import from_numpy, to_numpy


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the values and the distinct values (first-seen order), hashed by Arrow."""
    encoded = pc.dictionary_encode(from_numpy(values))
    return to_numpy(encoded.indices).astype(np.int64), to_numpy(encoded.dictionary)
