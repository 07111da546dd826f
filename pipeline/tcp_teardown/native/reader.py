"""read_packets: a capture file as record batches of the PACKETS schema."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from tcp_teardown.native import pcap, pcapng
from tcp_teardown.native.addresses import ip_text
from tcp_teardown.native.decode import decode
from tcp_teardown.native.errors import NativeUnsupported, TruncatedCapture
from tcp_teardown.native.files import open_source
from tcp_teardown.native.frames import Frames
from tcp_teardown.native.streams import StreamTracker
from tcp_teardown.schema import PACKETS

# Frames decoded at a time: bounds the temporary arrays of a window of tiny packets.
DECODE_FRAMES = 1 << 18


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
        yield from _batches(frames, chunk_packets)
    finally:
        source.close()


def _batches(frames: Iterator[Frames], chunk_packets: int) -> Iterator[pa.RecordBatch]:
    tracker = StreamTracker()
    pending: list[dict[str, np.ndarray]] = []
    pending_rows = 0
    cut_short: TruncatedCapture | None = None
    try:
        for window in frames:
            for start in range(0, len(window), DECODE_FRAMES):
                part = _slice(window, start, start + DECODE_FRAMES)
                columns = _rows(part, tracker)
                if len(columns["frame_number"]):
                    pending.append(columns)
                    pending_rows += len(columns["frame_number"])
                while pending_rows >= chunk_packets:
                    batch, pending = _take(pending, chunk_packets)
                    pending_rows -= chunk_packets
                    yield batch
    except TruncatedCapture as exc:
        cut_short = exc  # yield what is complete first, as tshark prints it
    while pending_rows > 0:
        size = min(chunk_packets, pending_rows)
        batch, pending = _take(pending, size)
        pending_rows -= size
        yield batch
    if cut_short is not None:
        raise cut_short


def _slice(frames: Frames, start: int, stop: int) -> Frames:
    if start == 0 and stop >= len(frames):
        return frames
    part = slice(start, stop)
    return replace(
        frames,
        data=frames.data[part],
        caplen=frames.caplen[part],
        wirelen=frames.wirelen[part],
        ts=frames.ts[part],
        link=frames.link[part],
        first_frame=frames.first_frame + start,
    )


def _rows(frames: Frames, tracker: StreamTracker) -> dict[str, np.ndarray]:
    """The rows of one part of a window, in the schema's types (so batches need no
    conversion) except the addresses, kept as numbers until a batch is made."""
    segments = decode(frames)
    streams = tracker.assign(segments)
    rows = segments.row
    seg = segments.take(rows)
    return {
        "frame_number": frames.first_frame + seg.frame,
        "ts": frames.ts[seg.frame],
        "version": seg.version.astype(np.int8),
        "src_hi": seg.src_hi,
        "src_lo": seg.src_lo,
        "dst_hi": seg.dst_hi,
        "dst_lo": seg.dst_lo,
        "sport": seg.sport.astype(np.int32),
        "dport": seg.dport.astype(np.int32),
        "flags": seg.flags.astype(np.int16),
        "seq": seg.seq.astype(np.int64),
        "ack": seg.ack.astype(np.int64),
        "payload": seg.payload.astype(np.int32),
        "window": seg.window.astype(np.int32),
        "ttl": seg.ttl.astype(np.int16),
        "ip_id": seg.ip_id.astype(np.int32),
        "stream": streams if rows.all() else streams[rows],
    }


def _take(pending: list[dict[str, np.ndarray]], size: int) -> tuple[pa.RecordBatch, list[dict[str, np.ndarray]]]:
    """The first `size` pending rows as a batch, and what is left."""
    taken: list[dict[str, np.ndarray]] = []
    have = 0
    while have < size:
        part = pending[0]
        count = len(part["frame_number"])
        if have + count <= size:
            taken.append(part)
            pending = pending[1:]
            have += count
        else:
            need = size - have
            taken.append({k: v[:need] for k, v in part.items()})
            pending = [{k: v[need:] for k, v in part.items()}, *pending[1:]]
            have = size
    return _batch(taken), pending


def _batch(parts: list[dict[str, np.ndarray]]) -> pa.RecordBatch:
    """One batch from parts, column by column: each column's parts are let go as soon as
    it is built, which keeps the peak memory near one batch."""

    def column(name: str) -> np.ndarray:
        return np.concatenate([part.pop(name) for part in parts])

    version = column("version")
    src_ip = ip_text(version, column("src_hi"), column("src_lo"))
    dst_ip = ip_text(version, column("dst_hi"), column("dst_lo"))
    arrays = {"src_ip": src_ip, "dst_ip": dst_ip, "ip_version": pa.array(version)}
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
        arrays[field] = pa.array(column(name))
    arrays["ip_id"] = pa.array(column("ip_id"), mask=version == 6)
    return pa.RecordBatch.from_arrays([arrays[f.name] for f in PACKETS], schema=PACKETS)
