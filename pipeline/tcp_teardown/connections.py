"""Split the packet table into connections; decide roles; give each a stable flow_id.

Unit (docs/teardown-taxonomy.md): one TCP conversation on a 4-tuple. A SYN without ACK
starts a new connection unless it repeats the sequence number of the SYN the current
connection began with (a retransmitted attempt, as Windows retries a refused SYN).
Everything is whole-column NumPy: the packets are sorted by (4-tuple, frame) once and
each connection is a contiguous run of that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tcp_teardown import tcpflags as tf
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

# How server-like a port is, by class: higher wins when the two sides differ.
PORT_WELL_KNOWN, PORT_SERVICE, PORT_REGISTERED, PORT_EPHEMERAL = 3, 2, 1, 0


@dataclass
class Segments:
    """The packets of one capture in connection order (by connection, then frame)."""

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

    def first_where(self, mask: np.ndarray) -> np.ndarray:
        """Per connection, the index of the first packet where `mask` holds, else -1."""
        return self.first_among(np.flatnonzero(mask))

    def first_among(self, hits: np.ndarray) -> np.ndarray:
        """Per connection, the first of these (ascending) packet indices, else -1."""
        return _first_per_group_of(self.conn, hits, self.count)

    def last_where(self, mask: np.ndarray) -> np.ndarray:
        """Per connection, the index of the last packet where `mask` holds, else -1."""
        return self.last_among(np.flatnonzero(mask))

    def last_among(self, hits: np.ndarray) -> np.ndarray:
        """Per connection, the last of these (ascending) packet indices, else -1."""
        groups = self.conn[hits]
        last = np.r_[groups[1:] != groups[:-1], True] if len(hits) else np.zeros(0, bool)
        out = np.full(self.count, -1, dtype=np.int64)
        out[groups[last]] = hits[last]
        return out

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
        return np.bincount(self.conn[selected], minlength=self.count).astype(np.int64)

    def per_packet(self, per_conn: np.ndarray) -> np.ndarray:
        """Spread a per-connection array over that connection's packets."""
        return per_conn[self.conn]


def _first_per_group(groups: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    """Per group, the first index where `mask` holds (-1 if none); `groups` is sorted."""
    return _first_per_group_of(groups, np.flatnonzero(mask), count)


def _first_per_group_of(groups: np.ndarray, hits: np.ndarray, count: int) -> np.ndarray:
    """Per group, the first of the ascending indices `hits` (-1 if none); `groups` is sorted."""
    found = groups[hits]
    first = np.r_[True, found[1:] != found[:-1]] if len(hits) else np.zeros(0, bool)
    out = np.full(count, -1, dtype=np.int64)
    out[found[first]] = hits[first]
    return out


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
        return self.addresses.take(pa.array(codes))


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
    addresses, codes = address_codes(packets)
    src_ep = codes[:n] * 65536 + _np(packets, "src_port")
    dst_ep = codes[n:] * 65536 + _np(packets, "dst_port")
    del codes
    lo, hi = np.minimum(src_ep, dst_ep), np.maximum(src_ep, dst_ep)
    order, pair = _by_pair(lo, hi)
    del lo, hi
    src_ep = src_ep[order]
    flags = _np(packets, "tcp_flags")[order]
    seq = _np(packets, "seq_raw")[order]
    ack = _np(packets, "ack_raw")[order]

    conn = _connection_index(pair, flags, seq, ack)
    starts = np.flatnonzero(np.r_[True, conn[1:] != conn[:-1]]) if n else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n].astype(np.int64)
    count = len(starts)

    pure_syn = tf.is_pure_syn(flags)
    syn_ack = tf.is_syn_ack(flags)
    first_syn = _first_per_group(conn, pure_syn, count)
    first_syn_ack = _first_per_group(conn, syn_ack, count)
    payload = _np(packets, "payload_len")[order]

    def receiver(at: np.ndarray) -> np.ndarray:
        """Endpoint of the receiver of the packets at these (sorted) positions."""
        return dst_ep[order[at]]

    client_ep, server_ep, guessed = _roles(
        src_ep, receiver(starts), receiver(np.maximum(first_syn_ack, 0)), conn, starts, first_syn,
        first_syn_ack, payload > 0,
        # Endpoints that received a SYN or sent a SYN-ACK anywhere in the capture listen:
        # in a connection whose opening was not captured they are the server too.
        listening=np.r_[receiver(np.flatnonzero(pure_syn)), src_ep[syn_ack]],
    )
    c2s = src_ep == client_ep[conn]
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
        (segments.ack[np.maximum(first_syn_ack, 0)] - 1) % tf.SEQ_SPACE, -1
    )
    identity = Identity(
        addresses=addresses,
        client_ip=client_ep // 65536,
        client_port=(client_ep % 65536).astype(np.int32),
        server_ip=server_ep // 65536,
        server_port=(server_ep % 65536).astype(np.int32),
        ip_version=_np(packets, "ip_version")[first_packet],
        roles_guessed=guessed,
        tcp_stream=pc.fill_null(packets.column("tcp_stream"), -1).to_numpy()[first_packet],
        pair=pair[starts],
        client_isn=np.where(client_isn >= 0, client_isn, synack_isn_hint),
        flow_id=np.zeros(0, "S16"),
    )
    identity.flow_id = flow_ids(identity)
    return Split(segments, identity)


