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
from tcp_teardown.connections import Segments
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
    c2s, s2c = seg.c2s, ~seg.c2s
    flags = seg.flags
    rst, fin, ackf = tf.is_rst(flags), tf.is_fin(flags), tf.has_ack(flags)
    pure_syn, syn_ack = tf.is_pure_syn(flags), tf.is_syn_ack(flags)

    f["first"], f["last"] = seg.starts, seg.ends - 1
    f["first_ts"] = np.minimum.reduceat(seg.ts, seg.starts) if seg.count else []
    f["last_ts"] = np.maximum.reduceat(seg.ts, seg.starts) if seg.count else []
    f["packets_c2s"] = seg.count_where(c2s)
    f["packets_s2c"] = seg.count_where(s2c)
    f["bytes_c2s"] = np.bincount(seg.conn, weights=seg.payload * c2s, minlength=seg.count).astype(np.int64)
    f["bytes_s2c"] = np.bincount(seg.conn, weights=seg.payload * s2c, minlength=seg.count).astype(np.int64)

    # Opening.
    client_syn = pure_syn & c2s
    f["syn"] = seg.first_where(client_syn)
    f["syn_count"] = seg.count_where(client_syn)
    f["syn_ts"] = np.where(f["syn"] >= 0, seg.ts[np.maximum(f["syn"], 0)] if len(flags) else 0, np.nan)
    acking = ackf & ~rst
    f["acking_packets"] = seg.count_where(acking)
    # Acknowledgements that moved: the peer sent something (seen on the wire or not) while
    # the capture ran. In a one-direction capture this is the only trace of the other side.
    position = np.arange(len(flags))
    first_acking = seg.first_where(acking)
    first_ack_value = np.where(first_acking >= 0, seg.ack[np.maximum(first_acking, 0)] if len(flags) else 0, -1)
    f["ack_moves"] = seg.count_where(acking & (seg.ack != seg.per_packet(first_ack_value)))
    server_syn_ack = syn_ack & s2c
    f["syn_ack"] = seg.first_where(server_syn_ack)
    f["last_syn_ack"] = seg.last_where(server_syn_ack)
    f["syn_ack_count"] = seg.count_where(server_syn_ack)
    after_syn = position > seg.per_packet(f["syn"])
    after_syn_ack = position > seg.per_packet(f["syn_ack"])
    has_syn_ack = seg.per_packet(f["syn_ack"]) >= 0
    server_seen = seg.per_packet(f["packets_s2c"]) > 0
    client_ack = c2s & ackf & ~rst & ~tf.is_syn(flags)
    # A RST after the (last) SYN-ACK ends the attempt: a client ACK after it does not complete
    # the handshake (SYN, SYN-ACK, client RST is a half-open scan; a later ACK is a stray).
    last_syn_ack = seg.per_packet(f["last_syn_ack"])
    closing_rst = rst & (position > last_syn_ack)
    first_closing_rst = seg.per_packet(seg.first_where(closing_rst))
    before_reset = (first_closing_rst < 0) | (position < first_closing_rst)
    completes = (client_ack & before_reset
                 & np.where(has_syn_ack, after_syn_ack, after_syn & ~server_seen))
    f["handshake_ack"] = np.where(f["syn"] >= 0, seg.first_where(completes), NONE)
    bare_server_ack = s2c & ackf & ~rst & ~tf.is_syn(flags) & after_syn
    before_syn_ack = ~has_syn_ack | ~after_syn_ack
    f["challenge_ack"] = np.where(
        f["syn"] >= 0, seg.first_where(bare_server_ack & before_syn_ack), NONE
    )
    # A refusal acknowledges the SYN it refuses (RST+ACK, ack = ISN + 1); a client in
    # SYN-SENT ignores any other RST, and so do we.
    refusing = np.flatnonzero(s2c & rst & before_syn_ack & after_syn)
    isn_end = seg.seq[np.maximum(f["syn"][seg.conn[refusing]], 0)] + 1
    answers_syn = ~ackf[refusing] | (tf.seq_diff(seg.ack[refusing], isn_end) == 0)
    f["server_rst_before_syn_ack"] = seg.first_among(refusing[answers_syn])

    # RSTs: one answered by a later SYN-ACK belongs to the opening (TIME_WAIT challenge).
    f["rst"] = seg.first_where(closing_rst)
    f["first_rst"] = seg.first_where(rst)
    f["rst_by_client"] = _at(seg.c2s, f["rst"])

    # FINs: where each side's FIN sits in sequence space and which frame acknowledges it.
    for side, mine in (("client", c2s), ("server", s2c)):
        fins = np.flatnonzero(fin & mine)
        fin_idx = seg.first_among(fins)
        f[f"{side}_fin"] = fin_idx
        fin_end = tf.seq_mod(np.where(fin_idx >= 0, seg.seq[np.maximum(fin_idx, 0)]
                                      + seg.payload[np.maximum(fin_idx, 0)] + 1, 0))
        f[f"{side}_fin_end"] = fin_end
        per_fin = seg.per_packet(fin_idx)
        # The ACK test runs on the other side's acknowledgements after the FIN only.
        candidates = np.flatnonzero(~mine & acking & (per_fin >= 0) & (position > per_fin))
        covering = tf.covers(seg.ack[candidates], fin_end[seg.conn[candidates]])
        f[f"{side}_fin_ack"] = seg.first_among(candidates[covering])
        same = (tf.seq_mod(seg.seq[fins] + seg.payload[fins])
                == tf.seq_mod(fin_end[seg.conn[fins]] - 1))
        f[f"{side}_fin_count"] = seg.count_where(fins[same])
        f[f"{side}_fin_last"] = seg.last_among(fins[same])
    _infer_unseen_fin(seg, f, ackf & ~rst)
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
    second_acks_first = _at(ackf, second) & tf.covers(seg.ack[np.maximum(second, 0)], first_end)
    f["fins_crossed"] = both & ~second_acks_first
    first_fin_ack = np.where(client_first, f["client_fin_ack"], f["server_fin_ack"])
    f["first_fin_ack"] = np.where(first_inferred, f["first_fin_at"], first_fin_ack)  # revealing ACK acks it
    f["fin_on_ack_of_fin"] = (other_fin >= 0) & (f["first_fin_ack"] == other_fin)
    f["final_ack"] = np.where(
        both & (f["client_fin_ack"] >= 0) & (f["server_fin_ack"] >= 0),
        np.maximum(f["client_fin_ack"], f["server_fin_ack"]), NONE,
    )

    # The close event (first FIN or closing RST) and the silence before it.
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
    f["close_event_by_client"] = np.where(by_fin, client_first, _at(seg.c2s, close_event))
    f["close_ts"] = np.where(has_event, seg.ts[np.maximum(close_event, 0)], np.nan)
    payload_before = seg.payload * (position <= seg.per_packet(np.where(has_event, close_event, 0)))
    f["payload_before_close"] = np.bincount(seg.conn, weights=payload_before, minlength=seg.count).astype(np.int64)
    hs = f["handshake_ack"]
    f["handshake_ts"] = np.where(hs >= 0, seg.ts[np.maximum(hs, 0)], np.nan)

    # TTL per side, for RSTs a middlebox forged.
    f.lists["suspect_rst"] = _suspect_rsts(seg, rst)
    f["suspect_rsts"] = f.lists["suspect_rst"].sizes(seg.count)

    # SYN-ACK retransmission gaps.
    f.lists["syn_ack_intervals"] = _gaps(seg, server_syn_ack)
    f.lists["syn_ack_packets"] = _packets(seg, server_syn_ack)
    f.lists["syn_packets"] = _packets(seg, client_syn)
    f.lists["fin_packets"] = _packets(seg, fin)
    f["pair"] = pair
    return f


