"""Wireshark display filters per capture and label: paste one to see a label's packets.

Sets are written with commas (tshark 4.0 requires them) and split so no filter grows
past MAX_SET_MEMBERS: tshark rejects command lines over ~128 KiB and a huge set costs
more than the read itself. Past that, filter an annotated capture on its comments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tcp_teardown.vocab import CLOSE_VALUES, FLAG_VALUES, OPEN_VALUES

MAX_SET_MEMBERS = 500
# Past this many members in all, sets are not written: tshark rejects command lines over
# ~128 KiB (~20,000 members) and such a filter costs many times the read itself. The
# comment filter on an annotated capture selects the same frames at any size.
MAX_TOTAL_MEMBERS = 20_000
LABELS = (*OPEN_VALUES, *CLOSE_VALUES, *FLAG_VALUES)


@dataclass(frozen=True)
class LabelFilter:
    """The filters that select one label's connections and key frames in one capture."""

    file: str
    label: str
    connections: int
    stream_filters: tuple[str, ...]
    frame_filters: tuple[str, ...]
    key_frames: int = 0

    @property
    def too_large(self) -> bool:
        """True when a set was left out for its size (use the comment filter instead)."""
        return max(self.connections, self.key_frames) > MAX_TOTAL_MEMBERS


def set_filters(field: str, members: list[int] | np.ndarray) -> tuple[str, ...]:
    """`field in {a,b,c}` filters, at most MAX_SET_MEMBERS members each."""
    unique = np.unique(np.asarray(members, dtype=np.int64))
    if len(unique) > MAX_TOTAL_MEMBERS:
        return ()
    unique = unique.tolist()
    return tuple(
        f"{field} in {{{','.join(map(str, unique[i:i + MAX_SET_MEMBERS]))}}}"
        for i in range(0, len(unique), MAX_SET_MEMBERS)
    )


def label_filters(conns: pa.Table, frames: pa.Table) -> list[LabelFilter]:
    """Every label present in each capture, with its stream and frame filters.

    Works on the Arrow tables: list columns are flattened with their parent indices,
    so no Python object is made per connection or per frame.
    """
    if conns.num_rows == 0:
        return []
    file_ids, files = pd.factorize(_np(conns, "file"))
    stream = pc.fill_null(conns.column("tcp_stream"), -1).to_numpy()
    flags = conns.column("flags").combine_chunks()
    flag_rows = pc.list_parent_indices(flags).to_numpy()
    per_conn = pd.DataFrame({
        "file": np.concatenate([file_ids, file_ids, file_ids[flag_rows]]),
        "stream": np.concatenate([stream, stream, stream[flag_rows]]),
        "label": np.concatenate([_np(conns, "open"), _np(conns, "close"), _np_list(flags)]),
    })
    frame_file = pd.Index(files).get_indexer(_np(frames, "file")) if frames.num_rows else np.zeros(0, np.int64)
    labels = frames.column("labels").combine_chunks() if frames.num_rows else pa.array([], pa.list_(pa.string()))
    label_rows = pc.list_parent_indices(labels).to_numpy()
    per_frame = pd.DataFrame({
        "file": frame_file[label_rows] if len(label_rows) else np.zeros(0, np.int64),
        "frame": _np(frames, "frame_number")[label_rows] if len(label_rows) else np.zeros(0, np.int64),
        "label": _np_list(labels),
    })
    counts = per_conn.groupby(["file", "label"]).size()
    streams = {k: v.to_numpy() for k, v in per_conn[per_conn["stream"] >= 0].groupby(["file", "label"])["stream"]}
    key_frames = {k: v.to_numpy() for k, v in per_frame.groupby(["file", "label"])["frame"]}
    order = {label: i for i, label in enumerate(LABELS)}
    keys = sorted(counts.index, key=lambda k: (k[0], order.get(k[1], len(order))))
    empty = np.zeros(0, np.int64)
    return [LabelFilter(str(files[f]), str(label), int(counts[(f, label)]),
                        set_filters("tcp.stream", streams.get((f, label), empty)),
                        set_filters("frame.number", key_frames.get((f, label), empty)),
                        len(key_frames.get((f, label), empty)))
            for f, label in keys]


def _np(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).combine_chunks().to_numpy(zero_copy_only=False) if table.num_rows else np.zeros(0)


def _np_list(lists: pa.ListArray) -> np.ndarray:
    return pc.list_flatten(lists).to_numpy(zero_copy_only=False)


def render_text(filters: list[LabelFilter]) -> str:
    """The filters as text a person can paste into Wireshark's filter bar."""
    lines = ["# tcp-teardown display filters: paste a line into Wireshark's display filter bar.",
             "# 'connections' lines select whole connections (tcp.stream), 'key frames' lines",
             "# the frames that prove the label. Long sets are split into parts.", ""]
    current = None
    for f in filters:
        if f.file != current:
            lines += [f"## {f.file}", ""]
            current = f.file
        lines.append(f"### {f.label} ({f.connections} connection{'s' if f.connections != 1 else ''})")
        for i, text in enumerate(f.stream_filters, 1):
            part = f" part {i}/{len(f.stream_filters)}" if len(f.stream_filters) > 1 else ""
            lines.append(f"connections{part}: {text}")
        if len(f.stream_filters) > 1 or len(f.frame_filters) > 1 or f.too_large:
            lines.append(f"# large set: `tcp-teardown annotate {f.file} --out annotated.pcapng`, then filter "
                         f'frame.comment contains "tcp-teardown: {f.label} ("')
        for i, text in enumerate(f.frame_filters, 1):
            part = f" part {i}/{len(f.frame_filters)}" if len(f.frame_filters) > 1 else ""
            lines.append(f"key frames{part}: {text}")
        lines.append("")
    return "\n".join(lines)


def as_records(filters: list[LabelFilter]) -> list[dict]:
    return [{"file": f.file, "label": f.label, "connections": f.connections, "key_frames": f.key_frames,
             "stream_filters": list(f.stream_filters), "frame_filters": list(f.frame_filters)}
            for f in filters]
