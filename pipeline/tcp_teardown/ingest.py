"""Capture file -> the packet table (schema.PACKETS), streamed in bounded chunks.

tshark prints EK JSON; pyarrow's streaming JSON reader parses it block by block, so
neither the EK text nor a Python object per packet is ever held. Each block is turned
into typed columns right away (innermost IP/TCP of encapsulations: the last occurrence).
"""

from __future__ import annotations

import gzip
import logging
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from tcp_teardown import tshark as ts
from tcp_teardown.errors import ExitCode, TeardownError
from tcp_teardown.schema import PACKETS

log = logging.getLogger(__name__)

EK_BLOCK_BYTES = 4 << 20  # one EK block ~ 10k packets: bounded memory, few Python calls

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


@dataclass
class ReadReport:
    """What reading one capture found besides packets."""

    engine: str = "tshark"
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    fallback_reason: str | None = None


def sniff(path: Path) -> str:
    """The container of a capture: "pcap", "pcapng", "gzip" or "zstd". Raises TeardownError."""
    if not path.exists():
        raise TeardownError(f"{path}: no such file", ExitCode.INPUT_MISSING)
    if path.is_dir():
        raise TeardownError(f"{path}: is a directory, not a capture file", ExitCode.INPUT_MISSING)
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise TeardownError(f"{path}: cannot read: {exc.strerror}", ExitCode.INPUT_MISSING) from exc
    if not head:
        raise TeardownError(f"{path}: empty file (0 bytes)", ExitCode.EMPTY_CAPTURE)
    if head[:2] == GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as fh:
                inner = fh.read(4)
        except (OSError, EOFError) as exc:
            raise TeardownError(f"{path}: broken gzip file: {exc}", ExitCode.NOT_A_CAPTURE) from exc
        if not inner:
            raise TeardownError(f"{path}: empty file (gzip of 0 bytes)", ExitCode.EMPTY_CAPTURE)
        _check_magic(path, inner)
        return "gzip"
    if head == ZSTD_MAGIC:
        return "zstd"
    return _check_magic(path, head)


def _check_magic(path: Path, head: bytes) -> str:
    if head in PCAP_MAGICS:
        return "pcap"
    if head == PCAPNG_MAGIC:
        return "pcapng"
    if len(head) < 4:
        raise TeardownError(f"{path}: truncated in the file header", ExitCode.NOT_A_CAPTURE)
    raise TeardownError(
        f"{path}: not a capture file (no pcap or pcapng signature)", ExitCode.NOT_A_CAPTURE
    )


def read_tshark(path: Path, tshark: ts.Tshark, report: ReadReport) -> Iterator[pa.RecordBatch]:
    """Stream the packet table of one capture out of `tshark -T ek`."""
    container = sniff(path)
    source = "-" if container == "zstd" else str(path)
    cmd = ts.ek_command(tshark, source)
    stdin = subprocess.PIPE if container == "zstd" else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=ts.tshark_env())
    feeder = _feed_zstd(path, proc) if container == "zstd" else None
    stderr_lines: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr or []), daemon=True)
    drain.start()
    rows = 0
    try:
        reader = pj.open_json(
            proc.stdout,
            read_options=pj.ReadOptions(block_size=EK_BLOCK_BYTES),
            parse_options=pj.ParseOptions(explicit_schema=EK_SCHEMA,
                                          unexpected_field_behavior="ignore"),
        )
        for batch in reader:
            packets = ek_to_packets(batch)
            rows += packets.num_rows
            if packets.num_rows:
                yield packets
    except pa.ArrowInvalid as exc:
        # Judged below, once tshark's own exit status is known; no output at all is fine.
        empty = any(w in str(exc).lower() for w in ("empty file", "empty json", "no data"))
        broken = None if empty else exc
    else:
        broken = None
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
    if broken is not None:
        raise TeardownError(f"{path}: tshark output unreadable: {broken}", ExitCode.TSHARK_FAILED)
    _judge_exit(path, code, b"".join(stderr_lines).decode("utf-8", "replace"), rows, report)


def _feed_zstd(path: Path, proc: subprocess.Popen) -> threading.Thread:
    """tshark 4.0 cannot read zstd: decompress into its stdin from a thread."""
    try:
        import zstandard
    except ImportError as exc:
        proc.kill()
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


