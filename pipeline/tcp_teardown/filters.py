"""Wireshark display filters per capture and label: paste one to see a label's packets.

Sets are written with commas (tshark 4.0 requires them) and split so no filter grows
past MAX_SET_MEMBERS: tshark rejects command lines over ~128 KiB and a huge set costs
more than the read itself. Past that, filter an annotated capture on its comments.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tcp_teardown.vocab import CLOSE_VALUES, FLAG_VALUES, OPEN_VALUES

MAX_SET_MEMBERS = 500
LABELS = (*OPEN_VALUES, *CLOSE_VALUES, *FLAG_VALUES)


@dataclass(frozen=True)
class LabelFilter:
    """The filters that select one label's connections and key frames in one capture."""

    file: str
    label: str
    connections: int
    stream_filters: tuple[str, ...]
    frame_filters: tuple[str, ...]


def set_filters(field: str, members: list[int]) -> tuple[str, ...]:
    """`field in {a,b,c}` filters, at most MAX_SET_MEMBERS members each."""
    unique = sorted(set(members))
    return tuple(
        f"{field} in {{{','.join(map(str, unique[i:i + MAX_SET_MEMBERS]))}}}"
        for i in range(0, len(unique), MAX_SET_MEMBERS)
    )


def label_filters(conns: pd.DataFrame, frames: pd.DataFrame) -> list[LabelFilter]:
    """Every label present in each capture, with its stream and frame filters."""
    out: list[LabelFilter] = []
    for file, file_conns in conns.groupby("file", sort=False):
        file_frames = frames[frames["file"] == file]
        opens = file_conns["open"].astype(str)
        closes = file_conns["close"].astype(str)
        flag_sets = file_conns["flags"].map(set)
        frame_labels = file_frames["labels"].map(set)
        for label in LABELS:
            chosen = (opens == label) | (closes == label) | flag_sets.map(lambda s, x=label: x in s)
            if not chosen.any():
                continue
            streams = file_conns.loc[chosen, "tcp_stream"].dropna().astype(int).tolist()
            key = file_frames.loc[frame_labels.map(lambda s, x=label: x in s), "frame_number"]
            out.append(LabelFilter(str(file), label, int(chosen.sum()),
                                   set_filters("tcp.stream", streams),
                                   set_filters("frame.number", key.astype(int).tolist())))
    return out


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
        for i, text in enumerate(f.frame_filters, 1):
            part = f" part {i}/{len(f.frame_filters)}" if len(f.frame_filters) > 1 else ""
            lines.append(f"key frames{part}: {text}")
        lines.append("")
    return "\n".join(lines)


def as_records(filters: list[LabelFilter]) -> list[dict]:
    return [{"file": f.file, "label": f.label, "connections": f.connections,
             "stream_filters": list(f.stream_filters), "frame_filters": list(f.frame_filters)}
            for f in filters]
