"""Key frames: the frames that prove each label, with what each frame is in its connection."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from tcp_teardown.connections import Segments
from tcp_teardown.facts import Facts
from tcp_teardown.lists import Grouped
from tcp_teardown.rules.flag_rules import ABORTS, ORDERLY
from tcp_teardown.rules.registry import any_of
from tcp_teardown.vocab import CLOSE_VALUES, FLAG_VALUES, OPEN_VALUES, Close, Flag, Open, code

HALF_CLOSED, NEVER_OPENED = code(Close.HALF_CLOSED), code(Close.NEVER_OPENED)
REFUSED, SYN_ACK_NO_ACK = code(Open.REFUSED), code(Open.SYN_ACK_NO_ACK)

# Key-frame labels share one code space: opens, then closes, then flags.
LABEL_NAMES = (*OPEN_VALUES, *CLOSE_VALUES, *FLAG_VALUES)
LABEL_OFFSET = {Open: 0, Close: len(Open), Flag: len(Open) + len(Close)}

# Roles are coded as they are first used (a few dozen distinct texts).
_ROLE_CODES: dict[str, int] = {}


def _role_code(role: str) -> int:
    return _ROLE_CODES.setdefault(role, len(_ROLE_CODES))


def _label_code(label: StrEnum) -> int:
    return LABEL_OFFSET[type(label)] + code(label)


@dataclass
class KeyRows:
    """Long table of evidence: one row per (connection, packet, role, label), as integer codes."""

    conn: np.ndarray
    packet: np.ndarray  # index into Segments
    role: np.ndarray
    label: np.ndarray


@dataclass
class KeyFrames:
    """One row per (connection, frame): what the frame is (roles) and what it proves (labels),
    both as codes grouped by row (`role_names()` / LABEL_NAMES name them)."""

    conn: np.ndarray
    frame: np.ndarray
    roles: Grouped
    labels: Grouped

    @staticmethod
    def concat(parts: list[KeyFrames], conn_offsets: list[int]) -> KeyFrames:
        row_offsets = np.cumsum([0] + [len(p.conn) for p in parts])
        return KeyFrames(
            conn=np.concatenate([p.conn + o for p, o in zip(parts, conn_offsets, strict=True)]),
            frame=np.concatenate([p.frame for p in parts]),
            roles=Grouped.concat([p.roles for p in parts], row_offsets),
            labels=Grouped.concat([p.labels for p in parts], row_offsets),
        )


def role_names() -> list[str]:
    return list(_ROLE_CODES)


def frame_of(seg: Segments, idx: np.ndarray) -> np.ndarray:
    """Frame numbers at segment indices (-1 where there is none)."""
    idx = np.asarray(idx, dtype=np.int64)
    frames = seg.frame[np.maximum(idx, 0)] if len(seg.frame) else np.zeros(len(idx), np.int64)
    return np.where(idx >= 0, frames, -1)


def key_frame_rows(seg: Segments, lab: Facts) -> KeyRows:
    """Every (connection, frame, role, label) of evidence."""
    parts: list[tuple[np.ndarray, np.ndarray, int, np.ndarray | int]] = []
    open_ = lab["open"].astype(np.int16) + LABEL_OFFSET[Open]
    close = lab["close"].astype(np.int16) + LABEL_OFFSET[Close]

    def add(idx: np.ndarray, role: str, label: np.ndarray | StrEnum, where: np.ndarray) -> None:
        chosen = np.flatnonzero(where & (idx >= 0))  # connection numbers
        if len(chosen) == 0:
            return
        label_codes = label[chosen] if isinstance(label, np.ndarray) else _label_code(label)
        parts.append((chosen, idx[chosen], _role_code(role), label_codes))

    def add_listed(listed: Grouped, role: str, label: Flag) -> None:
        parts.append((listed.groups, listed.values, _role_code(role), _label_code(label)))

    def flag(name: Flag) -> np.ndarray:
        return lab[f"flag_{name}"]

    syn, rst = lab["syn"], lab["rst"]
    first_fin, second_fin = lab["first_fin"], lab["second_fin"]
    close_event = lab["close_event"]
    everyone = np.ones(lab.count, bool)
    orderly = any_of(lab["close"], ORDERLY)
    aborted = any_of(lab["close"], ABORTS)
    half_closed = lab["close"] == HALF_CLOSED

    add(syn, "SYN", open_, everyone)
    add(syn, "reusing SYN", Flag.PORT_REUSE_TIME_WAIT, flag(Flag.PORT_REUSE_TIME_WAIT))
    add(lab["syn_ack"], "SYN-ACK", open_, lab["open"] == SYN_ACK_NO_ACK)
    add(first_fin, "first FIN", close, orderly | half_closed)
    add(second_fin, "second FIN", close, orderly)
    # The passive side's FIN+ACK is the first FIN's ACK (also when that first FIN was inferred).
    add(lab["first_fin_ack"], "FIN+ACK", Flag.THREE_WAY_CLOSE, flag(Flag.THREE_WAY_CLOSE))
    add(lab["final_ack"], "final ACK", close, orderly)
    for side in ("client", "server"):
        add(lab[f"{side}_fin_revealed"], f"ACK revealing the unseen {side} FIN", close,
            orderly | half_closed)
    add(rst, "RST", close, aborted)
    add(rst, "RST", open_, lab["open"] == REFUSED)
    # A never-opened connection's RST (a half-open attempt given up) is its rst_frame too.
    add(lab["first_rst"], "RST", open_, lab["close"] == NEVER_OPENED)
    add(rst, "RST after FIN", Flag.RST_AFTER_FIN, flag(Flag.RST_AFTER_FIN))
    add(rst, "RST after close", Flag.RST_AFTER_CLOSE, flag(Flag.RST_AFTER_CLOSE))
    add(close_event, "server close", Flag.REFUSED_AFTER_HANDSHAKE,
        flag(Flag.REFUSED_AFTER_HANDSHAKE))
    add(close_event, "close after idle", Flag.IDLE_CLOSE, flag(Flag.IDLE_CLOSE))
    add(lab["challenge_ack"], "challenge ACK", Flag.TIME_WAIT_CHALLENGE,
        flag(Flag.TIME_WAIT_CHALLENGE))
    opening_rst = lab["first_rst"]
    add(opening_rst, "RST after challenge ACK", Flag.TIME_WAIT_CHALLENGE,
        flag(Flag.TIME_WAIT_CHALLENGE) & (opening_rst != rst))
    # Every *_frame column is a key frame (taxonomy). FINs that did not end in an orderly
    # release still prove the close (a FIN before the RST is what rst_after_fin says), and a
    # RST during the opening that the later handshake survived (injected, or answered by a
    # retried SYN) belongs to the open.
    add(first_fin, "first FIN", close, ~orderly & ~half_closed)
    add(second_fin, "second FIN", close, ~orderly)
    add(first_fin, "FIN before RST", Flag.RST_AFTER_FIN, flag(Flag.RST_AFTER_FIN) & (first_fin < rst))
    add(opening_rst, "RST during the opening", open_,
        (opening_rst != rst) & ~flag(Flag.TIME_WAIT_CHALLENGE))
    for side in ("client", "server"):
        unacked = (lab[f"{side}_fin"] >= 0) & (lab[f"{side}_fin_ack"] < 0)
        add(lab[f"{side}_fin_last"], "unacknowledged FIN", Flag.FINAL_ACK_MISSING,
            flag(Flag.FINAL_ACK_MISSING) & unacked)

    add_listed(lab.lists["syn_packets"].where(flag(Flag.SYN_RETRANSMITTED)).without_first(),
               "retransmitted SYN", Flag.SYN_RETRANSMITTED)
    add_listed(lab.lists["syn_ack_packets"].where(flag(Flag.SYN_ACK_RETRANSMITTED)).without_first(),
               "retransmitted SYN-ACK", Flag.SYN_ACK_RETRANSMITTED)
    add_listed(lab.lists["suspect_rst"].where(flag(Flag.RST_SUSPECT_INJECTED)),
               "suspect RST", Flag.RST_SUSPECT_INJECTED)
    add_listed(_retransmitted_fins(seg, lab), "retransmitted FIN", Flag.FIN_RETRANSMITTED)
    return _concat(parts)


def _concat(parts: list[tuple[np.ndarray, np.ndarray, int, np.ndarray | int]]) -> KeyRows:
    sizes = [len(conn) for conn, _, _, _ in parts]
    return KeyRows(
        conn=np.concatenate([conn for conn, _, _, _ in parts] or [np.zeros(0, np.int64)]).astype(np.int64, copy=False),
        packet=np.concatenate([packet for _, packet, _, _ in parts]
                              or [np.zeros(0, np.int64)]).astype(np.int64, copy=False),
        role=np.repeat(np.array([role for _, _, role, _ in parts], np.int16), sizes),
        label=np.concatenate([np.broadcast_to(np.asarray(label, np.int16), size)
                              for (_, _, _, label), size in zip(parts, sizes, strict=True)]
                             or [np.zeros(0, np.int16)]),
    )


def _retransmitted_fins(seg: Segments, lab: Facts) -> Grouped:
    """The FIN segments of flagged connections other than each side's first FIN."""
    flagged = lab[f"flag_{Flag.FIN_RETRANSMITTED}"]
    firsts = np.concatenate([seg.frame[lab[column][flagged & (lab[column] >= 0)]]
                             for column in ("client_fin", "server_fin")])
    fins = lab.lists["fin_packets"].where(flagged)
    later = ~np.isin(seg.frame[fins.values], firsts)
    return Grouped(fins.groups[later], fins.values[later])


