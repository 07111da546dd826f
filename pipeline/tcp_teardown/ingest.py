"""Capture file -> the packet table (schema.PACKETS), streamed in bounded chunks.

tshark prints EK JSON; pyarrow's streaming JSON reader parses it block by block, so
neither the EK text nor a Python object per packet is ever held. Each block is turned
into typed columns right away (innermost IP/TCP of encapsulations: the last occurrence).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import queue
import signal
import stat
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from tcp_teardown import tshark as ts
from tcp_teardown.arrays import from_numpy, scalar, to_numpy
from tcp_teardown.errors import ExitCode, TeardownError
from tcp_teardown.schema import PACKETS

log = logging.getLogger(__name__)

EK_BLOCK_BYTES = 4 << 20  # one EK block ~ 15k packets: bounded memory, few Python calls
NATIVE_BATCH_ROWS = 250_000  # the native reader's working set grows with its batch size

# File signatures we accept (after gzip/zstd are unwrapped): the capture formats
# archives hold. Anything else is refused before tshark guesses (it reads text files
# as "packets").
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4",  # microsecond, little / big endian
    b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",  # nanosecond
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PCAP_HEADER_BYTES = 24  # magic, version, thiszone, sigfigs, snaplen, link type
PCAPNG_MIN_SHB_BYTES = 28  # type, length, byte-order magic, version, section length, length
HEADER_BYTES = 64  # read to judge a file: a pcap header, or the start of a section header


@dataclass
class ReadReport:
    """What reading one capture found besides packets."""

    engine: str = "tshark"
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    fallback_reason: str | None = None


def sniff(path: Path) -> str:
    """The container of a capture: "pcap", "pcapng", "gzip" or "zstd". Raises TeardownError.

    Only regular files are read: a fifo would block this open forever and a device
    never ends. The file header must be complete (a reader that gets less can say
    nothing about the file, so it is not a capture rather than a truncated one).
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise TeardownError(f"{path}: no such file", ExitCode.INPUT_MISSING) from None
    except OSError as exc:
        raise TeardownError(f"{path}: cannot read: {exc.strerror or exc}", ExitCode.INPUT_MISSING) from exc
    if stat.S_ISDIR(mode):
        raise TeardownError(f"{path}: is a directory, not a capture file", ExitCode.INPUT_MISSING)
    if not stat.S_ISREG(mode):
        raise TeardownError(f"{path}: not a regular file (pipes and devices are not read)",
                            ExitCode.INPUT_MISSING)
    try:
        with path.open("rb") as fh:
            head = fh.read(HEADER_BYTES)
    except OSError as exc:
        raise TeardownError(f"{path}: cannot read: {exc.strerror or exc}", ExitCode.INPUT_MISSING) from exc
    if not head:
        raise TeardownError(f"{path}: empty file (0 bytes)", ExitCode.EMPTY_CAPTURE)
    if head[:2] == GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as fh:
                inner = fh.read(HEADER_BYTES)
        except (OSError, EOFError, zlib.error) as exc:
            raise TeardownError(f"{path}: broken gzip file: {exc}", ExitCode.NOT_A_CAPTURE) from exc
        if not inner:
            raise TeardownError(f"{path}: empty file (gzip of 0 bytes)", ExitCode.EMPTY_CAPTURE)
        _check_magic(path, inner)
        return "gzip"
    if head[:4] == ZSTD_MAGIC:
        return "zstd"
    return _check_magic(path, head)