def _judge_exit(path: Path, code: int, stderr: str, rows: int, report: ReadReport) -> None:
    messages = [line.strip() for line in stderr.splitlines()
                if line.strip() and "dangerous" not in line and "Running as user" not in line]
    text = " ".join(messages)
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
    offsets = lists.offsets.to_numpy(zero_copy_only=False)
    has_value = np.diff(offsets) > 0
    has_value &= ~np.asarray(lists.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    last = np.where(has_value, offsets[1:] - 1, 0)
    values = lists.values
    if len(values) == 0:
        return pa.nulls(len(lists), pa.string())
    return pc.if_else(pa.array(has_value), pc.take(values, pa.array(last)), pa.scalar(None, pa.string()))


def _hex(column: pa.Array) -> pa.Array:
    """'0x0018' -> 24, parsed once per distinct value (flags and IP IDs repeat a lot)."""
    encoded = pc.dictionary_encode(column)
    uniques = [int(text, 16) if text else None for text in encoded.dictionary.to_pylist()]
    return pc.take(pa.array(uniques, pa.int64()), encoded.indices)


def _parse(column: pa.Array, kind: str) -> pa.Array:
    if kind == "hex":
        return _hex(column)
    if kind == "int":
        return pc.cast(column, pa.int64())
    if kind == "float":
        return pc.cast(column, pa.float64())
    return column


def ek_to_packets(batch: pa.RecordBatch) -> pa.RecordBatch:
    """One EK block -> typed packet rows (schema.PACKETS); index lines are dropped."""
    layers = batch.column(0)
    keep = pc.is_valid(layers)
    layers = pc.filter(layers, keep)
    raw = {f.column: _parse(_innermost(layers.field(f.tshark.replace(".", "_"))), f.kind)
           for f in ts.FIELDS}
    n = len(layers)
    if n == 0:
        return pa.RecordBatch.from_pylist([], schema=PACKETS)
    is_v6 = _ipv6_is_innermost(raw)
    src_ip = pc.if_else(is_v6, raw["ipv6_src"], raw["ip_src"])
    dst_ip = pc.if_else(is_v6, raw["ipv6_dst"], raw["ip_dst"])
    ttl = pc.if_else(is_v6, raw["ipv6_hlim"], raw["ip_ttl"])
    ip_id = pc.if_else(is_v6, pa.scalar(None, pa.int64()), raw["ip_id"])
    valid = pc.and_(pc.is_valid(src_ip), pc.is_valid(raw["src_port"]))
    columns = {
        "frame_number": raw["frame_number"],
        "ts": raw["ts"],
        "ip_version": pc.if_else(is_v6, 6, 4),
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "src_port": raw["src_port"],
        "dst_port": raw["dst_port"],
        "tcp_flags": raw["tcp_flags"],
        "seq_raw": raw["seq_raw"],
        "ack_raw": pc.fill_null(raw["ack_raw"], 0),
        "payload_len": pc.fill_null(raw["payload_len"], 0),
        "window": pc.fill_null(raw["window"], 0),
        "ttl": pc.fill_null(ttl, 0),
        "ip_id": ip_id,
        "tcp_stream": raw["tcp_stream"],
    }
    arrays = [pc.filter(pc.cast(columns[f.name], f.type), valid) for f in PACKETS]
    return pa.RecordBatch.from_arrays(arrays, schema=PACKETS)


def _ipv6_is_innermost(raw: dict[str, pa.Array]) -> pa.Array:
    """True where the IP header right under TCP is IPv6 (tunnels can stack v4 and v6).

    With both present, IPv4 is innermost exactly when its last header carries TCP
    (protocol 6); otherwise it carries the tunnel (UDP for Teredo, 41 for 6in4, ...).
    """
    has_v4 = pc.is_valid(raw["ip_src"])
    has_v6 = pc.is_valid(raw["ipv6_src"])
    v4_carries_tcp = pc.fill_null(pc.equal(raw["ip_proto"], 6), False)
    return pc.and_(has_v6, pc.or_(pc.invert(has_v4), pc.invert(v4_carries_tcp)))


def read_packets(
    path: Path, engine: str = "tshark", tshark: ts.Tshark | None = None,
    report: ReadReport | None = None,
) -> Iterator[pa.RecordBatch]:
    """The packet table of one capture, in batches, from the chosen engine.

    `auto` uses the native reader when it accepts the file and falls back to tshark
    (recorded in `report.fallback_reason`) when it declines.
    """
    report = report if report is not None else ReadReport()
    if engine in ("auto", "native"):
        try:
            from tcp_teardown import native
        except ImportError:
            native = None  # type: ignore[assignment]
        if native is not None:
            sniff(path)
            try:
                batches = native.read_packets(path)
                first = next(batches, None)
                report.engine = "native"
                if first is not None:
                    yield first
                yield from batches
                return
            except native.NativeUnsupported as exc:
                if engine == "native":
                    raise TeardownError(f"{path}: native reader declined: {exc}",
                                        ExitCode.NOT_A_CAPTURE) from exc
                report.fallback_reason = str(exc)
            except native.TruncatedCapture as exc:
                report.truncated = True
                report.warnings.append(f"{path}: capture is cut short: {exc}")
                return
        elif engine == "native":
            raise TeardownError("the native engine is not available", ExitCode.FAILED)
    report.engine = "tshark"
    yield from read_tshark(path, tshark or ts.find_tshark(), report)


def read_packet_table(path: Path, engine: str = "tshark", tshark: ts.Tshark | None = None,
                      report: ReadReport | None = None) -> pa.Table:
    """The whole packet table of one capture (compact Arrow columns, ~70 bytes a packet)."""
    batches = list(read_packets(path, engine, tshark, report))
    if not batches:
        return PACKETS.empty_table()
    return pa.Table.from_batches(batches, schema=PACKETS)