def _infer_unseen_fin(seg: Segments, f: Facts, acking: np.ndarray) -> None:
    """One-direction captures: infer the unseen side's FIN from the visible side's ACKs.

    When only one side is on the wire, the unseen peer's FIN shows as the visible side's
    last acknowledgement moving forward by exactly one sequence number (a FIN consumes
    one number and carries no data). That ACK "reveals" the FIN and stands in its place.
    """
    for side in ("client", "server"):
        f[f"{side}_fin_inferred"] = False
        f[f"{side}_fin_revealed"] = NONE
    one_way = (f["packets_c2s"] == 0) | (f["packets_s2c"] == 0)
    idx = np.flatnonzero(acking & seg.per_packet(one_way)) if one_way.any() else np.zeros(0, np.int64)
    if len(idx) == 0:
        return
    conn, ack = seg.conn[idx], seg.ack[idx]
    is_last = np.r_[conn[1:] != conn[:-1], True]
    final_value = np.full(seg.count, -1, dtype=np.int64)
    final_value[conn[is_last]] = ack[is_last]
    hits = np.flatnonzero(ack == final_value[conn])
    groups, first = np.unique(conn[hits], return_index=True)
    pos = hits[first]  # where (in idx) each connection's ACK first reaches its final value
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
    """Per connection, the RSTs (packet indices) whose TTL differs from every non-RST packet of that side."""
    if not rst.any():
        return Grouped.empty(np.int64)
    side = seg.conn.astype(np.int64) * 2 + seg.c2s
    usual_min = np.full(2 * seg.count, np.iinfo(np.int16).max, dtype=np.int16)
    usual_max = np.full(2 * seg.count, -1, dtype=np.int16)
    np.minimum.at(usual_min, side[~rst], seg.ttl[~rst])
    np.maximum.at(usual_max, side[~rst], seg.ttl[~rst])
    at = np.flatnonzero(rst)  # already in (connection, frame) order
    ttl, rst_side = seg.ttl[at], side[at]
    seen = usual_max[rst_side] >= 0  # a side with no other packet has no usual TTL
    odd = seen & ((ttl < usual_min[rst_side]) | (ttl > usual_max[rst_side]))
    return Grouped(seg.conn[at[odd]], at[odd])


def _packets(seg: Segments, mask: np.ndarray) -> Grouped:
    """Per connection, the indices of its packets where `mask` holds."""
    hits = np.flatnonzero(mask)
    return Grouped(seg.conn[hits], hits)


def _gaps(seg: Segments, mask: np.ndarray) -> Grouped:
    conn, ts = seg.conn[mask], seg.ts[mask]
    same = np.r_[False, conn[1:] == conn[:-1]] if len(conn) else np.zeros(0, bool)
    gaps = np.r_[0.0, np.diff(ts)] if len(ts) else np.zeros(0)
    return Grouped(conn[same], np.round(gaps[same], 6))