def _check_magic(path: Path, head: bytes) -> str:
    """The format named by the first bytes, once the whole file header is there."""
    if head[:4] in PCAP_MAGICS:
        if len(head) < PCAP_HEADER_BYTES:
            raise TeardownError(f"{path}: truncated in the file header", ExitCode.NOT_A_CAPTURE)
        return "pcap"
    if head[:4] == PCAPNG_MAGIC:
        if len(head) < PCAPNG_MIN_SHB_BYTES:
            raise TeardownError(f"{path}: truncated in the file header", ExitCode.NOT_A_CAPTURE)
        order = "<" if head[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        (shb_length,) = struct.unpack(order + "I", head[4:8])
        if shb_length < PCAPNG_MIN_SHB_BYTES or shb_length % 4:
            raise TeardownError(f"{path}: not a capture file (bad pcapng section header)",
                                ExitCode.NOT_A_CAPTURE)
        if len(head) < min(shb_length, HEADER_BYTES):
            raise TeardownError(f"{path}: truncated in the file header", ExitCode.NOT_A_CAPTURE)
        return "pcapng"
    if len(head) < 4:
        raise TeardownError(f"{path}: truncated in the file header", ExitCode.NOT_A_CAPTURE)
    raise TeardownError(
        f"{path}: not a capture file (no pcap or pcapng signature)", ExitCode.NOT_A_CAPTURE
    )


def tshark_source(path: Path) -> str:
    """The capture argument for `tshark -r`: a name starting with "-" would read stdin
    ("-") or look like an option, so it gets a "./" in front."""
    text = str(path)
    return f".{os.sep}{text}" if text.startswith("-") else text


def read_tshark(path: Path, tshark: ts.Tshark, report: ReadReport) -> Iterator[pa.RecordBatch]:
    """Stream the packet table of one capture out of `tshark -T ek`.

    tshark is killed, never left behind, when the caller stops early or is interrupted
    (Ctrl-C, SIGTERM): it may be deep in a large file without writing anything.
    """
    container = sniff(path)
    source = "-" if container == "zstd" else tshark_source(path)
    cmd = ts.ek_command(tshark, source)
    stdin = subprocess.PIPE if container == "zstd" else subprocess.DEVNULL
    # Its own process group: stopping it stops whatever it started too (nothing then
    # holds its output pipe open, which would keep the reader thread waiting).
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=ts.tshark_env(), process_group=0)
    stderr_lines: list[bytes] = []
    feeder: threading.Thread | None = None
    drain = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr or []), daemon=True)
    drain.start()
    rows = 0
    broken: TeardownError | None = None
    try:
        feeder = feed_zstd(path, proc) if container == "zstd" else None
        assert proc.stdout is not None
        for packets in _interruptible(ek_batches(proc.stdout), on_stop=lambda: _stop(proc)):
            rows += packets.num_rows
            yield packets
    except EkUnreadable as exc:
        broken = exc  # judged below, once tshark's own exit status is known
    except BaseException:
        _stop(proc)
        raise
    finally:
        if proc.poll() is None and proc.stdout is not None:
            proc.stdout.close()
        code = proc.wait()
        drain.join(timeout=5)
        if feeder is not None:
            feeder.join(timeout=5)
    if code < 0:
        raise TeardownError(f"{path}: tshark was killed by signal {-code} mid-file",
                            ExitCode.TSHARK_FAILED)
    stderr = b"".join(stderr_lines).decode("utf-8", "replace")
    if broken is not None:
        said = _tshark_says(stderr)
        if code != 0 and said:  # tshark's own words explain the cut-off output better
            raise TeardownError(f"{path}: tshark failed (exit {code}): {said[:300]}", ExitCode.TSHARK_FAILED)
        raise TeardownError(f"{path}: tshark output unreadable: {broken}", ExitCode.TSHARK_FAILED)
    _judge_exit(path, code, stderr, rows, report)


def _interruptible(batches: Iterator[pa.RecordBatch], depth: int = 2,
                   on_stop: Callable[[], None] | None = None) -> Iterator[pa.RecordBatch]:
    """`batches`, produced in a worker thread, so Ctrl-C and SIGTERM act at once.

    pyarrow's JSON reader waits for tshark's output in C++, where Python cannot run a
    signal handler: a quiet tshark would hold an interrupt for as long as it stays quiet.
    Waiting on a queue instead is interruptible. Stopped early (an interrupt, or the
    consumer closing the generator), it calls `on_stop` (which kills tshark, ending the
    worker's read) and waits for the worker: a pyarrow read still running at exit would
    deadlock the interpreter's shutdown. At most `depth` batches wait in the queue.
    """
    handoff: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not put(("batch", batch)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))

    worker = threading.Thread(target=work, name="tcp-teardown-ek", daemon=True)
    worker.start()
    finished = False
    try:
        while True:
            kind, value = handoff.get()
            if kind in ("end", "error"):
                finished = True
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            assert isinstance(value, pa.RecordBatch)
            yield value
    finally:
        stop.set()
        if not finished and on_stop is not None:
            on_stop()
        # Always joined: a worker still inside pyarrow's reader at exit can abort the process.
        worker.join(timeout=30)


