"""Dense integer codes for arrays of values: the one factorization every stage uses."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the values and the distinct values (first-seen order), hashed by Arrow."""
    encoded = pc.dictionary_encode(pa.array(values))
    return encoded.indices.to_numpy().astype(np.int64), encoded.dictionary.to_numpy()
