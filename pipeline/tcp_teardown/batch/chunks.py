"""Large captures in bounded memory: split into pieces, packets regrouped by 4-tuple.

tshark's memory grows with every packet of a file it reads, and so does the packet
table. A large capture (or a rotation set) is therefore read as pieces of at most
`chunk_packets` frames: `editcap -c N` files read by tshark in parallel, or the native
reader's batches. Each piece's packet rows are written to scratch as an Arrow IPC file
holding one record batch per *bucket*, a hash of the unordered 4-tuple. stitch.py then
analyzes one bucket at a time: all packets of a 4-tuple, from every piece, in capture
order, which is everything the connection logic looks at (it never compares two
4-tuples). So the result is exactly the whole-file result while each step holds about
one piece or one bucket.

Frame numbers become 64-bit keys while pieces are regrouped: member << 32 | frame
number in that member's file (a piece k of `editcap -c N` starts after k·N frames), so
capture order across files and pieces is plain integer order.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tcp_teardown import ingest
from tcp_teardown.arrays import from_numpy, scalar, to_numpy
from tcp_teardown.codes import radix_order
from tcp_teardown.errors import ExitCode, TeardownError
from tcp_teardown.hashing import hash_text, mix
from tcp_teardown.schema import PACKETS
from tcp_teardown.tshark import Tshark

MEMBER_SHIFT = 32  # frame key = member << 32 | frame number within the member's file
FRAME_MASK = (1 << MEMBER_SHIFT) - 1
# Bytes a packet takes at least in a capture file (record header + Ethernet/IPv4/TCP
# headers): a file's size over this bounds its packet count from above.
MIN_PACKET_BYTES = 70
COMPRESSION_GUESS = 4  # uncompressed / compressed size assumed at least for .gz
ZSTD_UNKNOWN_GUESS = 20  # ... and for a .zst whose header does not say (captures compress well)
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
EDITCAP_CHUNK = re.compile(r"_(\d{5,})_\d{14}")
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class PieceSource:
    """Where one piece's packets come from."""

    member: int  # position of the capture in its unit
    path: str  # the capture itself, or an editcap chunk of it in scratch
    chunk: int  # position of the piece within the member
    frame_offset: int  # frames of the member before this piece
    engine: str
    is_chunk_file: bool  # an editcap chunk (deleted once read)


@dataclass
class PieceOutcome:
    """One piece read and regrouped into buckets."""

    member: int
    chunk: int
    path: str  # the Arrow IPC file of its rows, one batch per bucket
    packets: int
    min_ts: float | None
    engine: str
    bucket_rows: list[int] = field(default_factory=list)  # rows per bucket
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def estimated_packets(path: Path, size: int) -> int:
    """An upper estimate of the packets of a capture, from its size (no read).

    Over-estimating costs an editcap pass that was not needed; under-estimating would
    read a large capture whole, so compressed files are judged by what they expand to.
    """
    head = b""
    with contextlib.suppress(OSError), path.open("rb") as fh:
        head = fh.read(18)
    expanded = size
    if head[:2] == ingest.GZIP_MAGIC:
        expanded = size * COMPRESSION_GUESS
        with contextlib.suppress(OSError), path.open("rb") as fh:
            fh.seek(-4, 2)  # gzip's trailer: the uncompressed size modulo 2**32
            expanded = max(expanded, int.from_bytes(fh.read(4), "little"))
    elif head[:4] == ingest.ZSTD_MAGIC:
        expanded = size * ZSTD_UNKNOWN_GUESS
        known = _zstd_content_size(head)  # written by most compressors
        if known is not None:
            expanded = known
    return expanded // MIN_PACKET_BYTES + 1


def _zstd_content_size(head: bytes) -> int | None:
    try:
        import zstandard
    except ImportError:
        return None
    try:
        known = zstandard.frame_content_size(head)
    except zstandard.ZstdError:
        return None
    return known if known >= 0 else None