class _NoBareNulls(io.RawIOBase):
    """`stream` without lines that hold nothing but `null`.

    pyarrow's streaming JSON reader (seen with 26.0) crashes the process when a block
    starts with a top-level `null`; tshark never prints one, but `--tshark` may name
    anything. Lines are passed on whole, so the check cannot miss a `null` that a read
    boundary cut in two; a chunk without the four letters is passed on untouched.
    """

    def __init__(self, stream: BinaryIO, chunk: int = 1 << 20) -> None:
        super().__init__()
        self._stream, self._chunk = stream, chunk
        self._ready = b""  # complete lines waiting to be read
        self._tail = b""  # a line not yet ended
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._ready and not self._eof:
            data = self._stream.read(self._chunk)
            if not data:
                self._eof, self._ready, self._tail = True, self._tail, b""
            else:
                data = self._tail + data
                cut = data.rfind(b"\n")
                self._ready, self._tail = (data[:cut + 1], data[cut + 1:]) if cut >= 0 else (b"", data)
            if b"null" in self._ready:
                self._ready = b"".join(line for line in self._ready.splitlines(keepends=True)
                                       if line.strip() != b"null")
        size = min(len(buffer), len(self._ready))
        buffer[:size] = self._ready[:size]
        self._ready = self._ready[size:]
        return size


class EkUnreadable(TeardownError):
    """tshark's EK output is not what the field table says it prints."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.TSHARK_FAILED)


def ek_batches(stream: BinaryIO, block_size: int = EK_BLOCK_BYTES) -> Iterator[pa.RecordBatch]:
    """EK JSON lines -> packet batches (schema.PACKETS); no output at all is no packets.

    Anything that is not well-formed EK of our field table raises EkUnreadable.
    """
    options = dict(read_options=pj.ReadOptions(block_size=block_size),
                   parse_options=pj.ParseOptions(explicit_schema=EK_SCHEMA,
                                                 unexpected_field_behavior="ignore"))
    try:
        reader = pj.open_json(_NoBareNulls(stream), **options)
    except pa.ArrowInvalid as exc:
        if any(w in str(exc).lower() for w in ("empty file", "empty json", "no data")):
            return
        raise EkUnreadable(str(exc)) from exc
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise EkUnreadable(str(exc)) from exc
        packets = ek_to_packets(batch)
        if packets.num_rows:
            yield packets


def _stop(proc: subprocess.Popen) -> None:
    """Kill tshark and its process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def feed_zstd(path: Path, proc: subprocess.Popen) -> threading.Thread:
    """tshark 4.0 cannot read zstd: decompress into its stdin from a thread."""
    try:
        import zstandard
    except ImportError as exc:
        _stop(proc)
        raise TeardownError(f"{path}: zstd capture needs the 'zstandard' package",
                            ExitCode.NOT_A_CAPTURE) from exc

    def pump() -> None:
        assert proc.stdin is not None
        try:
            with path.open("rb") as raw:
                zstandard.ZstdDecompressor().copy_stream(raw, proc.stdin)
        except (OSError, zstandard.ZstdError):
            pass  # tshark then reports the cut; _judge_exit turns it into a clear line
        finally:
            proc.stdin.close()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _tshark_says(stderr: str) -> str:
    """tshark's messages on one line, without its warning about running as root."""
    return " ".join(line.strip() for line in stderr.splitlines()
                    if line.strip() and "dangerous" not in line and "Running as user" not in line)


def _judge_exit(path: Path, code: int, stderr: str, rows: int, report: ReadReport) -> None:
    text = _tshark_says(stderr)
    if code == 0:
        return
    if "cut short" in text or "truncated" in text.lower():
        report.truncated = True
        report.warnings.append(f"{path}: capture is cut short; labelled the {rows} TCP packets before the cut")
        return
    if "isn't a capture file" in text or ("unknown" in text.lower() and "format" in text.lower()):
        raise TeardownError(f"{path}: not a capture file tshark can read", ExitCode.NOT_A_CAPTURE)
    if code < 0:
        raise TeardownError(f"{path}: tshark was killed by signal {-code} mid-file",
                            ExitCode.TSHARK_FAILED)
    if "appears to be damaged or corrupt" in text or "corrupt" in text.lower():
        report.truncated = True
        report.warnings.append(f"{path}: capture is damaged after {rows} TCP packets: {text[:200]}")
        return
    raise TeardownError(f"{path}: tshark failed (exit {code}): {text[:300]}", ExitCode.TSHARK_FAILED)


EK_SCHEMA = pa.schema(
    [("layers", pa.struct([(f.tshark.replace(".", "_"), pa.list_(pa.string())) for f in ts.FIELDS]))]
)


