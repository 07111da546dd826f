"""How a connection started. Ordered: the first rule that holds decides (like a state chain)."""

from __future__ import annotations

import numpy as np

from tcp_teardown.facts import Facts, Params
from tcp_teardown.rules.registry import open_rule


def _attempted(f: Facts) -> np.ndarray:
    return (f["syn"] >= 0)


@open_rule
def handshake(f: Facts, p: Params) -> np.ndarray:
    """SYN, SYN-ACK and the client's ACK seen (one direction only: the SYN, then the client's ACK).

    In a one-direction capture the client acknowledging a SYN-ACK the capture did not see
    completes the handshake.
    """
    return _attempted(f) & (f["handshake_ack"] >= 0)


@open_rule
def refused(f: Facts, p: Params) -> np.ndarray:
    """The SYN was answered by RST (closed port: "connection refused")."""
    return (_attempted(f) & (f["handshake_ack"] < 0)
            & (f["server_rst_before_syn_ack"] >= 0))


@open_rule
def syn_ack_no_ack(f: Facts, p: Params) -> np.ndarray:
    """SYN and SYN-ACK seen, the client never completed the handshake (server sat in SYN_RCVD)."""
    return (_attempted(f) & (f["handshake_ack"] < 0) & (f["syn_ack"] >= 0)
            & (f["server_rst_before_syn_ack"] < 0))


@open_rule
def no_answer(f: Facts, p: Params) -> np.ndarray:
    """Only SYN(s) from the client, possibly retransmitted; no SYN-ACK and no RST back."""
    return (_attempted(f) & (f["handshake_ack"] < 0) & (f["syn_ack"] < 0)
            & (f["server_rst_before_syn_ack"] < 0))


@open_rule
def midstream(f: Facts, p: Params) -> np.ndarray:
    """The capture began after the handshake: no SYN from the client is in it."""
    return ~_attempted(f)
