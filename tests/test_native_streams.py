"""The native reader's tcp.stream numbering against a one-segment-at-a-time model of
tshark's rule, on random segments cut into random windows (no tshark needed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tcp_teardown.native import streams
from tcp_teardown.native.decode import SEGMENT_TYPES, Segments
from tcp_teardown.native.streams import StreamTracker

SYN, ACK, FIN, RST = 0x002, 0x010, 0x001, 0x004
MASK32 = 0xFFFFFFFF


def model_streams(seg: Segments) -> list[int]:
    """tshark's rule, segment by segment (see the streams module docstring)."""
    current: dict[tuple, list] = {}  # pair -> [stream, base of side 0, base of side 1]
    next_stream = 0
    out = []
    for i in range(len(seg)):
        src = (int(seg.src_hi[i]), int(seg.src_lo[i]), int(seg.sport[i]))
        dst = (int(seg.dst_hi[i]), int(seg.dst_lo[i]), int(seg.dport[i]))
        side = 0 if src <= dst else 1
        pair = (int(seg.version[i]), min(src, dst), max(src, dst))
        flags, seq, ack = int(seg.flags[i]), int(seg.seq[i]), int(seg.ack[i])
        state = current.get(pair)
        opens = state is None or (flags & (SYN | ACK) == SYN and state[1 + side] is not None and seq != state[1 + side])
        if opens:
            state = current[pair] = [next_stream, None, None]
            next_stream += 1
        if seg.analyzed[i]:
            if state[1 + side] is None:
                state[1 + side] = (seq if flags & SYN else seq - 1) & MASK32
            if flags & ACK and state[2 - side] is None:
                state[2 - side] = (ack - 1) & MASK32
        out.append(state[0])
    return out


def random_segments(rng: np.random.Generator, n: int, ipv6_share: float) -> Segments:
    hosts = rng.integers(1, 4, size=(n, 2))
    ports = rng.integers(1000, 1004, size=(n, 2))
    swap = rng.random(n) < 0.5
    version = np.where(rng.random(n) < ipv6_share, 6, 4).astype(np.int8)
    hi = np.where(version == 6, np.uint64(0x20010DB800000000), np.uint64(0))
    choices = np.array([SYN, SYN, SYN | ACK, ACK, ACK, FIN | ACK, RST, RST | ACK], dtype=np.int16)
    columns = {
        "frame": np.arange(n),
        "row": np.ones(n, bool),
        "analyzed": rng.random(n) < 0.9,
        "version": version,
        "src_hi": hi,
        "src_lo": np.where(swap, hosts[:, 1], hosts[:, 0]).astype(np.uint64),
        "dst_hi": hi,
        "dst_lo": np.where(swap, hosts[:, 0], hosts[:, 1]).astype(np.uint64),
        "sport": np.where(swap, ports[:, 1], ports[:, 0]).astype(np.int32),
        "dport": np.where(swap, ports[:, 0], ports[:, 1]).astype(np.int32),
        "flags": rng.choice(choices, n),
        # few distinct numbers, so that bases match as often as they differ; 0 and 2**32-1
        # for the wrap-around of seq - 1 and ack - 1
        "seq": rng.choice(np.array([0, 1, 100, 101, 2**32 - 1]), n).astype(np.int64),
        "ack": rng.choice(np.array([0, 1, 101, 102, 2**32 - 1]), n).astype(np.int64),
    }
    for name, kind in SEGMENT_TYPES.items():
        columns.setdefault(name, np.zeros(n, dtype=kind))
    return Segments(**columns)


def tracked(seg: Segments, cuts: np.ndarray) -> list[int]:
    tracker = StreamTracker()
    out: list[int] = []
    for start, stop in itertools.pairwise(cuts):
        out += tracker.assign(seg.take(np.arange(start, stop))).tolist()
    return out


@pytest.mark.parametrize("seed", range(40))
def test_streams_equal_the_model(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    seg = random_segments(rng, n, ipv6_share=[0.0, 0.3, 1.0][seed % 3])
    windows = int(rng.integers(1, 8))
    cuts = np.unique(np.r_[0, np.sort(rng.integers(0, n + 1, windows)), n])
    assert tracked(seg, cuts) == model_streams(seg)


def test_pairs_keep_their_stream_between_ipv4_only_and_mixed_windows() -> None:
    rng = np.random.default_rng(1)
    seg = random_segments(rng, 600, ipv6_share=0.0)
    seg.version[300:310] = 6  # the second window is mixed, the first IPv4 only
    cuts = np.array([0, 300, 600])
    assert tracked(seg, cuts) == model_streams(seg)


@pytest.mark.parametrize("rounds", [0, 1])
def test_pairs_whose_splits_take_many_rounds(monkeypatch: pytest.MonkeyPatch, rounds: int) -> None:
    """With few rounds allowed, pairs left undecided are decided one SYN at a time."""
    monkeypatch.setattr(streams, "SPLIT_ROUNDS", rounds)
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        seg = random_segments(rng, 2000, ipv6_share=0.2)
        assert tracked(seg, np.array([0, 700, 2000])) == model_streams(seg)


def test_pairs_whose_shortened_hashes_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hash whose high bits say little (so that the sort key, which keeps only those,
    puts different pairs together): the pairs are told apart by their full hashes."""

    def weak_hash(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a << np.uint64(18) | b  # exact for these small endpoints, low bits vary

    monkeypatch.setattr(streams, "_hash2", weak_hash)
    rng = np.random.default_rng(5)
    seg = random_segments(rng, 3000, ipv6_share=0.0)
    assert tracked(seg, np.array([0, 1000, 3000])) == model_streams(seg)
