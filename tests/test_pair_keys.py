"""The pair key used when endpoint codes are too wide to combine directly (many addresses)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tcp_teardown.connections import _numbered_pair_key, _pair_key, _pair_numbers, _pair_order

ENDPOINT = st.integers(0, 2**40)  # address number * 65536 + port: wider than 31 bits


@given(st.lists(st.tuples(ENDPOINT, ENDPOINT), min_size=1, max_size=60))
def test_numbered_key_is_one_integer_per_pair(pairs: list[tuple[int, int]]) -> None:
    lo = np.array([min(a, b) for a, b in pairs], dtype=np.int64)
    hi = np.array([max(a, b) for a, b in pairs], dtype=np.int64)
    key = _numbered_pair_key(lo, hi).tolist()
    same_key = {(i, j) for i in range(len(key)) for j in range(len(key)) if key[i] == key[j]}
    same_pair = {(i, j) for i in range(len(key)) for j in range(len(key)) if (lo[i], hi[i]) == (lo[j], hi[j])}
    assert same_key == same_pair


@given(st.lists(st.tuples(ENDPOINT, ENDPOINT), min_size=1, max_size=60))
def test_packets_grouped_by_pair_in_capture_order(pairs: list[tuple[int, int]]) -> None:
    lo = np.array([min(a, b) for a, b in pairs], dtype=np.int64)
    hi = np.array([max(a, b) for a, b in pairs], dtype=np.int64)
    order, key = _pair_order(_pair_key(lo.copy(), hi))  # as split_connections orders packets
    pair = _pair_numbers(key)
    grouped = [(int(lo[i]), int(hi[i])) for i in order]
    runs = [grouped[k] for k in range(len(grouped)) if k == 0 or grouped[k] != grouped[k - 1]]
    assert len(runs) == len(set(runs))  # each pair's packets are one run
    assert all(order[k] < order[k + 1] for k in range(len(order) - 1) if pair[k] == pair[k + 1])
    assert pair.tolist() == sorted(pair.tolist()) and len(set(pair.tolist())) == len(set(runs))
