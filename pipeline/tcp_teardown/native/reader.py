"""read_packets: a capture file as record batches of the PACKETS schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from tcp_teardown.arrays import from_numpy
from tcp_teardown.native import pcap, pcapng
from tcp_teardown.native.addresses import ip_text
from tcp_teardown.native.decode import SEGMENT_TYPES, Room, decode, in_room
from tcp_teardown.native.errors import NativeUnsupported, TruncatedCapture
from tcp_teardown.native.files import open_source
from tcp_teardown.native.frames import Frames
from tcp_teardown.native.streams import StreamTracker
from tcp_teardown.native.views import empty
from tcp_teardown.schema import PACKETS

# Frames decoded at a time: bounds the temporary arrays of a window of tiny packets.
DECODE_FRAMES = 1 << 17
# Rows a batch's columns are first made for, when the file's size is unknown (they grow
# as needed, up to the batch size), and at most when it is known.
FIRST_BATCH_ROWS = 1 << 18
MAX_EXPECTED_ROWS = 1 << 25
# The row columns (see _rows) and their types: the segments' (decode makes them in the
# row buffer when their names and types match), addresses as numbers.
ROW_TYPES = {"frame_number": SEGMENT_TYPES["frame"]} | {
    name: SEGMENT_TYPES[name]
    for name in ("ts", "version", "src_lo", "dst_lo", "sport", "dport", "flags", "seq", "ack", "payload",
                 "window", "ttl", "ip_id")
} | {"stream": np.int64}


def read_packets(path: Path, chunk_packets: int = 1_000_000) -> Iterator[pa.RecordBatch]:
    """The TCP segments of a pcap/pcapng file (plain, gzip or zstd), in capture order, as
    batches of at most `chunk_packets` rows with exactly the PACKETS schema.

    Raises NativeUnsupported for files to leave to tshark (before the first batch when
    the reason shows in the first window) and TruncatedCapture after the last batch of
    a file that ends in the middle of a record."""
    if chunk_packets < 1:
        raise ValueError("chunk_packets must be positive")
    source = open_source(Path(path))
    try:
        head = source.window(64)[:64].tobytes()
        if pcap.is_pcap(head):
            frames = pcap.read_frames(source, head)
        elif pcapng.is_pcapng(head):
            frames = pcapng.read_frames(source)
        else:
            raise NativeUnsupported("not a pcap or pcapng file")
        yield from _batches(frames, chunk_packets, source.size)
    finally:
        source.close()


def _batches(frames: Iterator[Frames], chunk_packets: int, file_bytes: int | None) -> Iterator[pa.RecordBatch]:
    tracker = StreamTracker()
    rows = RowBuffer(chunk_packets)
    cut_short: TruncatedCapture | None = None
    try:
        for window in frames:
            if file_bytes and rows.expected is None:
                rows.expected = _expected_frames(window, file_bytes)
            for start in range(0, len(window), DECODE_FRAMES):
                part = window.part(start, start + DECODE_FRAMES)
                columns = _rows(part, tracker, rows.room(len(part)))
                done = 0
                while done < len(columns["frame_number"]):
                    done += rows.add(columns, done)
                    if rows.full:
                        yield rows.batch()
                del columns  # may be views of the buffer, which the next part may move
    except TruncatedCapture as exc:
        cut_short = exc  # yield what is complete first, as tshark prints it
    if rows.count:
        yield rows.batch()
    if cut_short is not None:
        raise cut_short


def _expected_frames(window: Frames, file_bytes: int) -> int:
    """Frames in the whole file if it is as dense as this window (a bound on rows)."""
    return len(window) * file_bytes // max(window.views.n, 1) + len(window)


def _rows(frames: Frames, tracker: StreamTracker, room: Room | None = None) -> dict[str, np.ndarray]:
    """The rows of one part of a window, in the schema's types (so batches need no
    conversion) except the addresses, kept as numbers until a batch is made (without
    the high halves, all zero, when every row is IPv4).

    Columns are made in `room` (the row buffer's space for them) where they can be."""
    segments = decode(frames, room)
    rows = segments.row
    every = bool(rows.all())
    if not every:
        room = None  # the rows are a selection of the segments: copied out below
    streams = tracker.assign(segments, out=in_room(room, "stream", len(segments), np.int64))
    seg = segments.take(rows)
    columns = {
        "frame_number": np.add(seg.frame, frames.first_frame, out=in_room(room, "frame_number", len(seg), np.int64)),
        "ts": seg.ts,
        "version": seg.version,
        "src_hi": seg.src_hi,
        "src_lo": seg.src_lo,
        "dst_hi": seg.dst_hi,
        "dst_lo": seg.dst_lo,
        "sport": seg.sport,
        "dport": seg.dport,
        "flags": seg.flags,
        "seq": seg.seq,
        "ack": seg.ack,
        "payload": seg.payload,
        "window": seg.window,
        "ttl": seg.ttl,
        "ip_id": seg.ip_id,
        "stream": streams if every else streams[rows],
    }
    if (seg.version == 4).all():
        del columns["src_hi"], columns["dst_hi"]
    return columns


class RowBuffer:
    """The rows of the next batch, each column in one array made as big as the batch is
    expected to get (only the pages written to take memory), grown if it gets bigger.
    Each part is made in the buffer's `room` or copied in once and let go, so the memory
    held is about one batch, and the batch's columns become Arrow arrays without
    another copy."""

    def __init__(self, size: int) -> None:
        self.size = size  # rows per batch
        self.count = 0
        self.columns: dict[str, np.ndarray] = {}
        self.expected: int | None = None  # rows the file may have, if known

    @property
    def full(self) -> bool:
        return self.count == self.size

    def room(self, rows: int) -> Room | None:
        """Space for the next `rows` rows in each column, for a part to be made in place
        (`add` then copies nothing); None if they would not all go in this batch."""
        if self.count + rows > self.size:
            return None
        self._reserve(self.count + rows)
        return {name: column[self.count : self.count + rows] for name, column in self.columns.items()}

    def add(self, part: dict[str, np.ndarray], offset: int) -> int:
        """Copy rows of `part` from `offset` on, as many as the batch takes; how many."""
        take = min(self.size - self.count, len(part["frame_number"]) - offset)
        self._reserve(self.count + take)
        end = self.count + take
        for name, values in part.items():
            if name not in self.columns:  # the first IPv6 row: high halves from now on
                self.columns[name] = empty(self.capacity, values.dtype)
                self.columns[name][: self.count] = 0
            target, source = self.columns[name][self.count : end], values[offset : offset + take]
            if not _same_place(target, source):  # (made in `room`: already there)
                target[...] = source
        for name in self.columns.keys() - part.keys():
            self.columns[name][self.count : end] = 0  # IPv4 rows: no high halves
        self.count = end
        return take

    @property
    def capacity(self) -> int:
        return len(self.columns["frame_number"]) if self.columns else 0

    def _reserve(self, rows: int) -> None:
        if rows <= self.capacity:
            return
        if not self.columns:
            first = min(self.expected, MAX_EXPECTED_ROWS) if self.expected else FIRST_BATCH_ROWS
            capacity = min(self.size, max(rows, first))
            self.columns = {name: empty(capacity, dtype) for name, dtype in ROW_TYPES.items()}
            return
        capacity = min(self.size, max(rows, 2 * self.capacity))
        for name, column in self.columns.items():
            self.columns[name] = empty(capacity, column.dtype)
            self.columns[name][: self.count] = column[: self.count]

    def batch(self) -> pa.RecordBatch:
        """The rows so far as a batch; the buffer starts over."""
        columns, count = self.columns, self.count
        self.columns, self.count = {}, 0
        # (the rest of each column was never written to, so it takes no memory)
        return _batch({name: column[:count] for name, column in columns.items()})


def _same_place(a: np.ndarray, b: np.ndarray) -> bool:
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.strides == b.strides


def _batch(columns: dict[str, np.ndarray]) -> pa.RecordBatch:
    """A batch from the row columns (numbers become Arrow arrays without a copy, through
    their buffers: pyarrow's own conversion would import pandas)."""
    version = columns["version"]
    ipv4_only = "src_hi" not in columns
    arrays = {
        "src_ip": ip_text(version, columns.get("src_hi"), columns["src_lo"]),
        "dst_ip": ip_text(version, columns.get("dst_hi"), columns["dst_lo"]),
        "ip_version": from_numpy(version),
        "ip_id": from_numpy(columns["ip_id"], mask=None if ipv4_only else version == 6),
    }
    for field, name in (
        ("frame_number", "frame_number"),
        ("ts", "ts"),
        ("src_port", "sport"),
        ("dst_port", "dport"),
        ("tcp_flags", "flags"),
        ("seq_raw", "seq"),
        ("ack_raw", "ack"),
        ("payload_len", "payload"),
        ("window", "window"),
        ("ttl", "ttl"),
        ("tcp_stream", "stream"),
    ):
        arrays[field] = from_numpy(columns[name])
    return pa.RecordBatch.from_arrays([arrays[f.name] for f in PACKETS], schema=PACKETS)
