"""Split the packet table into connections; decide roles; give each a stable flow_id.

Unit (docs/teardown-taxonomy.md): one TCP conversation on a 4-tuple. A SYN without ACK
starts a new connection unless it repeats the sequence number of the SYN the current
connection began with (a retransmitted attempt, as Windows retries a refused SYN).
Everything is whole-column NumPy: the packets are sorted by (4-tuple, frame) once and
each connection is a contiguous run of that order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tcp_teardown import tcpflags as tf
from tcp_teardown.arrays import from_numpy, scalar, strings, to_numpy
from tcp_teardown.codes import factorize
from tcp_teardown.hashing import combine_row_hashes, hash_int64, hash_text

WELL_KNOWN_LIMIT = 1024  # IANA system ports: a side on one of these is the server
EPHEMERAL_START = 32768  # ports from here up are what stacks hand out to clients (Linux 32768+, Windows 49152+)

# Registered ports (1024-49151) that servers commonly listen on. Older stacks (Windows
# before Vista, BSD) hand out client ports from 1024-5000, so "registered" alone does not
# name the server: these do. Declared as data, the same on every machine (no /etc/services).
SERVICE_PORTS = frozenset({
    1080,  # SOCKS
    1433, 1521, 3306, 5432, 27017, 6379, 9042, 11211,  # databases and caches
    1883, 5672, 9092, 2181, 61616,  # message brokers
    1194, 1723, 3389, 5900, 5938,  # VPN, remote desktop
    2049, 3128, 3268, 3269, 5060, 5061, 5222, 5269, 5985, 5986, 6443, 6667,  # misc services
    8000, 8008, 8080, 8081, 8088, 8443, 8888, 9000, 9090, 9200, 9443, 10080,  # web, proxies, APIs
})

# Packets first_probed tests at the start of every window before searching the windows.
PROBES = 2

# How server-like a port is, by class: higher wins when the two sides differ.
PORT_WELL_KNOWN, PORT_SERVICE, PORT_REGISTERED, PORT_EPHEMERAL = 3, 2, 1, 0


@dataclass
class Segments:
    """The packets of one capture in connection order (by connection, then frame).

    Each connection is the contiguous run starts[c]..ends[c]-1, so per-connection
    questions are answered from those bounds (binary searches over the few rows that
    match, sums over runs) rather than by spreading connection ids over every packet.
    """

    conn: np.ndarray  # connection index of each packet (0..C-1, non-decreasing)
    frame: np.ndarray
    ts: np.ndarray
    flags: np.ndarray
    seq: np.ndarray
    ack: np.ndarray
    payload: np.ndarray
    ttl: np.ndarray
    c2s: np.ndarray  # True where the client sent the packet
    starts: np.ndarray  # index of each connection's first packet
    ends: np.ndarray  # index one past each connection's last packet

    @property
    def count(self) -> int:
        return len(self.starts)

    @cached_property
    def sizes(self) -> np.ndarray:
        """Packets per connection (never 0: a connection is made of its packets)."""
        return self.ends - self.starts

    def first_among(self, hits: np.ndarray) -> np.ndarray:
        """Per connection, the first of these (ascending) packet indices, else -1."""
        if len(hits) > 2 * self.count:  # many hits: a binary search per connection is cheaper
            return first_in_runs(hits, self.starts, self.ends)
        return first_per_group(self.conn[hits], hits, self.count)

    def first_between(self, mask: np.ndarray, after: np.ndarray, before: np.ndarray) -> np.ndarray:
        """Per connection c, the first packet strictly between indices after[c] and before[c]
        (clipped to c) where `mask` holds, else -1."""
        lower = np.clip(after + 1, self.starts, self.ends)
        upper = np.clip(before, lower, self.ends)
        if len(mask) == 0:
            return np.full(self.count, -1, dtype=np.int64)

        def in_the_rest(pending: np.ndarray, at: np.ndarray, end: np.ndarray) -> np.ndarray:
            packets = spans(at, end)
            return self.first_among(packets[mask[packets]])[pending]

        return first_probed(lower, upper, lambda at: mask[at], in_the_rest)

    def last_among(self, hits: np.ndarray) -> np.ndarray:
        """Per connection, the last of these (ascending) packet indices, else -1."""
        if len(hits) > 2 * self.count:  # many hits: a binary search per connection is cheaper
            return last_in_runs(hits, self.starts, self.ends)
        return last_per_group(self.conn[hits], hits, self.count)

    def slice(self, c0: int, c1: int) -> Segments:
        """Connections c0..c1-1 as their own Segments (array views; connection ids rebased)."""
        p0 = int(self.starts[c0]) if c1 > c0 else 0
        p1 = int(self.ends[c1 - 1]) if c1 > c0 else 0
        view = slice(p0, p1)
        return Segments(
            conn=self.conn[view] - c0, frame=self.frame[view], ts=self.ts[view], flags=self.flags[view],
            seq=self.seq[view], ack=self.ack[view], payload=self.payload[view], ttl=self.ttl[view],
            c2s=self.c2s[view],
            starts=self.starts[c0:c1] - p0, ends=self.ends[c0:c1] - p0,
        )

    def count_where(self, selected: np.ndarray) -> np.ndarray:
        """Per connection, how many packets are selected (a boolean mask or packet indices)."""
        if selected.dtype == np.bool_:
            return self.sum_over(selected)
        return np.bincount(self.conn[selected], minlength=self.count).astype(np.int64)

    def sum_over(self, values: np.ndarray) -> np.ndarray:
        """Per connection, the int64 sum of a per-packet (integer or boolean) array."""
        if self.count == 0:
            return np.zeros(0, dtype=np.int64)
        # Each connection is one non-empty run: one sequential pass adds them all up.
        return np.add.reduceat(values, self.starts, dtype=np.int64)

    def sum_before(self, values: np.ndarray, before: np.ndarray) -> np.ndarray:
        """Per connection c, the int64 sum of `values` over its packets before index
        before[c] (clipped to the connection)."""
        if self.count == 0:
            return np.zeros(0, dtype=np.int64)
        before = np.clip(before, self.starts, self.ends)
        # One reduceat over the bounds start, before, start, before, ...: the even results
        # are the sums wanted, except that an empty range reads one value (zeroed below).
        bounds = np.empty(2 * self.count, dtype=np.int64)
        bounds[0::2], bounds[1::2] = self.starts, before
        last_reaches_end = bool(before[-1] == len(values))
        if last_reaches_end:
            bounds[-1] = self.starts[-1]  # reduceat cannot take the end as a bound
        sums = np.add.reduceat(values, bounds, dtype=np.int64)[0::2]
        if last_reaches_end:
            sums[-1] = values[self.starts[-1]:].sum(dtype=np.int64)
        return np.where(before > self.starts, sums, 0)

    def per_packet(self, per_conn: np.ndarray) -> np.ndarray:
        """Spread a per-connection array over that connection's packets."""
        # Runs are contiguous: repeating is a sequential write, cheaper than gathering by conn.
        return np.repeat(per_conn, self.sizes)

    def packets_of(self, selected: np.ndarray) -> np.ndarray:
        """The (ascending) packet indices of the connections the per-connection mask selects."""
        return spans(self.starts[selected], self.ends[selected])

    def packets_after(self, after: np.ndarray) -> np.ndarray:
        """The (ascending) packet indices past `after[c]` in each connection c;
        a negative after[c] (no such packet) selects none of c."""
        lower = np.where(after >= 0, np.clip(after + 1, self.starts, self.ends), self.ends)
        return spans(lower, self.ends)


