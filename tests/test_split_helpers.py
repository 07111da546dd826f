"""The per-connection helpers of connections.py (and their users in facts, evidence, rules)
against plain per-connection Python loops: the fast forms must give the same answers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from tcp_teardown import connections as C
from tcp_teardown.evidence import _first_appearances
from tcp_teardown.rules.registry import any_of

SIZES = st.lists(st.integers(1, 6), min_size=0, max_size=30)


def segments(sizes: list[int], seed: int) -> tuple[C.Segments, np.random.Generator]:
    """Segments of connections with these packet counts (only the bounds matter here)."""
    rng = np.random.default_rng(seed)
    sizes_arr = np.array(sizes, dtype=np.int64)
    ends = np.cumsum(sizes_arr)
    starts = ends - sizes_arr
    n = int(ends[-1]) if len(ends) else 0
    conn = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes_arr)
    zeros = np.zeros(n, np.int64)
    seg = C.Segments(conn=conn, frame=np.arange(1, n + 1), ts=zeros.astype(float), flags=zeros.astype(np.int16),
                     seq=zeros, ack=zeros, payload=rng.integers(0, 5, n).astype(np.int32),
                     ttl=zeros.astype(np.int16), c2s=rng.random(n) < 0.5, starts=starts, ends=ends)
    return seg, rng


def runs(seg: C.Segments) -> list[range]:
    return [range(int(a), int(b)) for a, b in zip(seg.starts, seg.ends, strict=True)]


@settings(max_examples=200, deadline=None)
@given(SIZES, st.integers(0, 2**32), st.floats(0, 1))
def test_first_and_last_among_hits(sizes: list[int], seed: int, density: float) -> None:
    seg, rng = segments(sizes, seed)
    mask = rng.random(len(seg.conn)) < density
    hits = np.flatnonzero(mask)
    first = [next((p for p in r if mask[p]), -1) for r in runs(seg)]
    last = [next((p for p in reversed(r) if mask[p]), -1) for r in runs(seg)]
    assert seg.first_among(hits).tolist() == first
    assert seg.last_among(hits).tolist() == last
    assert seg.count_where(mask).tolist() == [sum(mask[p] for p in r) for r in runs(seg)]
    assert seg.count_where(hits).tolist() == [sum(mask[p] for p in r) for r in runs(seg)]
    assert C.first_in_runs(hits, seg.starts, seg.ends).tolist() == first


@settings(max_examples=200, deadline=None)
@given(SIZES, st.integers(0, 2**32), st.floats(0, 1))
def test_windows_sums_and_spans(sizes: list[int], seed: int, density: float) -> None:
    seg, rng = segments(sizes, seed)
    n = len(seg.conn)
    mask = rng.random(n) < density
    after = rng.integers(-2, n + 2, seg.count)
    before = rng.integers(-2, n + 2, seg.count)
    assert seg.first_between(mask, after, before).tolist() == [
        next((p for p in r if mask[p] and a < p < b), -1) for r, a, b in zip(runs(seg), after, before, strict=True)]
    assert seg.sum_before(seg.payload, before).tolist() == [
        int(sum(seg.payload[p] for p in r if p < b)) for r, b in zip(runs(seg), before, strict=True)]
    assert seg.sum_over(seg.payload).tolist() == [int(sum(seg.payload[p] for p in r)) for r in runs(seg)]
    per_conn = rng.integers(0, 100, seg.count)
    assert seg.per_packet(per_conn).tolist() == per_conn[seg.conn].tolist()
    selected = rng.random(seg.count) < 0.5
    assert seg.packets_of(selected).tolist() == [p for r, s in zip(runs(seg), selected, strict=True) if s for p in r]
    assert seg.packets_after(after).tolist() == [
        p for r, a in zip(runs(seg), after, strict=True) if a >= 0 for p in r if p > a]


@settings(max_examples=100, deadline=None)
@given(SIZES, st.integers(0, 2**32))
def test_first_opening_probes_then_searches(sizes: list[int], seed: int) -> None:
    seg, rng = segments(sizes, seed)
    mask = rng.random(len(seg.conn)) < 0.3
    hits = np.flatnonzero(mask)
    expected = C.first_in_runs(hits, seg.starts, seg.ends)
    assert C._first_opening(hits, lambda at: mask[at], seg.starts, seg.ends).tolist() == expected.tolist()


def test_address_codes_match_arrow_unification() -> None:
    """Several chunks with different dictionaries, and plain strings: the dictionary order
    and codes Arrow's unify_dictionaries gives."""
    src = pa.chunked_array([pa.array(["a", "b", "a"]).dictionary_encode(), pa.array(["c", "a"]).dictionary_encode()])
    dst = pa.chunked_array([pa.array(["b", "d", "c", "a", "e"]).dictionary_encode()])
    for table in (pa.table({"src_ip": src, "dst_ip": dst}),
                  pa.table({"src_ip": pa.chunked_array([["a", "b"], ["a", "c", "z"]]),
                            "dst_ip": pa.chunked_array([["z", "b", "q", "a", "c"]])})):
        both = pa.chunked_array(table.column("src_ip").chunks + table.column("dst_ip").chunks)
        if not pa.types.is_dictionary(both.type):
            both = both.dictionary_encode()
        both = both.unify_dictionaries()
        addresses, codes = C.address_codes(table)
        assert addresses.to_pylist() == both.chunk(0).dictionary.to_pylist()
        assert codes.tolist() == [i for c in both.chunks for i in c.indices.to_pylist()]
        assert [addresses[int(i)].as_py() for i in codes] == (table.column("src_ip").to_pylist()
                                                              + table.column("dst_ip").to_pylist())


def test_port_classes_as_declared() -> None:
    ports = np.arange(65536)
    expected = np.select(
        [ports < C.WELL_KNOWN_LIMIT, np.isin(ports, list(C.SERVICE_PORTS)), ports < C.EPHEMERAL_START],
        [C.PORT_WELL_KNOWN, C.PORT_SERVICE, C.PORT_REGISTERED], default=C.PORT_EPHEMERAL)
    assert (C.port_class(ports) == expected).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=8), max_size=20))
def test_first_appearances_within_each_key(groups: list[list[int]]) -> None:
    key = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    values = np.array([v for g in groups for v in g], dtype=np.int64)
    longest = max((len(g) for g in groups), default=0)
    keep = _first_appearances(key * 6 + values, longest)
    expected = [v not in g[:i] for g in groups for i, v in enumerate(g)]
    assert keep.tolist() == expected


def test_any_of_is_isin() -> None:
    values = np.random.default_rng(1).integers(-1, 9, 500).astype(np.int8)
    for codes in ([], [3], [0, 4, 7], (1, 2)):
        assert (any_of(values, codes) == np.isin(values, list(codes))).all()
