"""Flow-id hashing without pandas equals pandas' own hashes (the ids earlier releases wrote)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcp_teardown.hashing import combine_row_hashes, hash_int64, hash_text


@given(st.lists(st.text(max_size=70), max_size=40), st.integers(0, 5))
def test_text_hash_equals_pandas(values: list[str], offset: int) -> None:
    array = pa.array(["pad"] * offset + values, pa.string()).slice(offset)  # a sliced array too
    assert hash_text(array).tolist() == pd.util.hash_array(np.array(values, dtype=object)).tolist()


@given(st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1), max_size=40))
def test_int_hash_equals_pandas(values: list[int]) -> None:
    array = np.array(values, dtype=np.int64)
    assert hash_int64(array).tolist() == pd.util.hash_array(array).tolist()


def test_row_hash_equals_pandas_frame_hash() -> None:
    frame = pd.DataFrame({"c": ["198.18.0.1|40000", "fd00::1|1"], "s": ["198.19.0.9|80", "fd00::2|443"],
                          "isn": np.array([-1, 4294967295], dtype=np.int64)})
    ours = combine_row_hashes((hash_text(pa.array(frame["c"].tolist())), hash_text(pa.array(frame["s"].tolist())),
                               hash_int64(frame["isn"].to_numpy())))
    assert ours.tolist() == pd.util.hash_pandas_object(frame, index=False).to_numpy(np.uint64).tolist()


def test_nulls_are_refused() -> None:
    with pytest.raises(ValueError, match="nulls"):
        hash_text(pa.array(["a", None]))
