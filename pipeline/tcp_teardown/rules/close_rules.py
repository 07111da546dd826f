"""How a connection ended. Ordered: the first rule that holds decides.

Close rules also see the decided `open` column: a connection that never opened has
no close of its own.
"""

from __future__ import annotations

import numpy as np

from tcp_teardown.facts import Facts, Params
from tcp_teardown.rules.registry import any_of, close_rule
from tcp_teardown.vocab import Open, codes

NOT_OPENED = (Open.REFUSED, Open.NO_ANSWER, Open.SYN_ACK_NO_ACK)
NOT_OPENED_CODES = codes(*NOT_OPENED)


def _opened(f: Facts) -> np.ndarray:
    return ~any_of(f["open"], NOT_OPENED_CODES)


def _aborted(f: Facts) -> np.ndarray:
    """A RST came before the orderly release completed."""
    rst, final = f["rst"], f["final_ack"]
    return _opened(f) & (rst >= 0) & ((final < 0) | (rst < final))


def _fin_count(f: Facts) -> np.ndarray:
    """FINs sent: seen on the wire, or (one-direction captures) revealed by the visible ACKs."""
    return f["client_fin_sent"].astype(int) + f["server_fin_sent"]


@close_rule
def never_opened(f: Facts, p: Params) -> np.ndarray:
    """For `refused`, `no_answer`, `syn_ack_no_ack`: there was no connection to close."""
    return ~_opened(f)


@close_rule
def rst_by_client(f: Facts, p: Params) -> np.ndarray:
    """The client aborted the connection with RST before an orderly release completed."""
    return _aborted(f) & f["rst_by_client"]


@close_rule
def rst_by_server(f: Facts, p: Params) -> np.ndarray:
    """The server aborted the connection with RST before an orderly release completed."""
    return _aborted(f) & ~f["rst_by_client"]


@close_rule
def fin_simultaneous(f: Facts, p: Params) -> np.ndarray:
    """Both sides sent a FIN before acknowledging the other's: the second FIN's ack does not cover the first."""
    return _opened(f) & ~_aborted(f) & f["fins_crossed"]


@close_rule
def fin_by_client(f: Facts, p: Params) -> np.ndarray:
    """Orderly release the client started: its FIN came first and the server's FIN acknowledged it."""
    return (_opened(f) & ~_aborted(f) & (_fin_count(f) == 2) & ~f["fins_crossed"]
            & f["first_fin_by_client"])


@close_rule
def fin_by_server(f: Facts, p: Params) -> np.ndarray:
    """Orderly release the server started ("server active close"): the server's FIN came first."""
    return (_opened(f) & ~_aborted(f) & (_fin_count(f) == 2) & ~f["fins_crossed"]
            & ~f["first_fin_by_client"])


@close_rule
def half_closed(f: Facts, p: Params) -> np.ndarray:
    """One side sent FIN, the other never did by the end of the capture (it sat in CLOSE_WAIT)."""
    return _opened(f) & ~_aborted(f) & (_fin_count(f) == 1)


@close_rule
def not_closed(f: Facts, p: Params) -> np.ndarray:
    """Neither FIN nor RST by the end of the capture."""
    return _opened(f) & ~_aborted(f) & (_fin_count(f) == 0)
