"""Sequence-space arithmetic across the 2^32 wrap."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tcp_teardown import tcpflags as tf


def test_seq_diff_wraps() -> None:
    assert tf.seq_diff(np.array([5]), np.array([2**32 - 3]))[0] == 8
    assert tf.seq_diff(np.array([2**32 - 3]), np.array([5]))[0] == -8


def test_covers_after_wrap() -> None:
    fin_end = np.array([2])  # FIN at seq 2^32-1 wrapped: its ack is 0 + 1 ... (mod 2^32)
    assert tf.covers(np.array([2]), fin_end)[0]
    assert not tf.covers(np.array([2**32 - 1]), fin_end)[0]


def test_flag_predicates() -> None:
    flags = np.array([tf.SYN, tf.SYN | tf.ACK, tf.FIN | tf.ACK, tf.RST, tf.RST | tf.ACK])
    assert tf.is_pure_syn(flags).tolist() == [True, False, False, False, False]
    assert tf.is_syn_ack(flags).tolist() == [False, True, False, False, False]
    assert tf.is_fin(flags).tolist() == [False, False, True, False, False]
    assert tf.is_rst(flags).tolist() == [False, False, False, True, True]


@given(st.lists(st.tuples(st.integers(-(2**40), 2**40), st.integers(-(2**40), 2**40)), max_size=50))
def test_serial_difference_is_the_modular_definition(pairs: list[tuple[int, int]]) -> None:
    a = np.array([x for x, _ in pairs], dtype=np.int64)
    b = np.array([y for _, y in pairs], dtype=np.int64)
    d = [(x - y) % 2**32 for x, y in pairs]
    assert tf.seq_diff(a, b).tolist() == [v - 2**32 if v >= 2**31 else v for v in d]
    assert tf.seq_mod(a - b).tolist() == d
