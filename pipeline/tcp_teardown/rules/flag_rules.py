"""What else happened at open or close. Every rule that holds adds its flag.

Flag rules see the facts plus the decided `open` and `close` columns.
"""

from __future__ import annotations

import numpy as np

from tcp_teardown.facts import Facts, Params
from tcp_teardown.rules.registry import any_of, flag_rule
from tcp_teardown.vocab import Close, Open, code, codes

ORDERLY = codes(Close.FIN_BY_CLIENT, Close.FIN_BY_SERVER, Close.FIN_SIMULTANEOUS)
ABORTS = codes(Close.RST_BY_CLIENT, Close.RST_BY_SERVER)
OPENED = codes(Open.HANDSHAKE, Open.MIDSTREAM)
ENDED_BY_FIN = [*ORDERLY, code(Close.HALF_CLOSED)]
HANDSHAKE = code(Open.HANDSHAKE)


@flag_rule
def three_way_close(f: Facts, p: Params) -> np.ndarray:
    """The passive side's FIN rode on its ACK of the first FIN (FIN, FIN+ACK, ACK)."""
    in_order = any_of(f["close"], ORDERLY[:2])
    return in_order & f["fin_on_ack_of_fin"]


@flag_rule
def refused_after_handshake(f: Facts, p: Params) -> np.ndarray:
    """The server closed (FIN or RST) right after the handshake, before either side sent payload."""
    quick = (f["close_ts"] - f["handshake_ts"]) < p.idle_threshold
    return ((f["open"] == HANDSHAKE) & (f["close_event"] >= 0)
            & ~f["close_event_by_client"].astype(bool)
            & (f["payload_before_close"] == 0) & np.nan_to_num(quick, nan=0).astype(bool))


@flag_rule
def rst_after_fin(f: Facts, p: Params) -> np.ndarray:
    """A side sent RST after a FIN had been sent but before the orderly release completed."""
    first_fin, rst = f["first_fin_at"], f["rst"]  # a FIN inferred from ACKs counts
    return any_of(f["close"], ABORTS) & (first_fin >= 0) & (first_fin < rst)


@flag_rule
def rst_after_close(f: Facts, p: Params) -> np.ndarray:
    """A RST came after both FINs were acknowledged (a late segment hit a closed socket)."""
    final, rst = f["final_ack"], f["rst"]
    return (final >= 0) & (rst > final)


@flag_rule
def fin_retransmitted(f: Facts, p: Params) -> np.ndarray:
    """A FIN was sent again (its ACK was lost or late)."""
    resent = (f["client_fin_count"] > 1) | (f["server_fin_count"] > 1)
    return any_of(f["open"], OPENED) & resent


@flag_rule
def final_ack_missing(f: Facts, p: Params) -> np.ndarray:
    """The last FIN was never acknowledged in the capture."""
    unacked = (((f["client_fin"] >= 0) & (f["client_fin_ack"] < 0))
               | ((f["server_fin"] >= 0) & (f["server_fin_ack"] < 0)))
    both_sides_seen = (f["packets_c2s"] > 0) & (f["packets_s2c"] > 0)
    ended_by_fin = any_of(f["close"], ENDED_BY_FIN)
    return ended_by_fin & unacked & both_sides_seen


@flag_rule
def syn_retransmitted(f: Facts, p: Params) -> np.ndarray:
    """The client's SYN was sent more than once."""
    return f["syn_count"] > 1


@flag_rule
def syn_ack_retransmitted(f: Facts, p: Params) -> np.ndarray:
    """The server's SYN-ACK was sent more than once; the gaps go in `syn_ack_intervals`."""
    return f["syn_ack_count"] > 1


@flag_rule
def idle_close(f: Facts, p: Params) -> np.ndarray:
    """The first FIN or RST came after at least `idle_threshold` of silence: an idle timeout closed it."""
    idle = np.nan_to_num(f["idle_before_close_s"].astype(float), nan=-1.0)
    return any_of(f["open"], OPENED) & (idle >= p.idle_threshold)


@flag_rule
def port_reuse_time_wait(f: Facts, p: Params) -> np.ndarray:
    """This connection's SYN reused the 4-tuple of an earlier one less than 2·MSL after it closed."""
    pair = f["pair"]
    same_pair = np.r_[False, pair[1:] == pair[:-1]]
    prev_in_time_wait = np.r_[False, any_of(f["close"], ORDERLY)[:-1]]
    prev_last = np.r_[np.nan, f["last_ts"][:-1]]
    syn_ts = f["syn_ts"]
    gap = syn_ts - prev_last
    return (same_pair & prev_in_time_wait & (f["syn"] >= 0)
            & np.nan_to_num(gap < 2 * p.msl, nan=0).astype(bool))


@flag_rule
def time_wait_challenge(f: Facts, p: Params) -> np.ndarray:
    """The SYN was answered with a bare ACK (the TIME_WAIT side re-acknowledging the old connection)."""
    return f["challenge_ack"] >= 0


@flag_rule
def one_direction_only(f: Facts, p: Params) -> np.ndarray:
    """The capture holds packets of one direction only; the other side is inferred from visible ACKs.

    The visible side must show the other side at work: its acknowledgement moves (the peer
    sent data, a FIN) or it completes a handshake whose SYN-ACK is missing. A lone packet,
    or a side whose ACK never moves, says nothing about the other direction of the capture.
    """
    one_way = (f["packets_c2s"] == 0) | (f["packets_s2c"] == 0)
    shows_peer = (f["ack_moves"] > 0) | (f["handshake_ack"] >= 0)
    return one_way & shows_peer


@flag_rule
def rst_suspect_injected(f: Facts, p: Params) -> np.ndarray:
    """A RST whose TTL / hop limit differs from the other packets of its side (a middlebox sent it)."""
    return f["suspect_rsts"] > 0
