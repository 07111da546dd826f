"""Wireshark display filters per capture and label: paste one to see a label's packets.

Sets are written with commas (tshark 4.0 requires them) and split so no filter grows
past MAX_SET_MEMBERS: tshark rejects command lines over ~128 KiB and a huge set costs
more than the read itself. Past that, filter an annotated capture on its comments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tcp_teardown.arrays import scalar, strings, to_numpy
from tcp_teardown.codes import radix_order, sorted_distinct
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
    unique = sorted_distinct(np.asarray(members, dtype=np.int64))
    if len(unique) > MAX_TOTAL_MEMBERS:  # counted before any text is made for a set that is dropped
        return ()
    return tuple(
        f"{field} in {{{','.join(map(str, unique[i:i + MAX_SET_MEMBERS].tolist()))}}}"
        for i in range(0, len(unique), MAX_SET_MEMBERS)
    )


def label_filters(conns: pa.Table, frames: pa.Table) -> list[LabelFilter]:
    """Every label present in each capture, with its stream and frame filters.

    Works on integer codes: each (file, label) pair is one small integer key and rows are
    split by key (`_distinct_per_key`), so no Python object is made per connection or frame.
    """
    if conns.num_rows == 0:
        return []
    files = pc.unique(conns.column("file"))  # first-seen order, the order the filters list them in
    flags = pc.list_flatten(conns.column("flags"))
    labels = _label_order(conns.column("open"), conns.column("close"), flags)
    keys = _Keys(len(files), len(labels))
    conn_file = _file_codes(conns.column("file"), files)
    stream = to_numpy(pc.fill_null(conns.column("tcp_stream"), scalar(-1, pa.int64())))
    flag_rows = _parent_indices(conns.column("flags"))
    conn_key = np.concatenate([keys.of(conn_file, value_codes(conns.column("open"), labels)),
                               keys.of(conn_file, value_codes(conns.column("close"), labels)),
                               keys.of(conn_file[flag_rows], value_codes(flags, labels))])
    conn_stream = np.concatenate([stream, stream, stream[flag_rows]])
    counts = np.bincount(conn_key, minlength=keys.count)
    streams = _distinct_per_key(np.where(conn_stream >= 0, conn_key, keys.dropped), conn_stream, keys.count)
    frame_key, frame_number = _frame_keys(frames, files, labels, keys)
    key_frames = _distinct_per_key(frame_key, frame_number, keys.count)
    frame_counts = np.bincount(frame_key, minlength=keys.count)
    file_names = files.to_pylist()
    return [LabelFilter(str(file_names[file]), labels[label], int(counts[key]),
                        _sets("tcp.stream", streams[key]),
                        _sets("frame.number", key_frames[key]),
                        int(frame_counts[key]))
            for key, file, label in keys.present(counts)]


def _sets(field: str, members: np.ndarray | None) -> tuple[str, ...]:
    return () if members is None else set_filters(field, members)


@dataclass(frozen=True)
class _Keys:
    """One small integer per (file, label) pair, in the order the filters are listed.

    Code `files` stands for a file and `labels` for a label the connections do not have
    (a frame of another capture, a null label): their keys are counted, never listed.
    """

    files: int
    labels: int

    @property
    def count(self) -> int:
        return (self.files + 1) * (self.labels + 1)

    @property
    def dropped(self) -> int:
        return self.count - 1

    def of(self, file: np.ndarray, label: np.ndarray) -> np.ndarray:
        return file * (self.labels + 1) + label

    def present(self, counts: np.ndarray) -> list[tuple[int, int, int]]:
        """(key, file, label) of every listed key with a count, in key order."""
        found = []
        for key in np.flatnonzero(counts).tolist():
            file, label = divmod(key, self.labels + 1)
            if file < self.files and label < self.labels:
                found.append((key, file, label))
        return found


def _frame_keys(frames: pa.Table, files: pa.Array, labels: list[str], keys: _Keys) -> tuple[np.ndarray, np.ndarray]:
    """The key and the frame number of every label of every key frame."""
    if frames.num_rows == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    per_frame = to_numpy(pc.fill_null(pc.list_value_length(frames.column("labels")), scalar(0, pa.int32())))
    file_of_frame = _file_codes(frames.column("file"), files)
    one_file = (file_of_frame == file_of_frame[0]).all()  # the usual case: no need to repeat it per label
    file = file_of_frame[0] if one_file else np.repeat(file_of_frame, per_frame)
    label = value_codes(pc.list_flatten(frames.column("labels")), labels)
    return keys.of(file, label), np.repeat(to_numpy(frames.column("frame_number")), per_frame)


def _label_order(*columns: pa.ChunkedArray) -> list[str]:
    """Every label the connections hold, in the order the filters list them: the
    taxonomy order, then any other label alphabetically."""
    seen = set()
    for column in columns:
        for chunk in column.chunks:
            seen.update((chunk.dictionary if pa.types.is_dictionary(chunk.type) else pc.unique(chunk)).to_pylist())
    return [*LABELS, *sorted(value for value in seen - set(LABELS) if value is not None)]


def value_codes(column: pa.ChunkedArray, values: Sequence[str]) -> np.ndarray:
    """Each row's position in `values`; len(values) for a null or any other value.

    A dictionary column is looked up once per dictionary entry, not per row."""
    missing = len(values)
    value_set = strings(list(values))
    parts = [np.zeros(0, np.int32)]
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            lookup = np.append(_positions(chunk.dictionary, value_set, missing), np.int32(missing))
            indices = pc.fill_null(chunk.indices.cast(pa.int32()), scalar(len(chunk.dictionary), pa.int32()))
            parts.append(lookup[to_numpy(indices)])
        else:
            parts.append(_positions(chunk, value_set, missing))
    return np.concatenate(parts)


def _file_codes(column: pa.ChunkedArray, files: pa.Array) -> np.ndarray:
    """Each value's position in `files` (len(files) when absent).

    Tables are concatenated per capture, so a chunk usually holds one file: comparing
    strings to one value is far cheaper than hashing every one of them."""
    parts = [np.zeros(0, np.int32)]
    for chunk in column.chunks:
        if len(chunk) and chunk.null_count == 0 and pc.all(pc.equal(chunk, chunk[0])).as_py():
            code = _positions(chunk.slice(0, 1), files, len(files))[0]
            parts.append(np.full(len(chunk), code, np.int32))
        else:
            parts.append(_positions(chunk, files, len(files)))
    return np.concatenate(parts)


def _positions(values: pa.Array, value_set: pa.Array, missing: int) -> np.ndarray:
    found = pc.index_in(values, value_set=value_set)
    return to_numpy(pc.fill_null(found, scalar(missing, pa.int32()))).astype(np.int32, copy=False)


def _parent_indices(lists: pa.ChunkedArray) -> np.ndarray:
    """The row of each list element, over all chunks."""
    parts, offset = [np.zeros(0, np.int64)], 0
    for chunk in lists.chunks:
        parts.append(to_numpy(pc.list_parent_indices(chunk)) + offset)
        offset += len(chunk)
    return np.concatenate(parts)


def _distinct_per_key(keys: np.ndarray, values: np.ndarray, n_keys: int) -> list[np.ndarray | None]:
    """The distinct values of each key 0..n_keys-1, ascending; None for a key with more
    than MAX_TOTAL_MEMBERS of them (its sets are not written).

    Keys with few rows are split by one radix sort. A key with more rows than that may
    still have few distinct values, so it is counted on a bitmap of its value range
    instead of being sorted: the common labels of a large capture cost a pass, not a sort.
    """
    rows = np.bincount(keys, minlength=n_keys)
    many = rows > MAX_TOTAL_MEMBERS
    few = ~many[keys]
    found: list[np.ndarray | None] = [None] * n_keys
    few_keys = keys[few]
    bounds = np.cumsum(np.bincount(few_keys, minlength=n_keys))[:-1]
    for key, part in enumerate(np.split(values[few][radix_order(few_keys, n_keys)], bounds)):
        if not many[key]:
            found[key] = sorted_distinct(part)
    for key in np.flatnonzero(many).tolist():
        part = values[keys == key]
        low = int(part.min())
        seen = np.zeros(int(part.max()) - low + 1, dtype=bool)
        seen[part - low] = True
        if np.count_nonzero(seen) <= MAX_TOTAL_MEMBERS:
            found[key] = np.flatnonzero(seen) + low
    return found


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
