"""Per-connection facts from raw headers: the evidence every label rule reads.

Indices are positions in `Segments` order (-1 = none); within a connection that order
is capture order, so comparing two indices compares which frame came first. Only raw
header facts are used (flags, seq/ack, lengths, TTL), never tshark's analysis fields,
so any engine that produces the packet table yields the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tcp_teardown import tcpflags as tf
from tcp_teardown.connections import Segments, first_per_group, last_per_group
from tcp_teardown.lists import Grouped

NONE = -1


@dataclass(frozen=True)
class Params:
    """The knobs of the taxonomy."""

    idle_threshold: float = 5.0  # seconds of silence before a close that make it idle_close
    msl: float = 30.0  # maximum segment lifetime; TIME_WAIT lasts 2 * msl


@dataclass
class Facts:
    """Per-connection evidence: NumPy columns with one row per connection (Segments order),
    and per-connection lists of frames kept flat (`Grouped`).

    Plain arrays rather than a DataFrame: the rules are whole-column NumPy expressions, and
    a DataFrame's per-column overhead cost more than the expressions themselves.
    """

    count: int
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    lists: dict[str, Grouped] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __setitem__(self, name: str, values: np.ndarray | bool | int) -> None:
        values = np.asarray(values)
        self.columns[name] = np.full(self.count, values) if values.ndim == 0 else values

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def copy(self) -> Facts:
        return Facts(self.count, dict(self.columns), dict(self.lists))


def compute_facts(seg: Segments, pair: np.ndarray, params: Params) -> Facts:
    """The evidence of every connection of `seg`; `pair` is each connection's 4-tuple code."""
    f = Facts(seg.count)
    rows = _Rows.of(seg)
    _totals(seg, f)
    _opening(seg, f, rows)
    _fins(seg, f, rows)
    _close(seg, f)

    # TTL per side, for RSTs a middlebox forged.
    f.lists["suspect_rst"] = _suspect_rsts(seg, rows.rst)
    f["suspect_rsts"] = f.lists["suspect_rst"].sizes(seg.count)

    # SYN-ACK retransmission gaps.
    f.lists["syn_ack_intervals"] = _gaps(seg, rows.server_syn_ack)
    f.lists["syn_ack_packets"] = _packets(seg, rows.server_syn_ack)
    f.lists["syn_packets"] = _packets(seg, rows.client_syn)
    f.lists["fin_packets"] = _packets(seg, rows.fin)
    f["pair"] = pair
    return f


@dataclass(frozen=True)
class _Rows:
    """The packets the facts look at, found once: per-packet masks of the common kinds, and
    the (few) packets of each rare kind as ascending indices, so that later steps work on
    those rows rather than on every packet."""

    acking: np.ndarray  # mask: carries an ACK and is no RST
    rst: np.ndarray  # indices of RSTs
    fin: np.ndarray  # indices of FINs
    client_syn: np.ndarray  # indices of the client's SYNs (without ACK)
    server_syn_ack: np.ndarray  # indices of the server's SYN-ACKs
    client_ack: np.ndarray  # mask: the client's plain ACKs (no SYN, no RST)
    server_ack: np.ndarray  # mask: the server's plain ACKs (no SYN, no RST)

    @staticmethod
    def of(seg: Segments) -> _Rows:
        flags, c2s = seg.flags, seg.c2s
        opening = np.flatnonzero((flags & (tf.SYN | tf.RST)) == tf.SYN)
        opening_acks, opening_c2s = tf.has_ack(flags[opening]), c2s[opening]
        plain_ack = (flags & (tf.SYN | tf.ACK | tf.RST)) == tf.ACK
        return _Rows(
            acking=(flags & (tf.ACK | tf.RST)) == tf.ACK,
            rst=np.flatnonzero(tf.is_rst(flags)),
            fin=np.flatnonzero(tf.is_fin(flags)),
            client_syn=opening[~opening_acks & opening_c2s],
            server_syn_ack=opening[opening_acks & ~opening_c2s],
            client_ack=plain_ack & c2s,
            server_ack=plain_ack & ~c2s,
        )


def _totals(seg: Segments, f: Facts) -> None:
    """Times, packets and payload bytes per connection and direction."""
    f["first"], f["last"] = seg.starts, seg.ends - 1
    f["first_ts"] = np.minimum.reduceat(seg.ts, seg.starts) if seg.count else []
    f["last_ts"] = np.maximum.reduceat(seg.ts, seg.starts) if seg.count else []
    f["packets_c2s"] = seg.count_where(seg.c2s)
    f["packets_s2c"] = seg.sizes - f["packets_c2s"]
    f["bytes_c2s"] = seg.sum_over(seg.payload * seg.c2s)
    f["bytes_s2c"] = seg.sum_over(seg.payload) - f["bytes_c2s"]


