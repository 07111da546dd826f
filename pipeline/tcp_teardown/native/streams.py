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

Segments are grouped by pair with one sort of an integer key (pair hash, position).
Whether a SYN starts a new conversation depends on where the current one began, i.e. on
the decisions about the SYNs before it on the pair; those decisions are found for all
pairs at once by fixed-point rounds (see `_resolve_splits`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from tcp_teardown.codes import factorize
from tcp_teardown.native.decode import Segments
from tcp_teardown.native.errors import NativeUnsupported
from tcp_teardown.native.views import blocks, is_in

SYN = 0x002
ACK = 0x010
MASK32 = 0xFFFFFFFF
_MIX = np.uint64(0x9E3779B97F4A7C15)
_SIX = np.uint64(0x6A09E667F3BCC909)  # keeps IPv6 pairs apart from IPv4 ones
# Rounds of the vectorized split resolution before the pairs still undecided are done
# one SYN at a time (a pair with n candidate SYNs needs at most n + 1 rounds).
SPLIT_ROUNDS = 16


@dataclass
class PairKeys:
    """The unordered address/port pair of each segment."""

    hash: np.ndarray  # uint64, equal for equal pairs
    direction: np.ndarray  # bool: the source is the higher endpoint
    words: list[np.ndarray]  # uint64 columns that together tell pairs apart exactly
    ipv4_only: bool  # words are (lower, higher endpoint) as in `_ipv4_keys`

    def canonical(self, rows: np.ndarray) -> np.ndarray:
        """The pairs of `rows` in one form for every window: (n, 5) uint64, as
        `_mixed_keys` words them."""
        if not self.ipv4_only:
            return np.stack([column[rows] for column in self.words], axis=1)
        low, high = (column[rows] for column in self.words)
        port = np.uint64(0xFFFF)
        out = np.zeros((len(rows), 5), dtype=np.uint64)
        out[:, 0] = np.uint64(4) | (low & port) << np.uint64(8) | (high & port) << np.uint64(24)
        out[:, 2] = low >> np.uint64(16)
        out[:, 4] = high >> np.uint64(16)
        return out


@dataclass
class Groups:
    """Segments sorted by pair, capture order within a pair."""

    order: np.ndarray  # int64 segment index of each sorted position
    start: np.ndarray  # int64 first sorted position of each pair group
    end: np.ndarray  # int64 one past its last
    opens: np.ndarray  # bool: whether each sorted position is a group's first


@dataclass
class Candidates:
    """SYNs without ACK that may start a new conversation, in pair order."""

    position: np.ndarray  # int64 sorted position
    group: np.ndarray  # int64 pair group
    side: np.ndarray  # int64 0/1: the direction the SYN goes
    seq: np.ndarray  # int64
    # the pair's conversation from earlier windows has this side's base, and which it is
    stored: np.ndarray  # bool
    stored_base: np.ndarray  # int64

    def take(self, index: np.ndarray) -> Candidates:
        return Candidates(**{k: v[index] for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return len(self.position)


class StreamTracker:
    """Assigns tcp.stream numbers to the segments of consecutive windows of one file."""

    def __init__(self) -> None:
        self.next_stream = 0
        self._hashes = np.zeros(0, dtype=np.uint64)  # sorted
        self._hash_ids = np.zeros(0, dtype=np.int64)  # pair id of each sorted hash
        self._keys = np.zeros((0, 5), dtype=np.uint64)  # full key of each pair id
        # per pair id: the current conversation's stream and base sequence numbers
        self._stream = np.zeros(0, dtype=np.int64)
        self._base_set = np.zeros((0, 2), dtype=bool)
        self._base = np.zeros((0, 2), dtype=np.int64)

    def assign(self, seg: Segments, out: np.ndarray | None = None) -> np.ndarray:
        """tcp.stream of each segment (in the order given, which must be capture order),
        in `out` if given."""
        n = len(seg)
        if n == 0:
            return np.zeros(0, dtype=np.int64) if out is None else out
        keys = _pair_keys(seg)
        groups = _group(keys)
        key, carried = self._pair_ids(keys, groups)  # carried: known from earlier windows
        self._grow(len(self._keys))
        window = _Window(seg, keys.direction, groups)

        syns = self._candidates(window, key, carried)
        split = _resolve_splits(window, syns)
        # Where each conversation seen in this window begins: new ones, and the pairs'
        # ongoing ones from earlier windows (at the group start, unless a SYN split there).
        is_new = np.zeros(n, dtype=bool)
        is_new[syns.position[split]] = True
        is_new[groups.start[~carried]] = True
        is_bound = is_new.copy()
        is_bound[groups.start] = True
        bounds = np.flatnonzero(is_bound)
        new = is_new[bounds]
        # the index in bounds of each group's first and last conversation start
        first_bound = np.flatnonzero(groups.opens[bounds])
        last_bound = np.append(first_bound[1:], len(bounds)) - 1
        stream = np.empty(len(bounds), dtype=np.int64)
        # New streams are numbered in capture order of their first segment.
        first_segment = groups.order[bounds[new]]
        rank = np.empty(len(first_segment), dtype=np.int64)
        rank[np.argsort(first_segment)] = np.arange(len(first_segment))
        stream[new] = self.next_stream + rank
        self.next_stream += len(first_segment)
        # (a start that is no new conversation is a group's first: one going on from before)
        ongoing = ~new[first_bound]
        stream[first_bound[ongoing]] = self._stream[key[ongoing]]

        self._carry(window, key, carried, bounds[last_bound], new[last_bound], stream[last_bound])
        result = np.empty(n, dtype=np.int64) if out is None else out
        result[groups.order] = np.repeat(stream, np.diff(bounds, append=n))
        return result

    def _candidates(self, window: _Window, key: np.ndarray, carried: np.ndarray) -> Candidates:
        q = window.candidate_positions(carried)
        group = window.group_of(q)
        segment = window.groups.order[q]
        side = window.direction[segment].astype(np.int64)
        pair = key[group]
        return Candidates(
            position=q,
            group=group,
            side=side,
            seq=window.seg.seq[segment],
            stored=carried[group] & self._base_set[pair, side],
            stored_base=self._base[pair, side],
        )

    def _carry(
        self,
        window: _Window,
        key: np.ndarray,
        carried: np.ndarray,
        began: np.ndarray,
        new: np.ndarray,
        stream: np.ndarray,
    ) -> None:
        """Keep each pair's current conversation (stream, bases) for the next window:
        the one that `began` (sorted position) in each group, `new` in this window."""
        groups = window.groups
        self._stream[key] = stream
        for side in (0, 1):
            setter = window.next_setter(began, side)
            seen = setter < groups.end
            value = window.base_value(setter, side)
            keep_old = ~new & carried & self._base_set[key, side]
            self._base[key, side] = np.where(keep_old, self._base[key, side], value)
            self._base_set[key, side] = keep_old | seen

    def _pair_ids(self, keys: PairKeys, groups: Groups) -> tuple[np.ndarray, np.ndarray]:
        """The pair id of each group (new pairs get the next free ids, in group order),
        and whether the pair was known before this window."""
        first = groups.order[groups.start]
        hashes = keys.hash[first]  # ascending, but for pairs `_group` had to tell apart
        at = np.searchsorted(self._hashes, hashes)
        known = at < len(self._hashes)
        known[known] = self._hashes[at[known]] == hashes[known]
        ids = np.empty(len(hashes), dtype=np.int64)
        ids[known] = self._hash_ids[at[known]]
        if known.any() and not (self._keys[ids[known]] == keys.canonical(first[known])).all():
            raise NativeUnsupported("address-pair hash collision (use tshark for this file)")
        new = np.flatnonzero(~known)
        if new.size:
            ids[new] = len(self._keys) + np.arange(len(new))
            by_hash = new[np.argsort(hashes[new])]  # np.insert keeps this order among equals
            self._hashes = np.insert(self._hashes, at[by_hash], hashes[by_hash])
            self._hash_ids = np.insert(self._hash_ids, at[by_hash], ids[by_hash])
            self._keys = np.concatenate((self._keys, keys.canonical(first[new])))
        return ids, known

    def _grow(self, size: int) -> None:
        extra = size - len(self._stream)
        if extra > 0:
            self._stream = np.concatenate((self._stream, np.full(extra, -1, np.int64)))
            self._base_set = np.concatenate((self._base_set, np.zeros((extra, 2), bool)))
            self._base = np.concatenate((self._base, np.zeros((extra, 2), np.int64)))


class _Window:
    """The segments of one window in pair order, and the questions the rules ask of them
    (answered for arrays of sorted positions)."""

    def __init__(self, seg: Segments, direction: np.ndarray, groups: Groups) -> None:
        self.n = len(seg)
        self.seg = seg
        self.direction = direction
        self.groups = groups
        n = self.n
        flags = seg.flags[groups.order]
        analyzed = seg.analyzed[groups.order]
        forward = direction[groups.order]
        has_ack = (flags & ACK) != 0
        # The sorted positions of the segments that set the base of side 0, and of side
        # 1, each ending in n ("none"; marked in the masks, which saves a copy).
        sets = np.ones((2, n + 1), dtype=bool)
        np.bitwise_or(has_ack, ~forward, out=sets[0, :n])
        np.bitwise_or(has_ack, forward, out=sets[1, :n])
        sets[:, :n] &= analyzed
        self._sets = sets
        self._syn_only = (flags & (SYN | ACK)) == SYN

    @functools.cached_property
    def _setters(self) -> list[np.ndarray]:
        """The sorted positions of the segments that set the base of side 0, and of side
        1; needed only when `next_setter` must look past the next segment."""
        return [np.flatnonzero(side) for side in self._sets]

    def group_of(self, position: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.groups.start, position, side="right") - 1

    def candidate_positions(self, carried: np.ndarray) -> np.ndarray:
        """Sorted positions of SYNs without ACK that might start a new conversation: all
        but the first segment of a pair new in this window (that one opens it anyway)."""
        maybe = self._syn_only.copy()
        maybe[self.groups.start[~carried]] = False
        return np.flatnonzero(maybe)

    def next_setter(self, position: np.ndarray, side: np.ndarray | int) -> np.ndarray:
        """The first position at or after `position` whose segment sets the base of
        `side`; n if none (maybe in a later group: callers compare with their limit)."""
        # Mostly the segment there (a SYN sets its own side's base) or the next one (the
        # SYN-ACK after it sets both): looked at directly, only the others searched for.
        found = np.full(len(position), -1)
        for step in (0, 1):
            at = np.minimum(position + step, self.n)
            hit = self._sets[side, at]
            hit &= found < 0
            found[hit] = at[hit]
        rest = np.flatnonzero(found < 0)
        if rest.size:
            sides = np.broadcast_to(side, position.shape)[rest]
            for one, setters in enumerate(self._setters):
                mine = rest[sides == one]
                found[mine] = setters[np.searchsorted(setters, position[mine])]
        return found

    def base_value(self, position: np.ndarray, side: np.ndarray | int) -> np.ndarray:
        """The base sequence number of `side` that the segment at `position` sets
        (garbage for position n, "none")."""
        i = self.groups.order[np.minimum(position, self.n - 1)]
        seg = self.seg
        same = self.direction[i] == (side == 1)
        # Each segment's own field only: these gathers hit the window's columns at
        # random, which is most of the cost.
        own, other = i[same], i[~same]
        value = np.empty(len(i), dtype=np.int64)
        value[same] = seg.seq[own] - ((seg.flags[own] & SYN) == 0)
        value[~same] = seg.ack[other] - 1
        value &= MASK32
        return value

    def _conversation_start(self, q: np.ndarray, group: np.ndarray, split: np.ndarray) -> np.ndarray:
        """The last earlier candidate of the same pair that splits; -1 if none."""
        previous = np.maximum.accumulate(np.where(split, q, -1))
        previous = np.concatenate(([-1], previous[:-1]))
        return np.where(previous >= self.groups.start[group], previous, -1)

    def splits(self, syns: Candidates, guess: np.ndarray) -> np.ndarray:
        """Decisions for candidates (whole pairs, in order) given guessed ones."""
        began = self._conversation_start(syns.position, syns.group, guess)
        use_stored = (began < 0) & syns.stored
        begin = np.where(began < 0, self.groups.start[syns.group], began)
        setter = self.next_setter(begin, syns.side)
        has_base = use_stored | (setter < syns.position)
        base = np.where(use_stored, syns.stored_base, self.base_value(setter, syns.side))
        return has_base & (syns.seq != base)

    def splits_in_order(self, syns: Candidates) -> np.ndarray:
        """The same decisions one candidate at a time. A conversation begins at the
        group start or at a candidate: the bases seen from there are looked up for all
        of those at once, so the loop only follows the decisions."""
        starts = self.groups.start[syns.group]
        from_start = [self._bases_from(starts, side) for side in (0, 1)]
        from_syn = [self._bases_from(syns.position, side) for side in (0, 1)]
        split = np.zeros(len(syns), dtype=bool)
        current_group, began = -1, -1
        columns = (syns.position, syns.group, syns.side, syns.seq, syns.stored, syns.stored_base)
        for i, (q, g, side, seq, stored, stored_base) in enumerate(
            zip(*(column.tolist() for column in columns), strict=True)
        ):
            if g != current_group:
                current_group, began = g, -1
            if began < 0 and stored:
                base = stored_base
            else:
                setter, base = from_start[side][i] if began < 0 else from_syn[side][began]
                if setter >= q:
                    continue  # no base yet: the SYN joins the conversation
            if seq != base:
                split[i] = True
                began = i
        return split

    def _bases_from(self, position: np.ndarray, side: int) -> list[tuple[int, int]]:
        """(position, value) of the first segment at or after each position that sets
        the base of `side`."""
        setter = self.next_setter(position, np.full(len(position), side))
        return list(zip(setter.tolist(), self.base_value(setter, side).tolist(), strict=True))


def _resolve_splits(window: _Window, syns: Candidates) -> np.ndarray:
    """Whether each candidate SYN starts a new conversation.

    A SYN's decision depends on where the current conversation began: at the last
    earlier SYN of its pair that split, or before. Each round decides every SYN as if
    the previous round's decisions were right; a pair whose decisions reproduce
    themselves is a fixed point, and the only one, since the first SYN of a pair
    depends on nothing and each later one only on those before it. Pairs still
    changing after SPLIT_ROUNDS are decided one SYN at a time."""
    split = np.ones(len(syns), dtype=bool)  # the first guess: every candidate splits
    todo = np.arange(len(syns))
    for _ in range(SPLIT_ROUNDS):
        if not todo.size:
            return split
        decided = window.splits(syns if len(todo) == len(syns) else syns.take(todo), split[todo])
        moved = decided != split[todo]
        if not moved.any():
            return split
        split[todo] = decided
        todo = todo[is_in(syns.group[todo], syns.group[todo[moved]])]
    if todo.size:
        split[todo] = window.splits_in_order(syns.take(todo))
    return split


def _group(keys: PairKeys) -> Groups:
    """Sort segments by pair, stably, with one sort of (hash << bits | position): the
    hash's low bits make way for the position. Pairs whose shortened hashes collide
    (rare) are told apart by their full hashes instead."""
    n = len(keys.hash)
    bits = max(n.bit_length(), 1)
    position = np.uint64((1 << bits) - 1)
    packed = keys.hash & ~position
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    order = (packed & position).view(np.int64)
    packed >>= np.uint64(bits)
    groups = _groups_of(order, packed)
    if not _one_pair_each(keys, groups):
        codes, _ = factorize(keys.hash)
        order = np.argsort(codes, kind="stable")
        groups = _groups_of(order, codes[order])
        if not _one_pair_each(keys, groups):
            raise NativeUnsupported("address-pair hash collision (use tshark for this file)")
    return groups


def _groups_of(order: np.ndarray, sorted_keys: np.ndarray) -> Groups:
    """Groups of equal consecutive keys (in sorted order)."""
    opens = np.empty(len(sorted_keys), dtype=bool)
    opens[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=opens[1:])
    start = np.flatnonzero(opens)
    return Groups(order=order, start=start, end=np.append(start[1:], len(order)), opens=opens)


def _one_pair_each(keys: PairKeys, groups: Groups) -> bool:
    """Whether all segments of each group have the same pair."""
    differs = np.empty(len(groups.order) - 1, dtype=bool)
    for column in keys.words:
        ranked = column[groups.order]
        np.not_equal(ranked[1:], ranked[:-1], out=differs)
        differs[groups.start[1:] - 1] = False  # a new group may differ from the one before
        if differs.any():
            return False
    return True


def _pair_keys(seg: Segments) -> PairKeys:
    v4 = seg.version == 4
    if v4.all():
        return _ipv4_keys(seg)
    return _mixed_keys(seg, v4)


def _ipv4_keys(seg: Segments) -> PairKeys:
    """IPv4 only: each endpoint as one number (address << 16 | port), so the pair is the
    smaller and the larger of two numbers. Made block by block: the temporaries stay in
    the cache."""
    n = len(seg)
    low, high = np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.uint64)
    hashed = np.empty(n, dtype=np.uint64)
    direction = np.empty(n, dtype=bool)
    for part in blocks(n):
        src = _endpoint(seg.src_lo[part], seg.sport[part])
        dst = _endpoint(seg.dst_lo[part], seg.dport[part])
        np.greater(src, dst, out=direction[part])
        np.minimum(src, dst, out=low[part])
        np.maximum(src, dst, out=high[part])
        hashed[part] = _hash2(low[part], high[part])
    return PairKeys(hash=hashed, direction=direction, words=[low, high], ipv4_only=True)


def _endpoint(address: np.ndarray, port: np.ndarray) -> np.ndarray:
    value = address << np.uint64(16)
    np.bitwise_or(value, port, out=value, dtype=np.uint64, casting="unsafe")
    return value


def _mixed_keys(seg: Segments, v4: np.ndarray) -> PairKeys:
    """Any mix of IPv4 and IPv6: the pair as 5 words (version and ports, then the lower
    endpoint's address halves, then the higher one's); IPv4 pairs hash as in
    `_ipv4_keys`, so a pair keeps its hash whatever else its window holds."""
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
    words = [head, lo_hi, lo_lo, hi_hi, hi_lo]
    low = _endpoint(lo_lo, lo_port)
    high = _endpoint(hi_lo, hi_port)
    four = _hash2(low, high)
    six = _hash2(four ^ _SIX, _hash2(lo_hi, hi_hi))
    hashed = np.where(v4, four, six)
    return PairKeys(hash=hashed, direction=~src_first, words=words, ipv4_only=False)


def _hash2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A 64-bit mix of two uint64 columns (wrapping multiplications). Only its top bits
    need to be well mixed (they sort pairs apart; equal hashes are checked exactly)."""
    h = a * _MIX
    h ^= b
    h *= _MIX
    return h