def group_key_frames(seg: Segments, rows: KeyRows) -> KeyFrames:
    """One row per (connection, frame) with the lists of its roles and labels, in frame order
    within each connection; each list in first-appearance order without repeats."""
    # Segments are in (connection, frame) order, so sorting by packet index (stable: first
    # appearances stay first) is sorting by (connection, frame). Each part of the rows is
    # already in packet order, so the stable sort merges a few sorted runs.
    count = len(rows.conn)
    order = np.argsort(rows.packet, kind="stable")
    conn, frame = rows.conn[order], seg.frame[rows.packet[order]]
    first = np.r_[True, (conn[1:] != conn[:-1]) | (frame[1:] != frame[:-1])] if count else np.zeros(0, bool)
    key_id = np.cumsum(first) - 1
    longest = int(np.diff(np.r_[np.flatnonzero(first), count]).max()) if count else 0
    lists = {}
    for column, size in (("role", len(_ROLE_CODES)), ("label", len(LABEL_NAMES))):
        values = getattr(rows, column)[order].astype(np.int64)
        keep = _first_appearances(key_id * size + values, longest)
        lists[column] = Grouped(key_id[keep], values[keep].astype(np.int16))
    return KeyFrames(conn[first], frame[first], lists["role"], lists["label"])


def _first_appearances(pair: np.ndarray, longest: int) -> np.ndarray:
    """Where each (key, value) pair appears first; the rows of a key are contiguous and at
    most `longest` long, so an earlier equal pair lies fewer than `longest` rows back."""
    repeated = np.zeros(len(pair), dtype=bool)
    # A key has at most one row per part of the evidence (a few dozen): few look-backs.
    for back in range(1, longest):
        repeated[back:] |= pair[back:] == pair[:-back]
    return ~repeated