def address_codes(packets: pa.Table) -> tuple[pa.StringArray, np.ndarray]:
    """The distinct addresses, and each packet's source then destination address as an index
    into them (sources first: length 2n)."""
    both = pa.chunked_array(packets.column("src_ip").chunks + packets.column("dst_ip").chunks,
                            packets.schema.field("src_ip").type)
    if not pa.types.is_dictionary(both.type):
        both = pc.dictionary_encode(both)
    both = both.unify_dictionaries()
    if both.num_chunks == 0:
        return pa.array([], pa.string()), np.zeros(0, np.int64)
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in both.chunks]).astype(np.int64)
    return both.chunk(0).dictionary, codes


def _by_pair(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The packet order by (endpoint pair, capture order), and the pair code of each packet
    in that order (codes ascending from 0)."""
    span = int(hi.max()) + 1 if len(hi) else 1
    # Below 2**31, lo * span + hi fits in 63 bits: one integer key per pair, no hashing.
    key = lo * span + hi if span < 1 << 31 else _numbered_pair_key(lo, hi)
    # A stable sort keeps capture order within a pair; clients count their ports up over
    # time, so the key arrives nearly sorted and the sort is cheap.
    order = np.argsort(key, kind="stable")
    key = key[order]
    pair = np.cumsum(np.r_[False, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    return order, pair


def _numbered_pair_key(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """One integer per (lo, hi) pair when endpoint codes are too wide to combine directly
    (many addresses): each side numbered by Arrow's hash first (numbers below n)."""
    lo_number, _ = factorize(lo)
    hi_number, hi_distinct = factorize(hi)
    return lo_number * len(hi_distinct) + hi_number


def pair_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense codes of the (a, b) pairs, without building a Python tuple per row."""
    if len(a) == 0:
        return np.zeros(0, np.int64)
    return factorize(_numbered_pair_key(a, b))[0]


def _np(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def _connection_index(pair: np.ndarray, flags: np.ndarray, seq: np.ndarray, ack: np.ndarray) -> np.ndarray:
    """Connection number of each packet, packets sorted by (pair, capture order)."""
    n = len(pair)
    if n == 0:
        return np.zeros(0, np.int32)
    new = np.r_[True, pair[1:] != pair[:-1]]
    # Inside a 4-tuple only a SYN starts a connection: decide on the SYN and SYN-ACK rows alone.
    rows = np.flatnonzero(tf.is_syn(flags) & ~tf.is_rst(flags))
    if len(rows) == 0:
        return (np.cumsum(new) - 1).astype(np.int32)
    syn = ~tf.has_ack(flags[rows])
    pair, seq, ack = pair[rows], seq[rows], ack[rows]
    idx = np.arange(len(rows))
    start_of_pair = np.maximum.accumulate(np.where(np.r_[True, pair[1:] != pair[:-1]], idx, 0))
    last_syn = np.maximum.accumulate(np.where(syn, idx, -1))
    prev_syn = np.r_[-1, last_syn[:-1]]
    repeats = (prev_syn >= start_of_pair) & (seq[np.maximum(prev_syn, 0)] == seq)
    # A SYN captured after the SYN-ACK that answers it (the capture point reordered the
    # handshake, or sits nearer the server): that SYN-ACK already began this attempt.
    last_syn_ack = np.maximum.accumulate(np.where(~syn, idx, -1))
    prev_syn_ack = np.r_[-1, last_syn_ack[:-1]]
    answered = ((prev_syn_ack >= start_of_pair) & (prev_syn_ack > prev_syn)
                & (ack[np.maximum(prev_syn_ack, 0)] == (seq + 1) % tf.SEQ_SPACE))
    new[rows[syn & ~repeats & ~answered]] = True
    return (np.cumsum(new) - 1).astype(np.int32)


def _roles(
    src_ep: np.ndarray, first_receiver: np.ndarray, syn_ack_receiver: np.ndarray, conn: np.ndarray,
    starts: np.ndarray, first_syn: np.ndarray, first_syn_ack: np.ndarray, has_payload: np.ndarray,
    listening: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Client and server endpoint of each connection, and whether that was guessed.

    In order: the sender of the first SYN is the client; else the sender of a SYN-ACK is
    the server; else (a guess) the side that answers SYNs elsewhere in the capture; else
    the side whose port is more server-like (well-known, then a common service port, then
    registered against ephemeral); else, both ports alike, the side whose first payload
    answers the other's first payload (request, then response); else the lower port.
    """
    a, b = src_ep[starts], first_receiver  # sender and receiver of the first packet
    syn_client = src_ep[np.maximum(first_syn, 0)]
    syn_ack_client = syn_ack_receiver
    a_listens, b_listens = np.isin(a, listening), np.isin(b, listening)
    count = len(starts)
    a_first_data = _first_per_group(conn, has_payload & (src_ep == a[conn]), count)
    b_first_data = _first_per_group(conn, has_payload & (src_ep == b[conn]), count)
    a_answers = (a_first_data >= 0) & (b_first_data >= 0) & (b_first_data < a_first_data)
    b_answers = (a_first_data >= 0) & (b_first_data >= 0) & (a_first_data < b_first_data)
    port_a, port_b = a % 65536, b % 65536
    class_a, class_b = port_class(port_a), port_class(port_b)
    a_is_server = np.select(
        [a_listens & ~b_listens, b_listens & ~a_listens, class_a > class_b, class_b > class_a,
         (class_a < PORT_SERVICE) & a_answers, (class_a < PORT_SERVICE) & b_answers],
        [True, False, True, False, True, False],
        default=port_a < port_b,
    )
    guess_client = np.where(a_is_server, b, a)
    client = np.select(
        [first_syn >= 0, first_syn_ack >= 0], [syn_client, syn_ack_client], guess_client
    )
    server = np.where(client == a, b, a)
    return client, server, first_syn < 0


def port_class(port: np.ndarray) -> np.ndarray:
    """How server-like each port is: well-known > common service > registered > ephemeral."""
    port = np.asarray(port)
    return np.select(
        [port < WELL_KNOWN_LIMIT, np.isin(port, list(SERVICE_PORTS)), port < EPHEMERAL_START],
        [PORT_WELL_KNOWN, PORT_SERVICE, PORT_REGISTERED], default=PORT_EPHEMERAL,
    )


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
        distinct, inverse = np.unique(ip * 65536 + port, return_inverse=True)
        text = pc.binary_join_element_wise(identity.text(distinct // 65536),
                                           pa.array(distinct % 65536).cast(pa.string()), "|")
        return hash_text(text)[inverse]

    hashed = combine_row_hashes((endpoint_hash(identity.client_ip, identity.client_port),
                                 endpoint_hash(identity.server_ip, identity.server_port),
                                 hash_int64(identity.client_isn)))
    return np.frombuffer(hashed.astype(">u8").tobytes().hex().encode(), dtype="S16")
