"""Per-group lists built from offsets, without a Python loop over groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa


def grouped_list(groups: np.ndarray, values: np.ndarray | pa.Array, count: int,
                 value_type: pa.DataType | None = None) -> pa.ListArray:
    """A list per group 0..count-1 of its `values`; `groups` must be sorted (stable order kept)."""
    groups = np.asarray(groups, dtype=np.int64)
    sizes = np.bincount(groups, minlength=count) if len(groups) else np.zeros(count, np.int64)
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    flat = values if isinstance(values, pa.Array) else pa.array(np.asarray(values), type=value_type)
    if value_type is not None and flat.type != value_type:
        flat = flat.cast(value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


def as_series(array: pa.Array) -> pd.Series:
    """An Arrow array as a pandas Series that keeps its Arrow type (lists stay lists)."""
    return pd.Series(pd.arrays.ArrowExtensionArray(array))