def _innermost(column: pa.Array) -> pa.Array:
    """Last occurrence of a repeated EK field: the innermost header of an encapsulation."""
    lists = column if isinstance(column, pa.ListArray) else pa.array(column)
    offsets = to_numpy(lists.offsets)
    has_value = np.diff(offsets) > 0
    has_value &= ~to_numpy(lists.is_null())
    last = np.where(has_value, offsets[1:] - 1, 0)
    values = lists.values
    if len(values) == 0:
        return pa.nulls(len(lists), pa.string())
    return pc.if_else(from_numpy(has_value), pc.take(values, from_numpy(last)), scalar(None, pa.string()))


def _hex(column: pa.Array) -> pa.Array:
    """'0x0018' -> 24, parsed once per distinct value (flags and IP IDs repeat a lot)."""
    encoded = pc.dictionary_encode(column)
    texts = encoded.dictionary.to_pylist()
    uniques = np.array([int(text, 16) if text else 0 for text in texts], dtype=np.int64)
    return pc.take(from_numpy(uniques, pa.int64(), mask=np.array([not text for text in texts], dtype=bool)),
                   encoded.indices)


def _parse(column: pa.Array, kind: str) -> pa.Array:
    if kind == "hex":
        return _hex(column)
    if kind == "int":
        return pc.cast(column, pa.int64())
    if kind == "float":
        return pc.cast(column, pa.float64())
    return column


# What a TCP row must carry, and the values each header field can hold. tshark never
# prints anything else; a row that does is a broken engine, not a packet.
REQUIRED_COLUMNS = ("frame_number", "ts", "src_ip", "dst_ip", "src_port", "dst_port", "tcp_flags", "seq_raw")
VALUE_RANGES: dict[str, tuple[int, int]] = {
    "frame_number": (1, 2**62),
    "src_port": (0, 0xFFFF),
    "dst_port": (0, 0xFFFF),
    "tcp_flags": (0, 0xFFF),  # 12 flag bits
    "seq_raw": (0, 2**32 - 1),
    "ack_raw": (0, 2**32 - 1),
    "payload_len": (0, 2**31 - 1),
    "window": (0, 0xFFFF),
    "ttl": (0, 0xFF),
    "ip_id": (0, 0xFFFF),
    "tcp_stream": (0, 2**62),
}
_PARSE_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError, OverflowError)


def ek_to_packets(batch: pa.RecordBatch) -> pa.RecordBatch:
    """One EK block -> typed packet rows (schema.PACKETS); index lines and packets
    without IP and TCP are dropped. Values tshark cannot print raise EkUnreadable."""
    try:
        return _ek_to_packets(batch)
    except _PARSE_ERRORS as exc:
        raise EkUnreadable(f"bad value in EK output: {exc}") from exc


def _ek_to_packets(batch: pa.RecordBatch) -> pa.RecordBatch:
    layers = batch.column(0)
    keep = pc.is_valid(layers)
    layers = pc.filter(layers, keep)
    raw = {f.column: _parse(_innermost(layers.field(f.tshark.replace(".", "_"))), f.kind)
           for f in ts.FIELDS}
    n = len(layers)
    if n == 0:
        return pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in PACKETS], schema=PACKETS)
    is_v6 = _ipv6_is_innermost(raw)
    src_ip = pc.if_else(is_v6, raw["ipv6_src"], raw["ip_src"])
    dst_ip = pc.if_else(is_v6, raw["ipv6_dst"], raw["ip_dst"])
    ttl = pc.if_else(is_v6, raw["ipv6_hlim"], raw["ip_ttl"])
    ip_id = pc.if_else(is_v6, scalar(None, pa.int64()), raw["ip_id"])
    valid = pc.and_(pc.is_valid(src_ip), pc.is_valid(raw["src_port"]))
    columns = {
        "frame_number": raw["frame_number"],
        "ts": raw["ts"],
        "ip_version": pc.if_else(is_v6, scalar(6, pa.int64()), scalar(4, pa.int64())),
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "src_port": raw["src_port"],
        "dst_port": raw["dst_port"],
        "tcp_flags": raw["tcp_flags"],
        "seq_raw": raw["seq_raw"],
        "ack_raw": pc.fill_null(raw["ack_raw"], _ZERO),
        "payload_len": pc.fill_null(raw["payload_len"], _ZERO),
        "window": pc.fill_null(raw["window"], _ZERO),
        "ttl": pc.fill_null(ttl, _ZERO),
        "ip_id": ip_id,
        "tcp_stream": raw["tcp_stream"],
    }
    rows = {name: pc.filter(column, valid) for name, column in columns.items()}
    _check_rows(rows)
    arrays = [pc.cast(rows[f.name], f.type) for f in PACKETS]
    return pa.RecordBatch.from_arrays(arrays, schema=PACKETS)


