"""Key frames: the frames that prove each label, with what each frame is in its connection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from tcp_teardown.connections import Segments, pair_codes
from tcp_teardown.lists import as_series, grouped_list
from tcp_teardown.vocab import Close, Flag, Open

ORDERLY = {str(Close.FIN_BY_CLIENT), str(Close.FIN_BY_SERVER), str(Close.FIN_SIMULTANEOUS)}
ABORTS = {str(Close.RST_BY_CLIENT), str(Close.RST_BY_SERVER)}


def frame_of(seg: Segments, idx: np.ndarray) -> np.ndarray:
    """Frame numbers at segment indices, as a nullable integer array (-1 -> <NA>)."""
    idx = np.asarray(idx, dtype=np.int64)
    frames = seg.frame[np.maximum(idx, 0)] if len(seg.frame) else np.zeros(len(idx), np.int64)
    out = pd.array(frames, dtype="Int64")
    out[idx < 0] = pd.NA
    return out


def key_frame_rows(seg: Segments, lab: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per (connection, frame, role, label) of evidence."""
    parts: list[pd.DataFrame] = []
    conns = np.arange(len(lab))
    open_, close = lab["open"].to_numpy(), lab["close"].to_numpy()

    def add(idx: np.ndarray, role: str, label: np.ndarray | str, where: np.ndarray) -> None:
        idx = np.asarray(idx)
        keep = where & (idx >= 0)
        if not keep.any():
            return
        labels = np.broadcast_to(np.asarray(label, dtype=object), idx.shape)[keep]
        parts.append(pd.DataFrame({"conn": conns[keep], "frame": seg.frame[idx[keep]],
                                   "role": role, "label": labels}))

    def flag(name: Flag) -> np.ndarray:
        return lab[f"flag_{name}"].to_numpy()

    syn, rst = lab["syn"].to_numpy(), lab["rst"].to_numpy()
    first_fin, second_fin = lab["first_fin"].to_numpy(), lab["second_fin"].to_numpy()
    close_event = lab["close_event"].to_numpy()
    everyone = np.ones(len(lab), bool)
    orderly = np.isin(close, list(ORDERLY))
    aborted = np.isin(close, list(ABORTS))

    add(syn, "SYN", open_, everyone)
    add(syn, "reusing SYN", str(Flag.PORT_REUSE_TIME_WAIT), flag(Flag.PORT_REUSE_TIME_WAIT))
    add(lab["syn_ack"].to_numpy(), "SYN-ACK", open_, open_ == str(Open.SYN_ACK_NO_ACK))
    add(first_fin, "first FIN", close, orderly | (close == str(Close.HALF_CLOSED)))
    add(second_fin, "second FIN", close, orderly)
    # The passive side's FIN+ACK is the first FIN's ACK (also when that first FIN was inferred).
    add(lab["first_fin_ack"].to_numpy(), "FIN+ACK", str(Flag.THREE_WAY_CLOSE), flag(Flag.THREE_WAY_CLOSE))
    add(lab["final_ack"].to_numpy(), "final ACK", close, orderly)
    for side in ("client", "server"):
        add(lab[f"{side}_fin_revealed"].to_numpy(), f"ACK revealing the unseen {side} FIN", close,
            orderly | (close == str(Close.HALF_CLOSED)))
    add(rst, "RST", close, aborted)
    add(rst, "RST", open_, open_ == str(Open.REFUSED))
    # A never-opened connection's RST (a half-open attempt given up) is its rst_frame too.
    add(lab["first_rst"].to_numpy(), "RST", open_, close == str(Close.NEVER_OPENED))
    add(rst, "RST after FIN", str(Flag.RST_AFTER_FIN), flag(Flag.RST_AFTER_FIN))
    add(rst, "RST after close", str(Flag.RST_AFTER_CLOSE), flag(Flag.RST_AFTER_CLOSE))
    add(close_event, "server close", str(Flag.REFUSED_AFTER_HANDSHAKE),
        flag(Flag.REFUSED_AFTER_HANDSHAKE))
    add(close_event, "close after idle", str(Flag.IDLE_CLOSE), flag(Flag.IDLE_CLOSE))
    add(lab["challenge_ack"].to_numpy(), "challenge ACK", str(Flag.TIME_WAIT_CHALLENGE),
        flag(Flag.TIME_WAIT_CHALLENGE))
    opening_rst = lab["first_rst"].to_numpy()
    add(opening_rst, "RST after challenge ACK", str(Flag.TIME_WAIT_CHALLENGE),
        flag(Flag.TIME_WAIT_CHALLENGE) & (opening_rst != rst))
    # Every *_frame column is a key frame (taxonomy). FINs that did not end in an orderly
    # release still prove the close (a FIN before the RST is what rst_after_fin says), and a
    # RST during the opening that the later handshake survived (injected, or answered by a
    # retried SYN) belongs to the open.
    add(first_fin, "first FIN", close, ~orderly & (close != str(Close.HALF_CLOSED)))
    add(second_fin, "second FIN", close, ~orderly)
    add(first_fin, "FIN before RST", str(Flag.RST_AFTER_FIN), flag(Flag.RST_AFTER_FIN) & (first_fin < rst))
    add(opening_rst, "RST during the opening", open_,
        (opening_rst != rst) & ~flag(Flag.TIME_WAIT_CHALLENGE))
    for side in ("client", "server"):
        unacked = (lab[f"{side}_fin"].to_numpy() >= 0) & (lab[f"{side}_fin_ack"].to_numpy() < 0)
        add(lab[f"{side}_fin_last"].to_numpy(), "unacknowledged FIN", str(Flag.FINAL_ACK_MISSING),
            flag(Flag.FINAL_ACK_MISSING) & unacked)

    parts += _listed(lab, "syn_frames", "retransmitted SYN", Flag.SYN_RETRANSMITTED, skip_first=True)
    parts += _listed(lab, "syn_ack_frames", "retransmitted SYN-ACK", Flag.SYN_ACK_RETRANSMITTED,
                     skip_first=True)
    parts += _listed(lab, "suspect_rst", "suspect RST", Flag.RST_SUSPECT_INJECTED, skip_first=False)
    parts += _retransmitted_fins(seg, lab)
    if not parts:
        return pd.DataFrame({"conn": pd.Series([], dtype=np.int64),
                             "frame": pd.Series([], dtype=np.int64),
                             "role": pd.Series([], dtype=object), "label": pd.Series([], dtype=object)})
    return pd.concat(parts, ignore_index=True)


