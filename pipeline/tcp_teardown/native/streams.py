"""tcp.stream numbers as tshark 4.0 assigns them, computed window by window.

tshark keeps one conversation per address/port pair (either direction) and numbers
conversations in the order it creates them. It creates one for the first TCP header it
sees on a pair, and a new one on the same pair when a SYN without ACK arrives whose
sequence number differs from the "base sequence number" that the current conversation
has for that direction. The base is set by the first *analysed* segment of the
conversation that tells it: a segment in that direction (its seq, minus one unless it is
a SYN) or a segment in the other direction with ACK set (its ack minus one). FIN and RST
do not matter: a SYN that reuses the ISN of a closed conversation stays in it. TCP
headers quoted in ICMP errors open conversations too (but are never analysed).

Everything is vectorized except a loop over SYNs that are not the first segment of their
address pair (retransmissions, port reuse), where the rule has to be applied in order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tcp_teardown.native.decode import Segments
from tcp_teardown.native.errors import NativeUnsupported

SYN = 0x002
ACK = 0x010
MASK32 = 0xFFFFFFFF
_MIX = np.uint64(0x9E3779B97F4A7C15)


class StreamTracker:
    """Assigns tcp.stream numbers to the segments of consecutive windows of one file."""

    def __init__(self) -> None:
        self.next_stream = 0
        self._hashes = np.zeros(0, dtype=np.uint64)  # sorted
        self._hash_ids = np.zeros(0, dtype=np.int64)  # key id of each sorted hash
        self._keys = np.zeros((0, 5), dtype=np.uint64)  # full key of each key id
        # per key id: the current conversation's stream and base sequence numbers
        self._stream = np.zeros(0, dtype=np.int64)
        self._base_set = np.zeros((0, 2), dtype=bool)
        self._base = np.zeros((0, 2), dtype=np.int64)

    def assign(self, seg: Segments) -> np.ndarray:
        """tcp.stream of each segment (in the order given, which must be capture order)."""
        n = len(seg)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        words, direction = _keys(seg)
        kid, fresh_keys = self._key_ids(words)

        order = np.argsort(kid, kind="stable")  # by pair, capture order within a pair
        k = kid[order]
        d = direction[order]
        flags = seg.flags[order]
        seq = seg.seq[order]
        ack = seg.ack[order]
        analyzed = seg.analyzed[order]
        position = np.arange(n)
        group_start = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        group_end = np.r_[group_start[1:], n]
        group_of = np.repeat(np.arange(len(group_start)), group_end - group_start)
        group_key = k[group_start]
        carried = ~fresh_keys[group_key]  # the pair has a conversation from earlier windows

        # For each direction: where the next segment at or after each position that would
        # set the base sequence number is, and the base it would set.
        is_syn = (flags & SYN) != 0
        has_ack = (flags & ACK) != 0
        next_setter = []
        base_value = []
        for side in (0, 1):
            same = d == side
            setter = analyzed & (same | has_ack)
            value = np.where(same, np.where(is_syn, seq, seq - 1), ack - 1) & MASK32  # (ack: ACK set)
            nxt = np.minimum.accumulate(np.where(setter, position, n)[::-1])[::-1]
            next_setter.append(nxt)
            base_value.append(np.append(value, 0))  # index n: "none"

        # SYNs without ACK that might start a new conversation, in order.
        syn_only = (flags & (SYN | ACK)) == SYN
        first_of_fresh = np.zeros(n, dtype=bool)
        first_of_fresh[group_start[~carried]] = True
        candidates = np.flatnonzero(syn_only & ~first_of_fresh)
        starts = self._split_points(
            candidates, group_of, group_start, group_end, carried, group_key,
            d, seq, next_setter, base_value,
        )  # fmt: skip
        starts = np.union1d(starts, group_start[~carried]).astype(np.int64)

        # New streams are numbered in capture order of their first segment.
        stream_sorted = np.full(n, -1, dtype=np.int64)
        rank = np.argsort(order[starts], kind="stable")
        stream_sorted[starts[rank]] = self.next_stream + np.arange(len(starts))
        self.next_stream += len(starts)
        open_carried = group_start[carried]
        open_carried = open_carried[stream_sorted[open_carried] < 0]
        stream_sorted[open_carried] = self._stream[k[open_carried]]
        marked = stream_sorted >= 0
        filled = np.maximum.accumulate(np.where(marked, position, 0))
        stream_sorted = stream_sorted[filled]

        self._carry(group_start, group_end, group_key, filled, starts, carried,
                    next_setter, base_value, stream_sorted)  # fmt: skip
        result = np.empty(n, dtype=np.int64)
        result[order] = stream_sorted
        return result

    def _split_points(
        self,
        candidates: np.ndarray,
        group_of: np.ndarray,
        group_start: np.ndarray,
        group_end: np.ndarray,
        carried: np.ndarray,
        group_key: np.ndarray,
        d: np.ndarray,
        seq: np.ndarray,
        next_setter: list[np.ndarray],
        base_value: list[np.ndarray],
    ) -> np.ndarray:
        """Positions (in pair order) of SYNs that start a new conversation."""
        starts: list[int] = []
        current_group = -1
        conversation_start = -1  # -1: the conversation carried over from earlier windows
        groups = group_of[candidates].tolist()
        sides = d[candidates].tolist()
        seqs = seq[candidates].tolist()
        for q, g, side, s in zip(candidates.tolist(), groups, sides, seqs, strict=True):
            if g != current_group:
                current_group = g
                conversation_start = -1 if carried[g] else int(group_start[g])
            key = int(group_key[g])
            if conversation_start < 0 and self._base_set[key, side]:
                base = int(self._base[key, side])
            else:
                begin = int(group_start[g]) if conversation_start < 0 else conversation_start
                setter = int(next_setter[side][begin])
                if setter >= q:
                    continue  # no base yet: the SYN joins the conversation
                base = int(base_value[side][setter])
            if s != base:
                conversation_start = q
                starts.append(q)
        return np.asarray(starts, dtype=np.int64)

    def _carry(
        self,
        group_start: np.ndarray,
        group_end: np.ndarray,
        group_key: np.ndarray,
        filled: np.ndarray,
        starts: np.ndarray,
        carried: np.ndarray,
        next_setter: list[np.ndarray],
        base_value: list[np.ndarray],
        stream_sorted: np.ndarray,
    ) -> None:
        """Keep each pair's current conversation (stream, bases) for the next window."""
        last = group_end - 1
        is_start = np.zeros(len(filled), dtype=bool)
        is_start[starts] = True
        # the position where the pair's last conversation began (or its group start)
        began = filled[last]
        began_here = is_start[began]
        self._stream[group_key] = stream_sorted[last]
        for side in (0, 1):
            setter = next_setter[side][began]
            seen = setter < group_end
            value = base_value[side][np.where(seen, setter, len(filled))]
            keep_old = ~began_here & carried & self._base_set[group_key, side]
            self._base[group_key, side] = np.where(keep_old, self._base[group_key, side], value)
            self._base_set[group_key, side] = keep_old | seen

    def _key_ids(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Key id of each segment's address pair; and, per key id, whether it is new."""
        h = _hash(words)
        # hash-based factorizing (codes in order of first appearance) beats sorting
        inverse, unique = pd.factorize(h)
        unique = np.asarray(unique, dtype=np.uint64)
        first = np.flatnonzero(inverse > np.maximum.accumulate(np.r_[-1, inverse[:-1]]))
        at = np.searchsorted(self._hashes, unique)
        known = at < len(self._hashes)
        known[known] = self._hashes[at[known]] == unique[known]
        ids = np.empty(len(unique), dtype=np.int64)
        ids[known] = self._hash_ids[at[known]]
        new = ~known
        count = len(self._keys)
        ids[new] = count + np.arange(int(new.sum()))
        if new.any():
            # np.insert keeps the given order among equal positions: insert sorted
            by_hash = np.argsort(unique[new])
            self._hashes = np.insert(self._hashes, at[new][by_hash], unique[new][by_hash])
            self._hash_ids = np.insert(self._hash_ids, at[new][by_hash], ids[new][by_hash])
            self._keys = np.concatenate((self._keys, words[first[new]]))
            self._grow(len(self._keys))
        kid = ids[inverse.ravel()]
        if not (self._keys[kid] == words).all():
            raise NativeUnsupported("address-pair hash collision (use tshark for this file)")
        fresh = np.zeros(len(self._keys), dtype=bool)
        fresh[ids[new]] = True
        return kid, fresh

    def _grow(self, size: int) -> None:
        extra = size - len(self._stream)
        if extra > 0:
            self._stream = np.concatenate((self._stream, np.full(extra, -1, np.int64)))
            self._base_set = np.concatenate((self._base_set, np.zeros((extra, 2), bool)))
            self._base = np.concatenate((self._base, np.zeros((extra, 2), np.int64)))


def _keys(seg: Segments) -> tuple[np.ndarray, np.ndarray]:
    """The unordered address pair of each segment as 5 uint64 words, and the direction
    (0 if the source is the lower endpoint)."""
    src_first = (seg.src_hi < seg.dst_hi) | (
        (seg.src_hi == seg.dst_hi)
        & ((seg.src_lo < seg.dst_lo) | ((seg.src_lo == seg.dst_lo) & (seg.sport <= seg.dport)))
    )
    lo_hi = np.where(src_first, seg.src_hi, seg.dst_hi)
    lo_lo = np.where(src_first, seg.src_lo, seg.dst_lo)
    hi_hi = np.where(src_first, seg.dst_hi, seg.src_hi)
    hi_lo = np.where(src_first, seg.dst_lo, seg.src_lo)
    lo_port = np.where(src_first, seg.sport, seg.dport).astype(np.uint64)
    hi_port = np.where(src_first, seg.dport, seg.sport).astype(np.uint64)
    head = seg.version.astype(np.uint64) | lo_port << np.uint64(8) | hi_port << np.uint64(24)
    words = np.stack([head, lo_hi, lo_lo, hi_hi, hi_lo], axis=1)
    return words, (~src_first).astype(np.int64)


def _hash(words: np.ndarray) -> np.ndarray:
    h = np.zeros(len(words), dtype=np.uint64)
    for column in range(words.shape[1]):
        h = (h ^ words[:, column]) * _MIX  # wraps modulo 2**64
        h ^= h >> np.uint64(31)
    return h