def _opening(seg: Segments, f: Facts, rows: _Rows) -> None:
    """The handshake: SYN, SYN-ACK, the ACK completing it, and what refused or challenged it."""
    f["syn"] = syn = seg.first_among(rows.client_syn)
    f["syn_count"] = seg.count_where(rows.client_syn)
    f["syn_ts"] = np.where(syn >= 0, seg.ts[np.maximum(syn, 0)] if len(seg.flags) else 0, np.nan)
    acking = rows.acking
    f["acking_packets"] = seg.count_where(acking)
    # Acknowledgements that moved: the peer sent something (seen on the wire or not) while
    # the capture ran. In a one-direction capture this is the only trace of the other side.
    first_acking = seg.first_between(acking, seg.starts - 1, seg.ends)
    first_ack_value = np.where(first_acking >= 0, seg.ack[np.maximum(first_acking, 0)] if len(seg.flags) else 0, -1)
    f["ack_moves"] = seg.count_where(acking & (seg.ack != seg.per_packet(first_ack_value)))
    f["syn_ack"] = syn_ack = seg.first_among(rows.server_syn_ack)
    f["last_syn_ack"] = last_syn_ack = seg.last_among(rows.server_syn_ack)
    f["syn_ack_count"] = seg.count_where(rows.server_syn_ack)

    # A RST after the (last) SYN-ACK ends the attempt: a client ACK after it does not complete
    # the handshake (SYN, SYN-ACK, client RST is a half-open scan; a later ACK is a stray).
    rst_conn = seg.conn[rows.rst]
    closing_rst = rows.rst[rows.rst > last_syn_ack[rst_conn]]
    first_closing_rst = seg.first_among(closing_rst)
    # The client's ACK completes the handshake after the SYN-ACK; with no SYN-ACK captured,
    # after the SYN when the server is not on the wire at all (one-direction capture).
    # (Without a SYN there is no handshake: an empty window, past the connection's end.)
    completes_after = np.where(syn < 0, seg.ends, np.where(
        syn_ack >= 0, syn_ack, np.where(f["packets_s2c"] > 0, seg.ends, syn)))
    before_reset = np.where(first_closing_rst >= 0, first_closing_rst, seg.ends)
    f["handshake_ack"] = seg.first_between(rows.client_ack, completes_after, before_reset)
    # A bare server ACK after the SYN, up to the SYN-ACK (if any), challenges the SYN.
    through_syn_ack = np.where(syn_ack >= 0, syn_ack + 1, seg.ends)
    f["challenge_ack"] = seg.first_between(rows.server_ack, np.where(syn >= 0, syn, seg.ends), through_syn_ack)
    # A refusal acknowledges the SYN it refuses (RST+ACK, ack = ISN + 1); a client in
    # SYN-SENT ignores any other RST, and so do we.
    rst_syn_ack = syn_ack[rst_conn]
    refusing = rows.rst[~seg.c2s[rows.rst] & ((rst_syn_ack < 0) | (rows.rst <= rst_syn_ack))
                        & (rows.rst > syn[rst_conn])]
    isn_end = seg.seq[np.maximum(syn[seg.conn[refusing]], 0)] + 1
    answers_syn = ~tf.has_ack(seg.flags[refusing]) | (tf.seq_diff(seg.ack[refusing], isn_end) == 0)
    f["server_rst_before_syn_ack"] = seg.first_among(refusing[answers_syn])

    # RSTs: one answered by a later SYN-ACK belongs to the opening (TIME_WAIT challenge).
    f["rst"] = first_closing_rst
    f["first_rst"] = seg.first_among(rows.rst)
    f["rst_by_client"] = _at(seg.c2s, f["rst"])


