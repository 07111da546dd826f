"""Stitch pieces back together: analyze each 4-tuple bucket, renumber streams, write parts.

Why this equals a whole-file run: every step of the connection logic (split on new
SYNs, roles, facts, the label rules, even port reuse, which compares a connection with
the previous one on the same 4-tuple) looks at the packets of one 4-tuple only. A bucket
holds every packet of its 4-tuples from every piece, in capture order, so the analysis
of a bucket gives exactly the rows a whole-file run gives for those 4-tuples: same
flow_id, same labels, same frame keys, whatever the piece edges and however long a
connection idles across them. Nothing is guessed from time horizons.

Two numbers need care because pieces are files of their own:

- Frame numbers: rows carry frame keys (chunks.MEMBER_SHIFT); `finish` turns them back
  into (file, frame number in that file), so a rotation set keeps per-file numbers and
  the chunks of one file get whole-file numbers.
- tcp.stream: tshark numbers the conversations of each file it opens from 0, in the
  order it creates them. For a file read as editcap chunks the per-chunk numbers are
  replaced by the whole-file ones, computed with tshark's rule per 4-tuple (see
  `conversation_openers`) and ranked over all buckets in `finish`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tcp_teardown import filters, tcpflags
from tcp_teardown.analysis import analyze_packets
from tcp_teardown.arrays import from_numpy, scalar, strings, to_numpy
from tcp_teardown.batch import dataset
from tcp_teardown.batch.chunks import FRAME_MASK, IPC_OPTIONS, MEMBER_SHIFT, read_buckets
from tcp_teardown.batch.manifest import Part
from tcp_teardown.codes import radix_order
from tcp_teardown.connections import address_codes, pair_codes
from tcp_teardown.facts import Params
from tcp_teardown.schema import CONNECTIONS, FRAMES, PACKETS

# A renumbered tcp_stream holds this bit plus the frame key of the packet that opened
# its conversation until `finish` ranks the openers (real stream numbers stay far below).
OPENER_FLAG = 1 << 62
SEQ_MASK = 0xFFFFFFFF
# A rotation set's captures each keep a part open per kind while its buckets are written;
# past this many open files, parts are written bucket by bucket instead.
MAX_OPEN_PARTS = 256
# Rows the open parts may hold between buckets before they are written (about one
# bucket's rows: held rows keep their bucket's table in memory).
FINISH_HELD_ROWS = 500_000
FRAME_COLUMNS = ("syn_frame", "first_fin_frame", "second_fin_frame", "rst_frame", "final_ack_frame",
                 "first_frame", "last_frame")


def conversation_openers(table: pa.Table, members: frozenset[int]) -> tuple[pa.Table, np.ndarray]:
    """Mark each packet of `members` with the packet that opened its tshark conversation.

    tshark's rule (4.0): one conversation per address/port pair of a file, opened by the
    pair's first packet; a SYN without ACK opens a new one when its sequence number
    differs from the conversation's base for that direction. The base is set by the
    first segment after the conversation opened that tells it: one sent in that
    direction (its seq, minus one unless it is a SYN) or an ACK from the other side
    (its ack minus one). Returns the table with `tcp_stream` = OPENER_FLAG | opener key
    for those packets, and the opener keys (the conversations) found.
    """
    keys = to_numpy(table.column("frame_number"))
    rows = np.flatnonzero(np.isin(keys >> MEMBER_SHIFT, np.fromiter(members, np.int64, len(members))))
    if len(rows) == 0:
        return table, np.zeros(0, np.int64)
    sub = table.take(from_numpy(rows))
    key = keys[rows]
    _, codes = address_codes(sub)
    n = len(rows)
    src = codes[:n] * 65536 + to_numpy(sub.column("src_port")).astype(np.int64)
    dst = codes[n:] * 65536 + to_numpy(sub.column("dst_port")).astype(np.int64)
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    group = pair_codes(key >> MEMBER_SHIFT, pair_codes(lo, hi))  # a pair within one file
    side = (src != lo).astype(np.int64)
    order = np.lexsort((key, group))
    g, d = group[order], side[order]
    flags = to_numpy(sub.column("tcp_flags"))[order]
    seq = to_numpy(sub.column("seq_raw"))[order] & SEQ_MASK
    ack = to_numpy(sub.column("ack_raw"))[order]
    position = np.arange(n)
    first = np.r_[True, g[1:] != g[:-1]]
    group_start = np.maximum.accumulate(np.where(first, position, 0))
    is_syn, has_ack = tcpflags.is_syn(flags), tcpflags.has_ack(flags)
    next_setter, base = [], []
    for this_side in (0, 1):
        same = d == this_side
        setter = same | has_ack
        value = np.where(same, np.where(is_syn, seq, seq - 1), ack - 1) & SEQ_MASK
        next_setter.append(np.minimum.accumulate(np.where(setter, position, n)[::-1])[::-1])
        base.append(value)
    opens = first.copy()
    # SYNs without ACK after a pair's first packet, in order: the only packets that can
    # open a conversation later; whether one does depends on the one before (a loop).
    candidates = np.flatnonzero(((flags & (tcpflags.SYN | tcpflags.ACK)) == tcpflags.SYN) & ~first)
    current, start = -1, 0
    for q, group_q, side_q, seq_q in zip(candidates.tolist(), g[candidates].tolist(), d[candidates].tolist(),
                                         seq[candidates].tolist(), strict=True):
        if group_q != current:
            current, start = group_q, int(group_start[q])
        setter = int(next_setter[side_q][start])
        if setter < q and seq_q != int(base[side_q][setter]):
            opens[q] = True
            start = q
    opener_pos = np.maximum.accumulate(np.where(opens, position, 0))
    opener_sorted = key[order][opener_pos]
    opener = np.empty(n, np.int64)
    opener[order] = opener_sorted
    stream = to_numpy(pc.fill_null(table.column("tcp_stream"), scalar(-1, pa.int64()))).copy()
    stream[rows] = opener | OPENER_FLAG
    index = table.schema.get_field_index("tcp_stream")
    table = table.set_column(index, PACKETS.field("tcp_stream"), from_numpy(stream, pa.int64()))
    return table, np.unique(opener_sorted[opens])


@dataclass(frozen=True)
class BucketSpec:
    bucket: int  # this task's number
    fine: tuple[int, ...]  # the piece files' buckets it analyzes
    pieces: tuple[str, ...]  # piece files in capture order
    renumber: frozenset[int]  # members whose tcp.stream numbers are per chunk
    params: Params
    scratch: str


@dataclass
class BucketOutcome:
    bucket: int
    connections_path: str
    frames_path: str
    openers: np.ndarray
    packets: int
    connections: int
    seconds: float


def analyze_bucket(spec: BucketSpec) -> BucketOutcome:
    """Every connection of the 4-tuples of one bucket, from all pieces (exact, see module doc)."""
    started = time.monotonic()
    table = read_buckets(list(spec.pieces), list(spec.fine))
    packets = table.num_rows
    openers = np.zeros(0, np.int64)
    if spec.renumber:
        table, openers = conversation_openers(table, spec.renumber)
    result = analyze_packets([table], "", spec.params)
    del table
    scratch = Path(spec.scratch)
    paths = []
    for kind, rows in (("connections", result.connections), ("frames", result.frames)):
        path = scratch / f"bucket-{spec.bucket:05d}.{kind}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, rows.schema, options=IPC_OPTIONS) as w:
            w.write_table(rows)
        paths.append(str(path))
    return BucketOutcome(spec.bucket, paths[0], paths[1], openers, packets, result.connections.num_rows,
                         time.monotonic() - started)


@dataclass(frozen=True)
class MemberInfo:
    name: str
    day: str | None


@dataclass(frozen=True)
class FinishSpec:
    root: str
    members: tuple[MemberInfo, ...]
    buckets: tuple[tuple[str, str], ...]  # (connections, frames) scratch files per bucket
    openers: np.ndarray  # sorted conversation openers of renumbered members, all buckets


@dataclass
class MemberRows:
    """What one capture of a unit got in the dataset."""

    name: str
    connections: int = 0
    key_frames: int = 0
    parts: list[Part] | None = None


def _read_ipc(path: str) -> pa.Table:
    with pa.memory_map(path) as source:
        return pa.ipc.open_file(source).read_all()


def _frame_numbers(column: pa.ChunkedArray) -> pa.Array:
    return pc.bit_wise_and(column.combine_chunks(), scalar(FRAME_MASK, pa.int64()))


def _streams(column: pa.ChunkedArray, openers: np.ndarray) -> pa.Array:
    """Opener-marked streams -> the whole-file tcp.stream number (rank among the file's openers)."""
    values = column.combine_chunks()
    raw = to_numpy(pc.fill_null(values, scalar(0, pa.int64())))
    marked = (raw & OPENER_FLAG) != 0
    if not marked.any():
        return values
    key = raw & ~OPENER_FLAG
    first_of_member = (key >> MEMBER_SHIFT) << MEMBER_SHIFT
    rank = np.searchsorted(openers, key) - np.searchsorted(openers, first_of_member)
    return from_numpy(np.where(marked, rank, raw), pa.int64(), mask=to_numpy(values.is_null()))


def localize(conns: pa.Table, frames: pa.Table, names: list[str],
             openers: np.ndarray) -> tuple[pa.Table, np.ndarray, pa.Table, np.ndarray]:
    """Frame keys -> (file, frame number in that file); streams renumbered.

    A connection belongs to the file of its first packet; a key frame to its own file.
    Returns each table with the member index of every row.
    """
    name_array = strings(names)
    conn_member = to_numpy(conns.column("first_frame")) >> MEMBER_SHIFT
    frame_member = to_numpy(frames.column("frame_number")) >> MEMBER_SHIFT
    columns = {c: conns.column(c) for c in conns.column_names}
    for name in FRAME_COLUMNS:
        columns[name] = _frame_numbers(conns.column(name))
    key_frames = conns.column("key_frames").combine_chunks()
    columns["key_frames"] = pa.ListArray.from_arrays(
        key_frames.offsets, pc.bit_wise_and(key_frames.values, scalar(FRAME_MASK, pa.int64())))
    columns["tcp_stream"] = _streams(conns.column("tcp_stream"), openers)
    columns["file"] = name_array.take(from_numpy(conn_member))
    conns = pa.table([columns[f.name] for f in CONNECTIONS], schema=CONNECTIONS)
    fcols = {c: frames.column(c) for c in frames.column_names}
    fcols["frame_number"] = _frame_numbers(frames.column("frame_number"))
    fcols["tcp_stream"] = _streams(frames.column("tcp_stream"), openers)
    fcols["file"] = name_array.take(from_numpy(frame_member))
    frames = pa.table([fcols[f.name] for f in FRAMES], schema=FRAMES)
    return conns, conn_member, frames, frame_member


def finish(spec: FinishSpec) -> list[MemberRows]:
    """Write the parts of every capture of a unit, bucket by bucket, and its filters.

    A capture gets one part per kind, its rows written as they add up across buckets
    (parts and row groups cost more than rows: a set of 100 files in 5 buckets would
    otherwise write 1,000 parts); a set of more captures than MAX_OPEN_PARTS allows open
    files for writes a part per bucket."""
    root = Path(spec.root)
    names = [m.name for m in spec.members]
    out = [MemberRows(m.name, parts=[]) for m in spec.members]
    sets: dict[int, FilterSets] = {}
    whole = len(spec.buckets) == 1 or 2 * len(spec.members) <= MAX_OPEN_PARTS
    writers: dict[tuple[int, str], dataset.PartWriter] = {}
    try:
        for bucket, (conns_path, frames_path) in enumerate(spec.buckets):
            conns, conn_member, frames, frame_member = localize(
                _read_ipc(conns_path), _read_ipc(frames_path), names, spec.openers)
            member_conns, member_frames = _per_member(conns, conn_member), _per_member(frames, frame_member)
            for kind, by_member in (("connections", member_conns), ("frames", member_frames)):
                for index, rows in by_member.items():
                    info = spec.members[index]
                    relative = dataset.part_path(kind, info.day or "unknown", info.name, None if whole else bucket)
                    if whole:
                        writers.setdefault((index, kind), dataset.PartWriter(root, relative)).write(rows)
                    else:
                        out[index].parts.append(dataset.write_part(root, relative, rows))
            for index in sorted(member_conns.keys() | member_frames.keys()):
                mine = member_conns.get(index, conns.slice(0, 0)), member_frames.get(index, frames.slice(0, 0))
                out[index].connections += mine[0].num_rows
                out[index].key_frames += mine[1].num_rows
                sets.setdefault(index, FilterSets()).add(*mine)
            if sum(writer.pending_rows for writer in writers.values()) > FINISH_HELD_ROWS:
                for writer in writers.values():
                    writer.flush()
        for (index, _), writer in writers.items():
            out[index].parts.append(writer.commit())
    finally:
        for writer in writers.values():
            writer.abandon()  # (nothing left to remove once committed)
    for index, found in sets.items():
        if found.counts:
            text = filters.render_text(found.label_filters(names[index]))
            out[index].parts.append(dataset.write_text_part(root, dataset.filters_path(names[index]), text))
    return out


def _per_member(table: pa.Table, member: np.ndarray) -> dict[int, pa.Table]:
    """The rows of each member present (row order kept): one sort and slices, not a
    selection per member; the table itself when it is all one member's."""
    if len(member) == 0:
        return {}
    if (member == member[0]).all():
        return {int(member[0]): table}
    counts = np.bincount(member)
    ordered = table.take(from_numpy(radix_order(member, len(counts))))
    starts = np.cumsum(counts) - counts
    return {int(i): ordered.slice(int(starts[i]), int(counts[i])) for i in np.flatnonzero(counts)}


class FilterSets:
    """The display filters of one capture, gathered bucket by bucket.

    Only the numbers the filters name are kept (streams and key frames per label), not
    the rows, so a capture of any size needs one bucket of rows at a time. The result is
    what filters.label_filters gives for the whole capture at once.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.streams: dict[str, list[np.ndarray]] = {}
        self.frames: dict[str, list[np.ndarray]] = {}

    def add(self, conns: pa.Table, frames: pa.Table) -> None:
        stream = to_numpy(pc.fill_null(conns.column("tcp_stream"), scalar(-1, pa.int64())))
        flags = conns.column("flags").combine_chunks()
        flag_stream = stream[to_numpy(pc.list_parent_indices(flags))]
        for column, streams in ((conns.column("open"), stream), (conns.column("close"), stream),
                                (pc.list_flatten(flags), flag_stream)):
            for label, rows in _rows_per_label(column):
                chosen = streams[rows]
                self.counts[label] = self.counts.get(label, 0) + len(chosen)
                self.streams.setdefault(label, []).append(chosen[chosen >= 0])
        key_labels = frames.column("labels").combine_chunks()
        if len(key_labels):
            numbers = to_numpy(frames.column("frame_number"))[to_numpy(pc.list_parent_indices(key_labels))]
            for label, rows in _rows_per_label(pc.list_flatten(key_labels)):
                self.frames.setdefault(label, []).append(numbers[rows])

    def label_filters(self, file: str) -> list[filters.LabelFilter]:
        order = {label: i for i, label in enumerate(filters.LABELS)}
        empty = np.zeros(0, np.int64)

        def joined(parts: list[np.ndarray] | None) -> np.ndarray:
            return np.concatenate(parts) if parts else empty

        return [filters.LabelFilter(file, label, count,
                                    filters.set_filters("tcp.stream", joined(self.streams.get(label))),
                                    filters.set_filters("frame.number", joined(self.frames.get(label))))
                for label, count in sorted(self.counts.items(), key=lambda kv: order.get(kv[0], len(order)))]



def _rows_per_label(column: pa.Array | pa.ChunkedArray) -> Iterator[tuple[str, np.ndarray]]:
    """Each label of a text or dictionary column with the rows holding it (nulls: none),
    from the column's integer codes: no Python object per row."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    offset = 0
    for chunk in chunks:
        encoded = chunk if pa.types.is_dictionary(chunk.type) else pc.dictionary_encode(chunk)
        codes = to_numpy(pc.fill_null(encoded.indices, scalar(-1, encoded.indices.type)))
        for code, label in enumerate(encoded.dictionary.to_pylist()):
            rows = np.flatnonzero(codes == code)
            if len(rows):
                yield str(label), rows + offset
        offset += len(chunk)
