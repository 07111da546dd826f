"""One capture's packet table -> its labelled connections and key frames (Arrow tables)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from tcp_teardown import evidence
from tcp_teardown.connections import Segments, split_connections
from tcp_teardown.facts import Params, compute_facts
from tcp_teardown.lists import as_series, grouped_list
from tcp_teardown.memory import release_unused
from tcp_teardown.rules import apply_rules
from tcp_teardown.schema import CONNECTIONS, FRAMES, arrow_table

# Connections are labelled in slices of about this many packets (cut between 4-tuples):
# the per-packet temporaries of the facts then stay bounded whatever the capture size.
SLICE_PACKETS = 250_000


@dataclass
class FileResult:
    """The two per-capture tables."""

    connections: pa.Table
    frames: pa.Table


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
    pieces = [_label_slice(split.segments.slice(c0, c1), split.identity.iloc[c0:c1].reset_index(drop=True),
                           file, params)
              for c0, c1 in split.slices(SLICE_PACKETS)]
    release_unused()
    conns = pd.concat([c for c, _ in pieces], ignore_index=True)
    frames = pd.concat([f for _, f in pieces], ignore_index=True)
    conns = conns.sort_values("first_frame", kind="stable").reset_index(drop=True)
    frames = frames.sort_values("frame_number", kind="stable").reset_index(drop=True)
    return FileResult(arrow_table(conns, CONNECTIONS), arrow_table(frames, FRAMES))


def _nullable(values: np.ndarray) -> pd.arrays.IntegerArray:
    """-1 (unknown) becomes a null."""
    out = pd.array(values, dtype="Int64")
    out[values < 0] = pd.NA
    return out


def _label_slice(seg: Segments, ident: pd.DataFrame, file: str, params: Params) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Facts, labels and key frames of a slice of whole 4-tuples (bounded working memory)."""
    labelled = apply_rules(compute_facts(seg, ident, params), params)
    key_rows = evidence.group_key_frames(evidence.key_frame_rows(seg, labelled))

    def frame(column: str) -> pd.arrays.IntegerArray:
        return evidence.frame_of(seg, labelled[column].to_numpy())

    key_frames = as_series(grouped_list(key_rows["conn"].to_numpy(), key_rows["frame"].to_numpy(),
                                        len(labelled), pa.int64()))
    close_event = labelled["close_event"].to_numpy()
    close_duration = np.where(close_event >= 0, labelled["last_ts"] - labelled["close_ts"], np.nan)
    conns = pd.DataFrame({
        "flow_id": ident["flow_id"],
        "file": file,
        "tcp_stream": _nullable(ident["tcp_stream"].to_numpy()),
        "client_ip": ident["client_ip"],
        "client_port": ident["client_port"],
        "server_ip": ident["server_ip"],
        "server_port": ident["server_port"],
        "ip_version": ident["ip_version"],
        "roles_guessed": ident["roles_guessed"],
        "open": labelled["open"],
        "close": labelled["close"],
        "flags": labelled["flags"],
        "time_wait_side": labelled["time_wait_side"],
        "first_ts": labelled["first_ts"],
        "last_ts": labelled["last_ts"],
        "duration_s": labelled["last_ts"] - labelled["first_ts"],
        "close_duration_s": close_duration,
        "idle_before_close_s": labelled["idle_before_close_s"],
        "packets_c2s": labelled["packets_c2s"],
        "packets_s2c": labelled["packets_s2c"],
        "bytes_c2s": labelled["bytes_c2s"],
        "bytes_s2c": labelled["bytes_s2c"],
        "syn_ack_intervals": labelled["syn_ack_intervals"],
        "syn_frame": frame("syn"),
        "first_fin_frame": frame("first_fin"),
        "second_fin_frame": frame("second_fin"),
        "rst_frame": frame("first_rst"),
        "final_ack_frame": frame("final_ack"),
        "first_frame": seg.frame[labelled["first"].to_numpy()],
        "last_frame": seg.frame[labelled["last"].to_numpy()],
        "key_frames": key_frames,
    })
    frames = pd.DataFrame({
        "file": file,
        "frame_number": key_rows["frame"].to_numpy(np.int64),
        "flow_id": ident["flow_id"].to_numpy()[key_rows["conn"].to_numpy()],
        "tcp_stream": _nullable(ident["tcp_stream"].to_numpy()[key_rows["conn"].to_numpy()]),
        "roles": key_rows["roles"],
        "labels": key_rows["labels"],
    })
    return conns, frames