def _fins(seg: Segments, f: Facts, rows: _Rows) -> None:
    """Each side's FIN: where it sits in sequence space, which frame acknowledges it, how
    often it was sent; then which FIN came first and whether they crossed."""
    fin_by_client = seg.c2s[rows.fin]
    _side_fin(seg, f, "client", rows.fin[fin_by_client], ~seg.c2s, rows.acking)
    _side_fin(seg, f, "server", rows.fin[~fin_by_client], seg.c2s, rows.acking)
    _infer_unseen_fin(seg, f, rows.acking)
    cf, sf = f["client_fin"], f["server_fin"]
    c_inferred, s_inferred = f["client_fin_inferred"], f["server_fin_inferred"]
    # An inferred FIN has no frame: it shows at the ACK that reveals it, and was sent before
    # that ACK, so it sorts just ahead of it (that ACK may be the visible side's own FIN).
    cf_at = np.where(c_inferred, f["client_fin_revealed"], cf)
    sf_at = np.where(s_inferred, f["server_fin_revealed"], sf)
    f["client_fin_sent"], f["server_fin_sent"] = cf_at >= 0, sf_at >= 0
    c_order = np.where(cf_at >= 0, 2 * cf_at + ~c_inferred, NONE)
    s_order = np.where(sf_at >= 0, 2 * sf_at + ~s_inferred, NONE)
    both = (cf >= 0) & (sf >= 0)
    client_first = (c_order >= 0) & ((s_order < 0) | (c_order < s_order))
    first_inferred = np.where(client_first, c_inferred, s_inferred)
    other_fin = np.where(client_first, sf, cf)  # the later side's FIN segment, if in the capture
    # first_fin is the first FIN *segment* in the capture: the later side's when the first was inferred.
    f["first_fin"] = np.where(first_inferred, other_fin, np.where(client_first, cf, sf))
    f["first_fin_at"] = np.where(client_first, cf_at, sf_at)  # where the first FIN shows (segment or ACK)
    f["second_fin"] = np.where(both, other_fin, NONE)
    f["first_fin_by_client"] = client_first
    first_end = np.where(client_first, f["client_fin_end"], f["server_fin_end"])
    second = f["second_fin"]
    second_flags = seg.flags[np.maximum(second, 0)] if len(seg.flags) else np.zeros(len(second), np.int16)
    second_acks_first = ((second >= 0) & tf.has_ack(second_flags)
                         & tf.covers(seg.ack[np.maximum(second, 0)], first_end))
    f["fins_crossed"] = both & ~second_acks_first
    first_fin_ack = np.where(client_first, f["client_fin_ack"], f["server_fin_ack"])
    f["first_fin_ack"] = np.where(first_inferred, f["first_fin_at"], first_fin_ack)  # revealing ACK acks it
    f["fin_on_ack_of_fin"] = (other_fin >= 0) & (f["first_fin_ack"] == other_fin)
    f["final_ack"] = np.where(
        both & (f["client_fin_ack"] >= 0) & (f["server_fin_ack"] >= 0),
        np.maximum(f["client_fin_ack"], f["server_fin_ack"]), NONE,
    )


def _side_fin(seg: Segments, f: Facts, side: str, fins: np.ndarray, other_side: np.ndarray,
              acking: np.ndarray) -> None:
    """One side's FINs (ascending indices `fins`): the first, where it ends in sequence
    space, the other side's first ACK covering it, and how often (last when) it was sent."""
    conn = seg.conn[fins]
    seq_end = tf.seq_mod(seg.seq[fins] + seg.payload[fins])  # sequence number the FIN occupies
    fin_idx = first_per_group(conn, fins, seg.count)
    f[f"{side}_fin"] = fin_idx
    fin_end = np.zeros(seg.count, dtype=np.int64)
    has_fin = fin_idx >= 0
    first = fin_idx[has_fin]
    fin_end[has_fin] = tf.seq_mod(seg.seq[first] + seg.payload[first] + 1)
    f[f"{side}_fin_end"] = fin_end
    # The ACK test runs on the other side's acknowledgements after the FIN only.
    after_fin = seg.packets_after(fin_idx)
    candidates = after_fin[other_side[after_fin] & acking[after_fin]]
    covering = tf.covers(seg.ack[candidates], fin_end[seg.conn[candidates]])
    f[f"{side}_fin_ack"] = seg.first_among(candidates[covering])
    # The same FIN sent again ends at the same sequence number.
    same = seq_end == tf.seq_mod(fin_end[conn] - 1)
    f[f"{side}_fin_count"] = seg.count_where(fins[same])
    f[f"{side}_fin_last"] = last_per_group(conn[same], fins[same], seg.count)


def _close(seg: Segments, f: Facts) -> None:
    """The close event (first FIN or closing RST), the silence before it, who closed, and
    the payload sent up to it."""
    rst_idx = f["rst"]
    ff = f["first_fin_at"]
    by_fin = (ff >= 0) & ((rst_idx < 0) | (ff < rst_idx))
    close_event = np.where(by_fin, ff, rst_idx)
    f["close_event"] = close_event
    has_event = close_event >= 0
    prev = np.maximum(close_event - 1, 0)
    has_prev = has_event & (close_event > seg.starts)
    gap = seg.ts[np.maximum(close_event, 0)] - seg.ts[prev] if len(seg.ts) else np.zeros(len(close_event))
    # A clock stepping back makes a negative "silence": no silence can be read there.
    f["idle_before_close_s"] = np.where(has_prev & (gap >= 0), gap, np.nan)
    # Who closed: the first FIN's side (an inferred FIN shows at the other side's ACK), or the RST's.
    f["close_event_by_client"] = np.where(by_fin, f["first_fin_by_client"], _at(seg.c2s, close_event))
    f["close_ts"] = np.where(has_event, seg.ts[np.maximum(close_event, 0)], np.nan)
    # Payload at packet positions up to the close event (position 0 stands in for a
    # connection without one).
    f["payload_before_close"] = seg.sum_before(seg.payload, np.where(has_event, close_event, 0) + 1)
    hs = f["handshake_ack"]
    f["handshake_ts"] = np.where(hs >= 0, seg.ts[np.maximum(hs, 0)], np.nan)


