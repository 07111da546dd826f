"""One capture's packet table -> its labelled connections and key frames (Arrow tables)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tcp_teardown import evidence
from tcp_teardown.arrays import fixed_text, from_numpy, repeat_text, table
from tcp_teardown.connections import Identity, Segments, split_connections
from tcp_teardown.evidence import KeyFrames
from tcp_teardown.facts import Params, compute_facts
from tcp_teardown.lists import Grouped
from tcp_teardown.memory import release_unused
from tcp_teardown.rules import apply_rules
from tcp_teardown.rules.apply import flag_lists, flag_matrix, label_names
from tcp_teardown.schema import CONNECTIONS, FRAMES
from tcp_teardown.vocab import CLOSE_VALUES, OPEN_VALUES, TIME_WAIT_VALUES

# Connections are labelled in slices of about this many packets (cut between 4-tuples):
# the per-packet temporaries of the facts then stay bounded whatever the capture size,
# and mostly in cache (on 2M packets 125k measured a little faster than 64k or 250k).
SLICE_PACKETS = 125_000

# Per-connection columns that hold segment indices, written as frame numbers.
FRAME_COLUMNS = {"syn_frame": "syn", "first_fin_frame": "first_fin", "second_fin_frame": "second_fin",
                 "rst_frame": "first_rst", "final_ack_frame": "final_ack",
                 "first_frame": "first", "last_frame": "last"}
COPIED = ("first_ts", "last_ts", "idle_before_close_s", "packets_c2s", "packets_s2c", "bytes_c2s",
          "bytes_s2c", "open", "close", "time_wait_side")


@dataclass
class FileResult:
    """The two per-capture tables."""

    connections: pa.Table
    frames: pa.Table


@dataclass
class Labelled:
    """Labelled connections as NumPy columns (one row per connection, Segments order),
    their syn_ack_intervals, and their key frames."""

    columns: dict[str, np.ndarray]
    intervals: Grouped
    keys: KeyFrames

    @staticmethod
    def concat(parts: list[Labelled], offsets: list[int]) -> Labelled:
        return Labelled(
            columns={name: np.concatenate([p.columns[name] for p in parts]) for name in parts[0].columns},
            intervals=Grouped.concat([p.intervals for p in parts], offsets),
            keys=KeyFrames.concat([p.keys for p in parts], offsets),
        )


def analyze_packets(packets: pa.Table | list[pa.Table], file: str, params: Params) -> FileResult:
    """Label every connection of one capture's packet table (schema.PACKETS).

    Given a one-element list instead of a table, the table is released as soon as the
    connection arrays are built (the Arrow copy is then no longer needed: less peak memory).
    """
    table = packets.pop() if isinstance(packets, list) else packets
    del packets
    if table.num_rows == 0:
        return FileResult(CONNECTIONS.empty_table(), FRAMES.empty_table())
    split = split_connections(table)
    del table
    release_unused()
    slices = split.slices(SLICE_PACKETS)
    labelled = Labelled.concat([_label_slice(split.segments.slice(c0, c1), split.identity.pair[c0:c1], params)
                                for c0, c1 in slices], [c0 for c0, _ in slices])
    del split.segments
    release_unused()
    return FileResult(_connections(labelled, split.identity, file), _frames(labelled, split.identity, file))


def _label_slice(seg: Segments, pair: np.ndarray, params: Params) -> Labelled:
    """Facts, labels and key frames of a slice of whole 4-tuples (bounded working memory)."""
    facts = apply_rules(compute_facts(seg, pair, params), params)
    columns = {name: facts[name] for name in COPIED}
    columns.update({name: evidence.frame_of(seg, facts[index]) for name, index in FRAME_COLUMNS.items()})
    columns["close_duration_s"] = np.where(facts["close_event"] >= 0, facts["last_ts"] - facts["close_ts"], np.nan)
    columns["flags"] = flag_matrix(facts)
    keys = evidence.group_key_frames(seg, evidence.key_frame_rows(seg, facts))
    return Labelled(columns, facts.lists["syn_ack_intervals"], keys)


def _connections(lab: Labelled, ident: Identity, file: str) -> pa.Table:
    """The connections table, rows in order of first frame."""
    order = _capture_order(lab.columns["first_frame"])
    count = len(order)
    col = {name: values[order] for name, values in lab.columns.items()}
    keys = Grouped(lab.keys.conn, lab.keys.frame).permuted(order)
    columns = {
        "flow_id": fixed_text(ident.flow_id[order]),
        "file": repeat_text(file, count),
        "tcp_stream": _nullable(ident.tcp_stream[order]),
        "client_ip": ident.text(ident.client_ip[order]),
        "client_port": ident.client_port[order],
        "server_ip": ident.text(ident.server_ip[order]),
        "server_port": ident.server_port[order],
        "ip_version": ident.ip_version[order],
        "roles_guessed": ident.roles_guessed[order],
        "open": label_names(col["open"], OPEN_VALUES),
        "close": label_names(col["close"], CLOSE_VALUES),
        "flags": flag_lists(col["flags"]),
        "time_wait_side": label_names(col["time_wait_side"], TIME_WAIT_VALUES),
        "duration_s": col["last_ts"] - col["first_ts"],
        "close_duration_s": _nullable_float(col["close_duration_s"]),
        "idle_before_close_s": _nullable_float(col["idle_before_close_s"]),
        "syn_ack_intervals": lab.intervals.permuted(order).to_arrow(count, pa.float64()),
        "key_frames": keys.to_arrow(count, pa.int64()),
        **{name: _nullable(col[name]) for name in FRAME_COLUMNS},
    }
    return table(columns | {k: v for k, v in col.items() if k not in columns}, CONNECTIONS)


def _frames(lab: Labelled, ident: Identity, file: str) -> pa.Table:
    """The key frames table, rows in frame order (ties: connection order)."""
    keys = lab.keys
    order = _capture_order(keys.frame)
    conn = keys.conn[order]
    columns = {
        "file": repeat_text(file, len(order)),
        "frame_number": keys.frame[order],
        "flow_id": fixed_text(ident.flow_id[conn]),
        "tcp_stream": _nullable(ident.tcp_stream[conn]),
        "roles": keys.roles.named_in_order(order, evidence.role_names()),
        "labels": keys.labels.named_in_order(order, evidence.LABEL_NAMES),
    }
    return table(columns, FRAMES)


def _capture_order(frames: np.ndarray) -> np.ndarray:
    """The order that sorts rows by frame number, ties kept in row order (a stable sort).

    Frame numbers are almost all distinct, so a plain sort of frame * rows + row (one
    distinct key per row) gives the same order as a stable sort, much faster.
    """
    rows = len(frames)
    if rows == 0:
        return np.zeros(0, np.int64)
    low, top = int(frames.min()), int(frames.max())
    if top - low < 8 * rows:  # dense (key frames): place each row at its frame, no sort
        placed = _placed_in_order(frames - low, top - low + 1)
        if placed is not None:
            return placed
    if top >= (1 << 62) // rows:
        return np.argsort(frames, kind="stable")
    return np.argsort(frames * rows + np.arange(rows))


def _placed_in_order(offsets: np.ndarray, span: int) -> np.ndarray | None:
    """The rows in order of their distinct offsets in [0, span), by one scatter and one
    gather; None when two rows share an offset (then a sort keeps their order)."""
    rows = len(offsets)
    slot = np.full(span, -1, dtype=np.int32 if rows < 1 << 31 else np.int64)
    slot[offsets] = np.arange(rows, dtype=slot.dtype)
    placed = slot[slot >= 0]
    return placed.astype(np.int64) if len(placed) == rows else None


def _nullable(values: np.ndarray) -> pa.Array:
    """-1 (unknown) becomes a null."""
    return from_numpy(values, pa.int64(), mask=values < 0)


def _nullable_float(values: np.ndarray) -> pa.Array:
    """NaN (no such time) becomes a null."""
    return from_numpy(values, pa.float64(), mask=np.isnan(values))