def _listed(lab: pd.DataFrame, column: str, role: str, name: Flag, skip_first: bool) -> list[pd.DataFrame]:
    flagged = lab[lab[f"flag_{name}"]]
    if flagged.empty:
        return []
    exploded = flagged[column].explode().dropna()
    if skip_first:
        exploded = exploded[exploded.groupby(level=0).cumcount() > 0]
    return [pd.DataFrame({"conn": exploded.index.to_numpy(), "frame": exploded.to_numpy(np.int64),
                          "role": role, "label": str(name)})]


def _retransmitted_fins(seg: Segments, lab: pd.DataFrame) -> list[pd.DataFrame]:
    flagged = lab[lab[f"flag_{Flag.FIN_RETRANSMITTED}"]]
    if flagged.empty:
        return []
    firsts = set(seg.frame[flagged["client_fin"][flagged["client_fin"] >= 0]].tolist())
    firsts |= set(seg.frame[flagged["server_fin"][flagged["server_fin"] >= 0]].tolist())
    exploded = flagged["fin_frames"].explode().dropna()
    exploded = exploded[~exploded.isin(firsts)]
    return [pd.DataFrame({"conn": exploded.index.to_numpy(), "frame": exploded.to_numpy(np.int64),
                          "role": "retransmitted FIN", "label": str(Flag.FIN_RETRANSMITTED)})]


def group_key_frames(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (connection, frame) with the lists of its roles and labels, in frame order.

    Roles and labels are handled as integer codes (a few dozen distinct strings), so the
    de-duplication is a NumPy unique over integers, not over Python strings.
    """
    order = np.lexsort((np.arange(len(rows)), rows["frame"].to_numpy(), rows["conn"].to_numpy()))
    conn, frame = rows["conn"].to_numpy()[order], rows["frame"].to_numpy()[order]
    key_id = pair_codes(conn, frame)  # dense, in (conn, frame) order since rows are sorted
    first = np.r_[True, key_id[1:] != key_id[:-1]] if len(key_id) else np.zeros(0, bool)
    out = pd.DataFrame({"conn": conn[first], "frame": frame[first]})
    for column, target in (("role", "roles"), ("label", "labels")):
        codes, names = pd.factorize(rows[column].to_numpy()[order])
        pair = key_id * max(len(names), 1) + codes
        _, keep = np.unique(pair, return_index=True)
        keep.sort()  # first appearance order within each frame
        values = pa.DictionaryArray.from_arrays(pa.array(codes[keep], pa.int32()),
                                                pa.array(np.asarray(names, dtype=object), pa.string()))
        out[target] = as_series(grouped_list(key_id[keep], values.cast(pa.string()), len(out)))
    return out
