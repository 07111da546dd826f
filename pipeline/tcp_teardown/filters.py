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
    base = conns[["file", "tcp_stream"]].reset_index(drop=True)
    per_conn = pd.concat([
        base.assign(label=conns["open"].astype(str).to_numpy()),
        base.assign(label=conns["close"].astype(str).to_numpy()),
        base.join(conns["flags"].reset_index(drop=True).explode().rename("label")).dropna(subset=["label"]),
    ], ignore_index=True)
    per_frame = frames[["file", "frame_number"]].reset_index(drop=True).join(
        frames["labels"].reset_index(drop=True).explode().rename("label")).dropna(subset=["label"])
    order = {label: i for i, label in enumerate(LABELS)}
    counts = per_conn.groupby(["file", "label"], sort=False).size()
    streams = per_conn.dropna(subset=["tcp_stream"]).groupby(["file", "label"], sort=False)["tcp_stream"]
    key_frames = per_frame.groupby(["file", "label"], sort=False)["frame_number"]
    stream_sets = {k: v.astype(int).tolist() for k, v in streams}
    frame_sets = {k: v.astype(int).tolist() for k, v in key_frames}
    files = list(dict.fromkeys(conns["file"].tolist()))
    keys = sorted(counts.index, key=lambda k: (files.index(k[0]), order.get(k[1], len(order))))
    return [LabelFilter(str(file), str(label), int(counts[(file, label)]),
                        set_filters("tcp.stream", stream_sets.get((file, label), [])),
                        set_filters("frame.number", frame_sets.get((file, label), [])))
            for file, label in keys]


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
