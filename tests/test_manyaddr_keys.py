"""Keys, rankings and hashes on the many-address paths agree with their plain definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcp_teardown import endpoints, hashing
from tcp_teardown.connections import _is_in, _numbered_pair_key
from tcp_teardown.hashing import hash_text

WIDE = st.integers(-(2**62), 2**62)  # so wide that lo numbers times hi's span overflow: both sides numbered


@given(st.lists(st.tuples(WIDE, WIDE), min_size=1, max_size=60))
def test_numbered_key_of_very_wide_endpoints_is_one_integer_per_pair(pairs: list[tuple[int, int]]) -> None:
    lo = np.array([min(a, b) for a, b in pairs], dtype=np.int64)
    hi = np.array([max(a, b) for a, b in pairs], dtype=np.int64)
    key = _numbered_pair_key(lo, hi)
    assert len(set(key.tolist())) == len(set(zip(lo.tolist(), hi.tolist(), strict=True)))
    same_key = key[:, None] == key[None, :]
    same_pair = (lo[:, None] == lo[None, :]) & (hi[:, None] == hi[None, :])
    assert (same_key == same_pair).all()


@given(st.lists(st.integers(-50, 50), max_size=80), st.lists(st.integers(-50, 50), max_size=80))
def test_is_in_equals_numpy(values: list[int], among: list[int]) -> None:
    values_array, among_array = np.array(values, dtype=np.int64), np.array(among, dtype=np.int64)
    assert _is_in(values_array, among_array).tolist() == np.isin(values_array, among_array).tolist()


@given(st.lists(st.integers(-(2**40), 2**40), max_size=80))
def test_ranked_equals_unique_inverse(keys: list[int]) -> None:
    array = np.array(keys, dtype=np.int64)
    rank, distinct = endpoints._ranked(array)
    expected_distinct, expected_rank = np.unique(array, return_inverse=True)
    assert rank.tolist() == expected_rank.reshape(-1).tolist()
    assert distinct.tolist() == expected_distinct.tolist()


@given(st.lists(st.text(max_size=30), max_size=60), st.integers(1, 7))
def test_text_hash_in_small_chunks_equals_pandas(values: list[str], chunk: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hashing, "_CHUNK_ROWS", chunk)
        ours = hash_text(pa.array(values, pa.string()))
    assert ours.tolist() == pd.util.hash_array(np.array(values, dtype=object)).tolist()


def test_text_hash_of_long_and_empty_strings_equals_pandas() -> None:
    values = ["x" * 70_000, "", "198.18.0.1|40000", "", "é" * 40_000]
    assert hash_text(pa.array(values)).tolist() == pd.util.hash_array(np.array(values, dtype=object)).tolist()
    assert hash_text(pa.array(["", ""])).tolist() == pd.util.hash_array(np.array(["", ""], dtype=object)).tolist()
    assert hash_text(pa.array([], pa.string())).tolist() == []