def _infer_unseen_fin(seg: Segments, f: Facts, acking: np.ndarray) -> None:
    """One-direction captures: infer the unseen side's FIN from the visible side's ACKs.

    When only one side is on the wire, the unseen peer's FIN shows as the visible side's
    last acknowledgement moving forward by exactly one sequence number (a FIN consumes
    one number and carries no data). That ACK "reveals" the FIN and stands in its place.
    """
    for side in ("client", "server"):
        f[f"{side}_fin_inferred"] = False
        f[f"{side}_fin_revealed"] = NONE
    one_way = seg.packets_of((f["packets_c2s"] == 0) | (f["packets_s2c"] == 0))
    idx = one_way[acking[one_way]]
    if len(idx) == 0:
        return
    conn, ack = seg.conn[idx], seg.ack[idx]
    final_value = last_per_group(conn, ack, seg.count)
    hits = np.flatnonzero(ack == final_value[conn])
    reached = first_per_group(conn[hits], hits, seg.count)  # where (in idx) each ACK first reaches it
    groups = np.flatnonzero(reached >= 0)
    pos = reached[groups]
    prev = np.maximum(pos - 1, 0)
    moved_by_one = (pos > 0) & (conn[prev] == groups) & (tf.seq_diff(ack[pos], ack[prev]) == 1)
    groups, revealing = groups[moved_by_one], idx[pos[moved_by_one]]
    for unseen, visible_is_client in (("server", True), ("client", False)):
        sel = (seg.c2s[revealing] == visible_is_client) & (f[f"{unseen}_fin"][groups] < 0)
        f[f"{unseen}_fin_inferred"][groups[sel]] = True
        f[f"{unseen}_fin_revealed"][groups[sel]] = revealing[sel]


def _at(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """values[idx] where idx >= 0, else False."""
    idx = np.asarray(idx)
    return (idx >= 0) & values[np.maximum(idx, 0)] if len(values) else np.zeros(len(idx), bool)


def _suspect_rsts(seg: Segments, rst: np.ndarray) -> Grouped:
    """Per connection, the RSTs (ascending packet indices `rst`) whose TTL differs from every
    non-RST packet of that side."""
    if len(rst) == 0:
        return Grouped.empty(np.int64)
    # Only the sides of connections with a RST need their usual TTL range.
    with_rst = np.zeros(seg.count, dtype=bool)
    with_rst[seg.conn[rst]] = True
    packets = seg.packets_of(with_rst)
    usual = packets[~tf.is_rst(seg.flags[packets])]

    def side(at: np.ndarray) -> np.ndarray:
        return seg.conn[at].astype(np.int64) * 2 + seg.c2s[at]

    usual_min = np.full(2 * seg.count, np.iinfo(np.int16).max, dtype=np.int16)
    usual_max = np.full(2 * seg.count, -1, dtype=np.int16)
    usual_side, usual_ttl = side(usual), seg.ttl[usual]
    np.minimum.at(usual_min, usual_side, usual_ttl)
    np.maximum.at(usual_max, usual_side, usual_ttl)
    ttl, rst_side = seg.ttl[rst], side(rst)
    seen = usual_max[rst_side] >= 0  # a side with no other packet has no usual TTL
    odd = seen & ((ttl < usual_min[rst_side]) | (ttl > usual_max[rst_side]))
    return Grouped(seg.conn[rst[odd]], rst[odd])


def _packets(seg: Segments, rows: np.ndarray) -> Grouped:
    """Per connection, its packets among these (ascending) indices."""
    return Grouped(seg.conn[rows], rows)


def _gaps(seg: Segments, rows: np.ndarray) -> Grouped:
    """Per connection, the time between consecutive packets among these (ascending) indices."""
    ts = seg.ts[rows]
    gaps = np.r_[0.0, np.diff(ts)] if len(ts) else np.zeros(0)
    return Grouped(seg.conn[rows], np.round(gaps, 6)).without_first()