_ZERO = scalar(0, pa.int64())


def _check_rows(rows: dict[str, pa.Array]) -> None:
    """Raise EkUnreadable unless every row has its required fields, in range."""
    for name in REQUIRED_COLUMNS:
        missing = rows[name].null_count
        if missing:
            raise EkUnreadable(f"{missing} TCP packet(s) without {name}")
    if len(rows["ts"]) and not pc.all(pc.is_finite(rows["ts"])).as_py():
        raise EkUnreadable("a packet time that is not a finite number")
    for name, (low, high) in VALUE_RANGES.items():
        column = rows[name]
        if len(column) == column.null_count:
            continue
        bounds = pc.min_max(column)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if lo < low or hi > high:
            raise EkUnreadable(f"{name} out of range ({lo}..{hi}, expected {low}..{high})")


def _ipv6_is_innermost(raw: dict[str, pa.Array]) -> pa.Array:
    """True where the IP header right under TCP is IPv6 (tunnels can stack v4 and v6).

    With both present, IPv4 is innermost exactly when its last header carries TCP
    (protocol 6); otherwise it carries the tunnel (UDP for Teredo, 41 for 6in4, ...).
    """
    has_v4 = pc.is_valid(raw["ip_src"])
    has_v6 = pc.is_valid(raw["ipv6_src"])
    v4_carries_tcp = pc.fill_null(pc.equal(raw["ip_proto"], scalar(6, pa.int64())), scalar(False, pa.bool_()))
    return pc.and_(has_v6, pc.or_(pc.invert(has_v4), pc.invert(v4_carries_tcp)))


def read_packets(
    path: Path, engine: str = "auto", tshark: ts.Tshark | None = None,
    report: ReadReport | None = None, native_batch_rows: int = NATIVE_BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """The packet table of one capture, in batches, from the chosen engine.

    `auto` uses the native reader when it accepts the file and falls back to tshark
    (recorded in `report.fallback_reason`) when it declines. The native reader's
    batches have `native_batch_rows` rows (the last fewer).
    """
    report = report if report is not None else ReadReport()
    if engine in ("auto", "native"):
        try:
            from tcp_teardown import native
        except ImportError:
            native = None  # type: ignore[assignment]
        if native is not None:
            sniff(path)
            # Held until the reader is done: it may decline late (a tunnel after the first
            # million rows), and tshark must then start from a clean slate.
            batches: list[pa.RecordBatch] = []
            try:
                batches.extend(native.read_packets(path, chunk_packets=native_batch_rows))
                report.engine = "native"
                yield from batches
                return
            except native.NativeUnsupported as exc:
                if engine == "native":
                    raise TeardownError(f"{path}: native reader declined: {exc}",
                                        ExitCode.NOT_A_CAPTURE) from exc
                report.fallback_reason = str(exc)
            except native.TruncatedCapture as exc:
                # The batches read before the cut are complete rows: keep them.
                report.engine = "native"
                report.truncated = True
                report.warnings.append(f"{path}: capture is cut short; labelled the packets before the cut ({exc})")
                yield from batches
                return
        elif engine == "native":
            raise TeardownError("the native engine is not available", ExitCode.FAILED)
    report.engine = "tshark"
    yield from read_tshark(path, tshark or ts.find_tshark(), report)


def read_packet_table(path: Path, engine: str = "auto", tshark: ts.Tshark | None = None,
                      report: ReadReport | None = None) -> pa.Table:
    """The whole packet table of one capture (compact Arrow columns, ~70 bytes a packet)."""
    # The native reader builds the table's columns in one piece (no batches to combine).
    batches = list(read_packets(path, engine, tshark, report, native_batch_rows=sys.maxsize))
    if not batches:
        return PACKETS.empty_table()
    # One chunk per column: EK arrives in hundreds of small blocks, and per-chunk work
    # (dictionary unification of the addresses) would otherwise multiply.
    table = pa.Table.from_batches(batches, schema=PACKETS)
    del batches
    return table.combine_chunks()
