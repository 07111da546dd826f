"""Per-group lists: reordering and naming them whole-column gives what a row-by-row build gives."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tcp_teardown.lists import Grouped

NAMES = [f"n{i}" for i in range(70)]


@st.composite
def grouped_lists(draw: st.DrawFn, names: int) -> tuple[list[list[int]], np.ndarray]:
    lists = draw(st.lists(st.lists(st.integers(0, names - 1), min_size=1, max_size=12), max_size=30))
    order = np.array(draw(st.permutations(range(len(lists)))), dtype=np.int64)
    return lists, order


def _grouped(lists: list[list[int]]) -> Grouped:
    groups = np.array([g for g, values in enumerate(lists) for _ in values], dtype=np.int64)
    values = np.array([v for values in lists for v in values], dtype=np.int16)
    return Grouped(groups, values)


@given(st.sampled_from([5, 62, 70]).flatmap(grouped_lists))
def test_named_in_order_is_reorder_then_name(case: tuple[list[list[int]], np.ndarray]) -> None:
    lists, order = case
    got = _grouped(lists).named_in_order(order, NAMES).to_pylist()
    assert got == [[NAMES[v] for v in lists[i]] for i in order.tolist()]


@given(st.sampled_from([5, 70]).flatmap(grouped_lists))
def test_permuted_moves_whole_lists(case: tuple[list[list[int]], np.ndarray]) -> None:
    lists, order = case
    moved = _grouped(lists).permuted(order)
    assert moved.to_arrow(len(order), None).to_pylist() == [lists[i] for i in order.tolist()]


@given(st.lists(st.integers(0, 60), max_size=40))
def test_capture_order_is_a_stable_sort_by_frame(frames: list[int]) -> None:
    """Dense frames are placed, sparse or repeated ones sorted: the same order either way."""
    from tcp_teardown.analysis import _capture_order

    for shift in (0, 10**6):  # dense, then spread out (one far frame)
        values = np.array(frames + ([shift] if shift else []), dtype=np.int64)
        assert _capture_order(values).tolist() == np.argsort(values, kind="stable").tolist()