def first_per_group(groups: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    """Per group 0..count-1, its first value, else -1 (`groups` sorted, one per value)."""
    first = np.r_[True, groups[1:] != groups[:-1]] if len(groups) else np.zeros(0, bool)
    out = np.full(count, -1, dtype=np.int64)
    out[groups[first]] = values[first]
    return out


def last_per_group(groups: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    """Per group 0..count-1, its last value, else -1 (`groups` sorted, one per value)."""
    last = np.r_[groups[1:] != groups[:-1], True] if len(groups) else np.zeros(0, bool)
    out = np.full(count, -1, dtype=np.int64)
    out[groups[last]] = values[last]
    return out


def spans(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """The indices lower[i]..upper[i]-1 of every span (ascending, disjoint), as one array."""
    lengths = upper - lower
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # Inside a span the index steps by one; each span shifts the running count to its start.
    shift = np.repeat(lower - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(total)


def first_in_runs(hits: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Per run i, the first of the ascending indices `hits` in lower[i]..upper[i]-1, else -1.

    One binary search per run over the hits: no pass over every packet.
    """
    if len(hits) == 0:
        return np.full(len(lower), -1, dtype=np.int64)
    at = np.searchsorted(hits, lower)
    first = hits[np.minimum(at, len(hits) - 1)]
    return np.where((at < len(hits)) & (first < upper), first, -1).astype(np.int64, copy=False)


def last_in_runs(hits: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Per run i, the last of the ascending indices `hits` in lower[i]..upper[i]-1, else -1."""
    before_end = np.searchsorted(hits, upper) - 1
    last = hits[np.maximum(before_end, 0)] if len(hits) else np.zeros(len(lower), np.int64)
    return np.where((before_end >= 0) & (last >= lower), last, -1).astype(np.int64, copy=False)


@dataclass
class Identity:
    """Who each connection is: one row per connection, in Segments order."""

    addresses: pa.StringArray  # the capture's addresses as text; the *_ip columns index it
    client_ip: np.ndarray
    client_port: np.ndarray  # int32
    server_ip: np.ndarray
    server_port: np.ndarray  # int32
    ip_version: np.ndarray  # int8
    roles_guessed: np.ndarray  # bool
    tcp_stream: np.ndarray  # int64, -1 where unknown
    pair: np.ndarray  # code of the 4-tuple (ip, port, ip, port)
    client_isn: np.ndarray  # int64, -1 where unknown
    flow_id: np.ndarray  # 16 hex digits (bytes)

    def text(self, codes: np.ndarray) -> pa.Array:
        return self.addresses.take(from_numpy(codes))


@dataclass
class Split:
    """The result of splitting: segments plus per-connection identity columns."""

    segments: Segments
    identity: Identity

    def slices(self, packets: int) -> list[tuple[int, int]]:
        """Connection ranges of about `packets` packets each, never cutting a 4-tuple in two."""
        count = self.segments.count
        if count == 0:
            return []
        pair = self.identity.pair
        pair_first = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])  # connection index
        position = self.segments.starts[pair_first]
        target = np.arange(packets, int(self.segments.ends[-1]), packets)
        cuts = np.unique(pair_first[np.searchsorted(position, target, side="right") - 1])
        bounds = [0, *[int(c) for c in cuts if 0 < c < count], count]
        return list(pairwise(bounds))


def split_connections(packets: pa.Table) -> Split:
    """Connections of one capture's packet table (schema.PACKETS)."""
    n = packets.num_rows
    addresses, src_ip, dst_ip = _address_codes(packets)
    src_ep = _endpoints(src_ip, _np(packets, "src_port"))
    dst_ep = _endpoints(dst_ip, _np(packets, "dst_port"))
    del src_ip, dst_ip
    order, key = _pair_order(_pair_key(np.minimum(src_ep, dst_ep), np.maximum(src_ep, dst_ep)))
    src_ep = src_ep[order]
    flags = _np(packets, "tcp_flags")[order]
    seq = _np(packets, "seq_raw")[order]
    ack = _np(packets, "ack_raw")[order]

    # SYNs and SYN-ACKs are a small share of the packets: found once, used by every step below.
    opening = np.flatnonzero((flags & (tf.SYN | tf.RST)) == tf.SYN)
    opening_acks = tf.has_ack(flags[opening])
    pure_syn, syn_ack = opening[~opening_acks], opening[opening_acks]
    starts = _connection_starts(key, opening, opening_acks, seq, ack)
    ends = np.r_[starts[1:], n].astype(np.int64)
    conn = np.repeat(np.arange(len(starts), dtype=np.int32), ends - starts)
    first_syn = _first_opening(pure_syn, lambda at: tf.is_pure_syn(flags[at]), starts, ends)
    first_syn_ack = _first_opening(syn_ack, lambda at: tf.is_syn_ack(flags[at]), starts, ends)
    payload = _np(packets, "payload_len")[order]

    def receiver(at: np.ndarray) -> np.ndarray:
        """Endpoint of the receiver of the packets at these (sorted) positions."""
        return dst_ep[order[at]]

    def listening() -> np.ndarray:
        # Endpoints that received a SYN or sent a SYN-ACK anywhere in the capture listen:
        # in a connection whose opening was not captured they are the server too.
        return np.r_[receiver(pure_syn), src_ep[syn_ack]]

    client_ep, server_ep, guessed = _roles(src_ep, receiver, payload, starts, ends, first_syn,
                                           first_syn_ack, listening)
    c2s = src_ep == np.repeat(client_ep, ends - starts)
    segments = Segments(
        conn=conn, frame=_np(packets, "frame_number")[order],
        ts=_np(packets, "ts")[order], flags=flags, seq=seq,
        ack=ack,
        payload=payload,
        ttl=_np(packets, "ttl")[order],
        c2s=c2s, starts=starts, ends=ends,
    )
    first_packet = order[starts]
    client_isn = np.where(first_syn >= 0, seq[np.maximum(first_syn, 0)], -1)
    synack_isn_hint = np.where(
        first_syn_ack >= 0,
        tf.seq_mod(ack[np.maximum(first_syn_ack, 0)] - 1), -1
    )
    identity = Identity(
        addresses=addresses,
        client_ip=client_ep >> 16,  # endpoint = ip * 65536 + port (both non-negative)
        client_port=(client_ep & 0xFFFF).astype(np.int32),
        server_ip=server_ep >> 16,
        server_port=(server_ep & 0xFFFF).astype(np.int32),
        ip_version=_np(packets, "ip_version")[first_packet],
        roles_guessed=guessed,
        tcp_stream=_first_tcp_stream(packets, first_packet),
        pair=_pair_numbers(key[starts]),
        client_isn=np.where(client_isn >= 0, client_isn, synack_isn_hint),
        flow_id=np.zeros(0, "S16"),
    )
    identity.flow_id = flow_ids(identity)
    return Split(segments, identity)


def _endpoints(ip: np.ndarray, port: np.ndarray) -> np.ndarray:
    """ip * 65536 + port, one integer per endpoint (computed in the codes' own buffer)."""
    ip *= 65536
    ip += port
    return ip


def _first_opening(hits: np.ndarray, holds: Callable[[np.ndarray], np.ndarray],
                   starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """first_in_runs(hits, starts, ends), where `holds` tells whether the packets at given
    positions are hits (a connection's SYN or SYN-ACK is mostly its first or second packet)."""
    return first_probed(starts, ends, holds, lambda _, at, end: first_in_runs(hits, at, end))


def first_probed(lower: np.ndarray, upper: np.ndarray, holds: Callable[[np.ndarray], np.ndarray],
                 in_the_rest: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Per window lower[i]..upper[i]-1, the first position where `holds` (given positions,
    whether each is a hit), else -1.

    What is looked for mostly sits at a window's start (the SYN-ACK after the SYN, the ACK
    right after the SYN-ACK): the first PROBES positions of every window are tested
    directly, and only the windows still open are searched, by
    `in_the_rest(windows, from, to)`, which gives their first hit in from..to-1 or -1."""
    out = np.full(len(lower), -1, dtype=np.int64)
    pending = np.flatnonzero(lower < upper)
    at, end = lower[pending], upper[pending]
    for _ in range(PROBES):
        hit = holds(at)
        out[pending[hit]] = at[hit]
        at = at + 1
        unresolved = ~hit & (at < end)
        pending, at, end = pending[unresolved], at[unresolved], end[unresolved]
    out[pending] = in_the_rest(pending, at, end)
    return out


def _first_tcp_stream(packets: pa.Table, first_packet: np.ndarray) -> np.ndarray:
    """tcp_stream of each connection's first packet, -1 where unknown (taken before filling:
    one value per connection, not per packet)."""
    streams = packets.column("tcp_stream").take(from_numpy(first_packet))
    return to_numpy(pc.fill_null(streams, scalar(-1, pa.int64())))


def address_codes(packets: pa.Table) -> tuple[pa.StringArray, np.ndarray]:
    """The distinct addresses, and each packet's source then destination address as an index
    into them (sources first: length 2n)."""
    addresses, sources, destinations = _address_codes(packets)
    return addresses, np.concatenate([sources, destinations])


def _address_codes(packets: pa.Table) -> tuple[pa.StringArray, np.ndarray, np.ndarray]:
    """The distinct addresses (first-seen order over the chunks' dictionaries, as Arrow
    unifies them), and each packet's source and destination address as an index into them."""
    both = pa.chunked_array(packets.column("src_ip").chunks + packets.column("dst_ip").chunks,
                            packets.schema.field("src_ip").type)
    if not pa.types.is_dictionary(both.type):
        both = pc.dictionary_encode(both)
    if both.num_chunks == 0:
        return strings([]), np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Unify the (small) dictionaries only, then map each chunk's indices through a lookup
    # table: the indices are read once and come out as int64 codes.
    dictionaries = [chunk.dictionary for chunk in both.chunks]
    unified = pc.dictionary_encode(pa.concat_arrays(dictionaries))
    remap = to_numpy(unified.indices).astype(np.int64)
    bounds = np.cumsum([0] + [len(d) for d in dictionaries])
    codes = [_remapped(to_numpy(chunk.indices), remap[lo:hi])
             for chunk, lo, hi in zip(both.chunks, bounds[:-1], bounds[1:], strict=True)]
    sources = packets.column("src_ip").num_chunks
    return (unified.dictionary, _joined(codes[:sources]), _joined(codes[sources:]))


def _remapped(indices: np.ndarray, remap: np.ndarray) -> np.ndarray:
    """remap[indices] as int64; most chunks share the first dictionary (remap 0, 1, 2, ...)."""
    if np.array_equal(remap, np.arange(len(remap))):
        return indices.astype(np.int64)
    # Arrow guarantees the indices are in range: no bounds check needed (clip is the fast mode).
    return np.take(remap, indices, mode="clip")


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts or [np.zeros(0, np.int64)])


def _pair_key(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """One integer per (lo, hi) endpoint pair, ordered as (lo, hi) when endpoints are narrow
    enough; `lo` is overwritten (the key is built in its buffer, no new array of n)."""
    span = int(hi.max()) + 1 if len(hi) else 1
    # Below 2**31, lo * span + hi fits in 63 bits: one integer key per pair, no hashing.
    if span >= 1 << 31:
        return _numbered_pair_key(lo, hi)
    lo *= span
    lo += hi
    return lo


def _pair_order(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The packet order by (pair key, capture order), and the keys in that order."""
    # A stable sort keeps capture order within a pair; clients count their ports up over
    # time, so the key arrives nearly sorted and the sort is cheap.
    order = np.argsort(key, kind="stable")
    return order, key[order]


def _pair_numbers(keys: np.ndarray) -> np.ndarray:
    """Ascending pair keys numbered 0, 1, ... (equal keys, equal numbers)."""
    if len(keys) == 0:
        return np.zeros(0, np.int64)
    return np.cumsum(np.r_[False, keys[1:] != keys[:-1]])


def _numbered_pair_key(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """One integer per (lo, hi) pair when endpoint codes are too wide to combine directly
    (many addresses): `lo` numbered by Arrow's hash first (numbers below n), then combined
    with `hi` as it is, or with `hi` numbered too when even that would not fit 63 bits."""
    if len(lo) == 0:
        return np.zeros(0, np.int64)
    lo_number, lo_distinct = factorize(lo)
    hi_low = int(hi.min())
    hi_span = int(hi.max()) - hi_low + 1
    if len(lo_distinct) * hi_span < 1 << 63:  # the usual case: one hash pass, not two
        lo_number *= hi_span
        lo_number += hi - hi_low
        return lo_number
    hi_number, hi_distinct = factorize(hi)
    return lo_number * len(hi_distinct) + hi_number


def pair_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense codes of the (a, b) pairs, without building a Python tuple per row."""
    if len(a) == 0:
        return np.zeros(0, np.int64)
    return factorize(_numbered_pair_key(a, b))[0]


def _np(table: pa.Table, name: str) -> np.ndarray:
    return to_numpy(table.column(name))


def _connection_starts(key: np.ndarray, opening: np.ndarray, opening_acks: np.ndarray,
                       seq: np.ndarray, ack: np.ndarray) -> np.ndarray:
    """Index of each connection's first packet, packets sorted by (pair key, capture order);
    `opening` are the SYN and SYN-ACK rows (without RST, ascending), `opening_acks` which of
    them are SYN-ACKs."""
    n = len(key)
    if n == 0:
        return np.zeros(0, np.int64)
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(key[1:], key[:-1], out=new[1:])
    # Inside a 4-tuple only a SYN starts a connection: decide on the SYN and SYN-ACK rows
    # alone, each SYN against the SYN and the SYN-ACK just before it (if in its pair).
    at = np.flatnonzero(~opening_acks)  # where the SYNs are among the opening rows
    syn, syn_ack = opening[at], opening[opening_acks]
    if len(syn) == 0:
        return np.flatnonzero(new)
    syn_key, syn_seq = key[syn], seq[syn]
    prev_syn = np.r_[-1, syn[:-1]]
    repeats = np.r_[False, (syn_key[1:] == syn_key[:-1]) & (syn_seq[1:] == syn_seq[:-1])]
    # Opening rows before the k-th SYN: k SYNs, the rest SYN-ACKs; the last of those is its.
    syn_acks_before = at - np.arange(len(at))
    prev_syn_ack = np.where(syn_acks_before > 0, syn_ack[np.maximum(syn_acks_before - 1, 0)]
                            if len(syn_ack) else -1, -1)
    known = np.maximum(prev_syn_ack, 0)
    # A SYN captured after the SYN-ACK that answers it (the capture point reordered the
    # handshake, or sits nearer the server): that SYN-ACK already began this attempt.
    answered = ((prev_syn_ack > prev_syn) & (key[known] == syn_key)
                & (ack[known] == tf.seq_mod(syn_seq + 1)))
    new[syn[~repeats & ~answered]] = True
    return np.flatnonzero(new)


def _roles(
    src_ep: np.ndarray, receiver: Callable[[np.ndarray], np.ndarray], payload: np.ndarray,
    starts: np.ndarray, ends: np.ndarray, first_syn: np.ndarray, first_syn_ack: np.ndarray,
    listening: Callable[[], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Client and server endpoint of each connection, and whether that was guessed
    (`receiver` gives the receiving endpoint of packets; `listening` the endpoints seen
    answering SYNs, asked only when some connection has neither SYN nor SYN-ACK).

    In order: the sender of the first SYN is the client; else the sender of a SYN-ACK is
    the server; else (a guess) the side that answers SYNs elsewhere in the capture; else
    the side whose port is more server-like (well-known, then a common service port, then
    registered against ephemeral); else, both ports alike, the side whose first payload
    answers the other's first payload (request, then response); else the lower port.
    """
    a, b = src_ep[starts], receiver(starts)  # sender and receiver of the first packet
    client = src_ep[np.maximum(first_syn, 0)]
    by_syn_ack = np.flatnonzero((first_syn < 0) & (first_syn_ack >= 0))
    client[by_syn_ack] = receiver(first_syn_ack[by_syn_ack])
    # The guess is needed for connections whose opening was not captured at all.
    guessed = np.flatnonzero((first_syn < 0) & (first_syn_ack < 0))
    if len(guessed):
        a_is_server = _first_sender_serves(src_ep, payload, starts[guessed], ends[guessed],
                                           a[guessed], b[guessed], listening())
        client[guessed] = np.where(a_is_server, b[guessed], a[guessed])
    server = np.where(client == a, b, a)
    return client, server, first_syn < 0


def _first_sender_serves(src_ep: np.ndarray, payload: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                         a: np.ndarray, b: np.ndarray, listening: np.ndarray) -> np.ndarray:
    """Per connection (packets starts..ends-1; `a` sent its first packet to `b`), whether
    `a` looks like the server: it answers SYNs elsewhere, its port is more server-like, or
    its first payload answers b's; else the lower port serves."""
    count = len(starts)
    listens = _is_in(np.concatenate([a, b]), listening)
    a_listens, b_listens = listens[:count], listens[count:]
    packets = spans(starts, ends)
    data = packets[payload[packets] > 0]
    # A packet of the connection not sent by `a` was sent by `b` (unless a is b: then both).
    data_per_connection = np.searchsorted(data, ends) - np.searchsorted(data, starts)
    from_a = src_ep[data] == np.repeat(a, data_per_connection)
    a_first_data = first_in_runs(data[from_a], starts, ends)
    b_first_data = np.where(a == b, a_first_data, first_in_runs(data[~from_a], starts, ends))
    a_answers = (a_first_data >= 0) & (b_first_data >= 0) & (b_first_data < a_first_data)
    b_answers = (a_first_data >= 0) & (b_first_data >= 0) & (a_first_data < b_first_data)
    port_a, port_b = a % 65536, b % 65536
    class_a, class_b = port_class(port_a), port_class(port_b)
    return np.select(
        [a_listens & ~b_listens, b_listens & ~a_listens, class_a > class_b, class_b > class_a,
         (class_a < PORT_SERVICE) & a_answers, (class_a < PORT_SERVICE) & b_answers],
        [True, False, True, False, True, False],
        default=port_a < port_b,
    )


def _is_in(values: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Whether each value occurs in `among`: a binary search in its sorted copy.
    (np.isin hashes both arrays whole when their range is wide: many addresses.)"""
    if len(among) == 0:
        return np.zeros(len(values), dtype=bool)
    sorted_among = np.sort(among)
    at = np.minimum(np.searchsorted(sorted_among, values), len(sorted_among) - 1)
    return sorted_among[at] == values


def port_class(port: np.ndarray) -> np.ndarray:
    """How server-like each port (0-65535) is: well-known > common service > registered > ephemeral."""
    return _PORT_CLASS[np.asarray(port)]


def _classify_ports(port: np.ndarray) -> np.ndarray:
    return np.select(
        [port < WELL_KNOWN_LIMIT, np.isin(port, list(SERVICE_PORTS)), port < EPHEMERAL_START],
        [PORT_WELL_KNOWN, PORT_SERVICE, PORT_REGISTERED], default=PORT_EPHEMERAL,
    )


# Every port's class, looked up rather than recomputed (a set lookup per connection costs a sort).
_PORT_CLASS = _classify_ports(np.arange(65536))


def flow_ids(identity: Identity) -> np.ndarray:
    """A flow id from the 4-tuple and the client's ISN: the same wherever a file or chunk starts.

    Without a SYN (capture began mid-stream) the ISN is unknown; such a connection is
    identified by its 4-tuple alone, which is what joins its pieces across files.
    The id is the row hash pandas gives ("client_ip|client_port", "server_ip|server_port",
    isn), as 16 hex digits: the ids earlier releases wrote.
    """
    if len(identity.client_port) == 0:
        return np.zeros(0, "S16")

    def endpoint_hash(ip: np.ndarray, port: np.ndarray) -> np.ndarray:
        # Each distinct endpoint is written and hashed once (hashing numbers them fastest).
        numbers, distinct = factorize(ip * 65536 + port)
        text = pc.binary_join_element_wise(identity.text(distinct >> 16),
                                           from_numpy(distinct & 0xFFFF).cast(pa.string()),
                                           scalar("|", pa.string()))
        return hash_text(text)[numbers]

    hashed = combine_row_hashes((endpoint_hash(identity.client_ip, identity.client_port),
                                 endpoint_hash(identity.server_ip, identity.server_port),
                                 hash_int64(identity.client_isn)))
    return np.frombuffer(hashed.astype(">u8").tobytes().hex().encode(), dtype="S16")
