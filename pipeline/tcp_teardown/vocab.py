"""The label vocabulary: the public names users filter on (docs/teardown-taxonomy.md).

The values are the public names. Never rename one: Parquet files, notebooks and
Wireshark profiles in the field filter on them.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache


class Open(StrEnum):
    """How a connection started (exactly one per connection)."""

    HANDSHAKE = "handshake"
    REFUSED = "refused"
    NO_ANSWER = "no_answer"
    SYN_ACK_NO_ACK = "syn_ack_no_ack"
    MIDSTREAM = "midstream"


class Close(StrEnum):
    """How a connection ended (exactly one per connection)."""

    FIN_BY_CLIENT = "fin_by_client"
    FIN_BY_SERVER = "fin_by_server"
    FIN_SIMULTANEOUS = "fin_simultaneous"
    RST_BY_CLIENT = "rst_by_client"
    RST_BY_SERVER = "rst_by_server"
    HALF_CLOSED = "half_closed"
    NOT_CLOSED = "not_closed"
    NEVER_OPENED = "never_opened"


class Flag(StrEnum):
    """What else happened at open or close (zero or more per connection), in taxonomy order."""

    THREE_WAY_CLOSE = "three_way_close"
    REFUSED_AFTER_HANDSHAKE = "refused_after_handshake"
    RST_AFTER_FIN = "rst_after_fin"
    RST_AFTER_CLOSE = "rst_after_close"
    FIN_RETRANSMITTED = "fin_retransmitted"
    FINAL_ACK_MISSING = "final_ack_missing"
    SYN_RETRANSMITTED = "syn_retransmitted"
    SYN_ACK_RETRANSMITTED = "syn_ack_retransmitted"
    IDLE_CLOSE = "idle_close"
    PORT_REUSE_TIME_WAIT = "port_reuse_time_wait"
    TIME_WAIT_CHALLENGE = "time_wait_challenge"
    ONE_DIRECTION_ONLY = "one_direction_only"
    RST_SUSPECT_INJECTED = "rst_suspect_injected"


class TimeWaitSide(StrEnum):
    """Who holds TIME_WAIT after an orderly release: the side(s) that closed actively."""

    CLIENT = "client"
    SERVER = "server"
    BOTH = "both"


OPEN_VALUES: tuple[str, ...] = tuple(v.value for v in Open)
CLOSE_VALUES: tuple[str, ...] = tuple(v.value for v in Close)
FLAG_VALUES: tuple[str, ...] = tuple(v.value for v in Flag)
TIME_WAIT_VALUES: tuple[str, ...] = tuple(v.value for v in TimeWaitSide)


@cache  # a search of the vocabulary; the rules and key frames ask for the same few labels
def code(label: StrEnum) -> int:
    """A label's position in its vocabulary: inside the pipeline labels travel as these
    small integers (one byte a connection) and become names only in the written tables."""
    return list(type(label)).index(label)


def codes(*labels: StrEnum) -> list[int]:
    return [code(label) for label in labels]