def bucket_of(table: pa.Table, buckets: int) -> np.ndarray:
    """Bucket of each packet: a hash of its unordered 4-tuple modulo `buckets`.

    Addresses are hashed once per distinct text (the hash is keyed the same in every
    process), then mixed with the port; min/max of the two endpoint hashes makes it
    direction-free.
    """
    n = table.num_rows
    if buckets <= 1 or n == 0:
        return np.zeros(n, dtype=np.int64)

    def endpoint(ip: str, port: str) -> np.ndarray:
        encoded = pc.dictionary_encode(table.column(ip)).combine_chunks()
        ip_hash = hash_text(encoded.dictionary)[to_numpy(encoded.indices)]
        ports = to_numpy(table.column(port)).astype(np.uint64)
        return mix(ip_hash ^ (ports * _MIX))

    a, b = endpoint("src_ip", "src_port"), endpoint("dst_ip", "dst_port")
    pair = mix(np.minimum(a, b) ^ mix(np.maximum(a, b)))
    return (pair % np.uint64(buckets)).astype(np.int64)



def write_buckets(table: pa.Table, buckets: int, target: Path) -> list[int]:
    """The rows as an Arrow IPC file whose batch i holds bucket i (capture order kept).

    Returns the rows of each bucket, so buckets can be grouped into tasks of a size."""
    bucket = bucket_of(table, buckets)
    order = radix_order(bucket, buckets)
    counts = np.bincount(bucket, minlength=buckets)
    # One address dictionary for the whole file: an IPC file holds one per column.
    table = table.unify_dictionaries().combine_chunks()
    ordered = table.take(from_numpy(order)) if table.num_rows else table
    columns = [ordered.column(i).chunk(0) if ordered.column(i).num_chunks else pa.nulls(0, f.type)
               for i, f in enumerate(PACKETS)]
    tmp = target.with_name(f".{target.name}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, PACKETS, options=IPC_OPTIONS) as writer:
        start = 0
        for count in counts.tolist():
            writer.write_batch(pa.RecordBatch.from_arrays([c.slice(start, count) for c in columns], schema=PACKETS))
            start += count
    tmp.replace(target)
    return counts.tolist()


def read_buckets(paths: list[str], buckets: list[int]) -> pa.Table:
    """Some buckets of every piece, piece after piece: each 4-tuple's rows stay in capture order."""
    batches = []
    for path in paths:
        with pa.memory_map(path) as source:
            reader = pa.ipc.open_file(source)
            for bucket in buckets:
                batch = reader.get_batch(bucket)
                # Decompressed (lz4) buffers are owned by the batch, not the map: safe to keep.
                if batch.num_rows:
                    batches.append(batch)
    return pa.Table.from_batches(batches, schema=PACKETS) if batches else PACKETS.empty_table()


def with_frame_keys(table: pa.Table, member: int, frame_offset: int) -> pa.Table:
    """frame_number -> member << 32 | (frames before the piece + frame number in the piece)."""
    keys = pc.add(table.column("frame_number"), scalar((member << MEMBER_SHIFT) + frame_offset, pa.int64()))
    return table.set_column(table.schema.get_field_index("frame_number"), PACKETS.field("frame_number"), keys)


def read_piece(source: PieceSource, target: Path, buckets: int, tshark_path: str | None) -> PieceOutcome:
    """Read one piece with its engine and write its rows, bucketed, to `target`."""
    started = time.monotonic()
    report = ingest.ReadReport()
    # auto finds tshark itself if the native reader declines (unless a path was given).
    tshark = _tshark(tshark_path) if source.engine == "tshark" or tshark_path else None
    path = Path(source.path)
    try:
        table = ingest.read_packet_table(path, source.engine, tshark, report)
    finally:
        if source.is_chunk_file:
            path.unlink(missing_ok=True)  # scratch space: one chunk on disk per running piece
    table = with_frame_keys(table, source.member, source.frame_offset)
    rows = write_buckets(table, buckets, target)
    min_ts = pc.min(table.column("ts")).as_py() if table.num_rows else None
    return PieceOutcome(source.member, source.chunk, str(target), table.num_rows, min_ts, report.engine,
                        rows, report.truncated, report.warnings, time.monotonic() - started)


def _tshark(path: str | None) -> Tshark:
    from tcp_teardown.tshark import find_tshark

    return find_tshark(path)


@dataclass
class SplitOutcome:
    """A large member cut into pieces: chunk files still to read, or pieces already written."""

    member: int
    to_read: list[PieceSource] = field(default_factory=list)
    written: list[PieceOutcome] = field(default_factory=list)
    renumber: bool = False  # tcp.stream numbers are per chunk and must be renumbered
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def split_member(member: int, path: Path, scratch: Path, chunk_packets: int, buckets: int,
                 engine: str, tshark_path: str | None) -> SplitOutcome:
    """Cut one large capture into pieces of `chunk_packets` frames.

    The native reader (engine native or auto, when it accepts the file) yields batches
    with whole-file frame and stream numbers: each is written as a piece right away.
    Otherwise `editcap -c` writes chunk files that tshark reads in parallel tasks.
    """
    started = time.monotonic()
    ingest.sniff(path)  # a file that is no capture fails here, with the usual message
    scratch.mkdir(parents=True, exist_ok=True)
    if engine in ("native", "auto"):
        outcome = _split_native(member, path, scratch, chunk_packets, buckets, engine)
        if outcome is not None:
            outcome.seconds = time.monotonic() - started
            return outcome
    outcome = _split_editcap(member, path, scratch, chunk_packets)
    outcome.seconds = time.monotonic() - started
    return outcome


def _split_native(member: int, path: Path, scratch: Path, chunk_packets: int, buckets: int,
                  engine: str) -> SplitOutcome | None:
    try:
        from tcp_teardown import native
    except ImportError:
        if engine == "native":
            raise TeardownError("the native engine is not available", ExitCode.FAILED) from None
        return None
    outcome = SplitOutcome(member)
    try:
        for chunk, batch in enumerate(native.read_packets(path, chunk_packets=chunk_packets)):
            piece_started = time.monotonic()
            table = with_frame_keys(pa.Table.from_batches([batch]), member, 0)
            target = scratch / f"piece-{member:05d}-{chunk:06d}.arrow"
            rows = write_buckets(table, buckets, target)
            outcome.written.append(PieceOutcome(
                member, chunk, str(target), table.num_rows, pc.min(table.column("ts")).as_py(), "native",
                rows, seconds=time.monotonic() - piece_started))
    except native.NativeUnsupported as exc:
        for piece in outcome.written:  # a reason found mid-file: drop what was written
            Path(piece.path).unlink(missing_ok=True)
        if engine == "native":
            raise TeardownError(f"{path}: native reader declined: {exc}", ExitCode.NOT_A_CAPTURE) from exc
        return None
    except native.TruncatedCapture as exc:
        outcome.truncated = True
        outcome.warnings.append(f"{path}: capture is cut short: {exc}")
    return outcome


def _split_editcap(member: int, path: Path, scratch: Path, chunk_packets: int) -> SplitOutcome:
    editcap = shutil.which("editcap")
    if editcap is None:
        raise TeardownError("editcap (part of Wireshark, beside tshark) is needed to split large captures",
                            ExitCode.TSHARK_MISSING)
    folder = scratch / f"chunks-{member:05d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    container = ingest.sniff(path)
    # editcap reads gzip itself; zstd (which 4.0 cannot read) is decompressed into its stdin.
    source = "-" if container == "zstd" else str(path)
    proc = subprocess.Popen([editcap, "-c", str(chunk_packets), source, str(folder / "chunk.pcapng")],
                            stdin=subprocess.PIPE if container == "zstd" else subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    feeder = ingest.feed_zstd(path, proc) if container == "zstd" else None
    assert proc.stderr is not None
    stderr = proc.stderr.read()  # not communicate(): it would close the stdin the feeder writes
    proc.wait()
    if feeder is not None:
        feeder.join(timeout=5)
    message = stderr.decode("utf-8", "replace").strip()
    outcome = SplitOutcome(member, renumber=True)
    if "cut short" in message or "truncated" in message.lower():
        outcome.truncated = True
        outcome.warnings.append(f"{path}: capture is cut short; labelled the packets before the cut")
    elif proc.returncode != 0:
        raise TeardownError(f"{path}: editcap failed (exit {proc.returncode}): {message[:300]}",
                            ExitCode.NOT_A_CAPTURE)
    chunks = sorted(folder.iterdir(), key=lambda p: int(m[1]) if (m := EDITCAP_CHUNK.search(p.name)) else -1)
    for index, chunk in enumerate(chunks):
        number = EDITCAP_CHUNK.search(chunk.name)
        if number is None or int(number[1]) != index:
            raise TeardownError(f"{path}: unexpected editcap output {chunk.name}", ExitCode.FAILED)
        outcome.to_read.append(PieceSource(member, str(chunk), index, index * chunk_packets, "tshark", True))
    return outcome


