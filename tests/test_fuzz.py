"""Fuzzing the readers: mutated input gives valid packet rows or a clean error, never a crash.

- EK ingest (`ingest.ek_batches` / `ek_to_packets`) on mutated tshark EK lines: every
  outcome is either packet rows that satisfy schema.PACKETS (no nulls where the schema
  says not null, every header field in its range) or `TeardownError` (EkUnreadable, which
  the CLI reports as "tshark output unreadable", exit 10). The rows must then label.
- The native reader (`tcp_teardown.native.read_packets`), when it is installed, on
  mutated pcap/pcapng/gzip captures: rows of schema.PACKETS, or only its declared
  exceptions (NativeUnsupported, TruncatedCapture).

Both stay within a few seconds in the default run; TCP_TEARDOWN_EXAMPLES raises the
number of examples for a long search.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcp_teardown.analysis import analyze_packets
from tcp_teardown.errors import TeardownError
from tcp_teardown.facts import Params
from tcp_teardown.ingest import VALUE_RANGES, ek_batches
from tcp_teardown.schema import PACKETS
from tests.malformed import builders as b

RECORDED = Path(__file__).parent / "data" / "seed004.ek.json"
EXAMPLES = int(os.environ.get("TCP_TEARDOWN_EXAMPLES", "0"))


def examples(default: int) -> settings:
    return settings(max_examples=EXAMPLES or default, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_packets(table: pa.Table) -> None:
    """What every engine promises about its rows (schema.PACKETS and header ranges)."""
    assert table.schema == PACKETS
    for field in PACKETS:
        if not field.nullable:
            assert table.column(field.name).null_count == 0, field.name
    for name, (low, high) in VALUE_RANGES.items():
        values = [v for v in table.column(name).to_pylist() if v is not None]
        assert all(low <= v <= high for v in values), name
    assert all(math.isfinite(t) for t in table.column("ts").to_pylist())
    assert set(table.column("ip_version").to_pylist()) <= {4, 6}


# --- EK ingest ---------------------------------------------------------------------------------
SEED_LINES = RECORDED.read_bytes().splitlines()
SEED_PACKETS = [json.loads(line) for line in SEED_LINES if b'"layers"' in line]
FIELD_NAMES = sorted(SEED_PACKETS[0]["layers"])

odd_text = st.sampled_from([
    "", "0x", "0xZZ", "-1", "-0x10", "99999999999999999999999", "1e400", "nan", "inf", "-inf", "4294967296",
    "65536", "0x10000", "256", "１２３", "1.5", " 7", "0x0018 ", "null", "[]", "\u0000", "💥", "0" * 400,
]) | st.text(max_size=12) | st.integers(-2**70, 2**70).map(str) | st.integers(0, 2**40).map(hex)
odd_value = st.one_of(
    st.lists(odd_text, min_size=1, max_size=3),  # strings where tshark puts strings
    st.just([]), st.none(), st.integers(-5, 5), st.text(max_size=5), st.floats(allow_nan=True),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.lists(st.integers(), max_size=2),
)


@st.composite
def mutated_ek(draw: st.DrawFn) -> bytes:
    """The recorded EK with values replaced, fields dropped, lines cut, bytes flipped."""
    packets = [json.loads(json.dumps(p)) for p in SEED_PACKETS]
    for _ in range(draw(st.integers(0, 6))):
        layers = packets[draw(st.integers(0, len(packets) - 1))]["layers"]
        name = draw(st.sampled_from([*FIELD_NAMES, "tcp_extra", "ipv6_src", "ipv6_hlim"]))
        if draw(st.booleans()):
            layers[name] = draw(odd_value)
        else:
            layers.pop(name, None)
    if draw(st.booleans()):
        packets[draw(st.integers(0, len(packets) - 1))]["layers"] = draw(odd_value)
    lines = [json.dumps(p).encode() for p in packets]
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from([
            b"", b"{}", b"[]", b"null", b"42", b'{"index":{}}', b'{"layers":{}}', b"{", b'{"layers":',
            b"\xff\xfe", b'{"layers":{"frame_number":["1"]}}'])))
    text = b"\n".join(lines) + b"\n"
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + bytes([draw(st.integers(0, 255))]) + text[at + 1:]
    if draw(st.booleans()):
        text = text[:draw(st.integers(0, len(text)))]
    return text


def read_ek(text: bytes, block_size: int) -> pa.Table:
    return pa.Table.from_batches(list(ek_batches(io.BytesIO(text), block_size=block_size)), schema=PACKETS)


def test_recorded_ek_is_accepted() -> None:
    table = read_ek(RECORDED.read_bytes(), 1 << 16)
    check_packets(table)
    assert table.num_rows == 20


@given(mutated_ek(), st.sampled_from([1 << 12, 1 << 16]))
@examples(150)
def test_mutated_ek_gives_valid_rows_or_a_clean_error(text: bytes, block_size: int) -> None:
    try:
        table = read_ek(text, block_size)
    except TeardownError as exc:
        assert exc.message and "\n" not in exc.message
        return
    check_packets(table)
    if table.num_rows:
        analyze_packets(table, "fuzzed", Params())  # whatever was accepted must label


@given(st.binary(max_size=2000))
@examples(100)
def test_arbitrary_bytes_as_ek(text: bytes) -> None:
    try:
        table = read_ek(text, 1 << 12)
    except TeardownError:
        return
    check_packets(table)


# --- the native reader -------------------------------------------------------------------------
try:
    from tcp_teardown import native
except ImportError:  # another engine may not be installed: then there is nothing to fuzz
    native = None  # type: ignore[assignment]

needs_native = pytest.mark.skipif(native is None, reason="tcp_teardown.native is not available")


def _seed_captures() -> list[bytes]:
    conv = b.conversation("fin_by_server", data=[("c", 40), ("s", 300)])
    v6 = b.conversation("rst_by_client", client=("fd00::1", 40001), server=("fd00::2", 443))
    return [
        b.pcap_of(conv),
        b.pcap_of(conv, big_endian=True, nanosecond=True),
        b.pcap_of(v6, b.LINKTYPE_LINUX_SLL2),
        b.pcap_of(conv, b.LINKTYPE_NULL),
        b.pcap_of(conv, b.LINKTYPE_RAW),
        b.pcapng_bytes(b.records(b.frames_of(conv + b.shift(v6, 0.005))), extra={2: b.unknown_block()}),
        gzip.compress(b.pcap_of(conv)),
    ]


SEEDS = _seed_captures()


@st.composite
def mutated_capture(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["byte", "word", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "byte" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "word":  # lengths, offsets, link types, header fields: 32-bit values
            word = draw(st.sampled_from([0, 1, 12, 64, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            data[at:at + 4] = word.to_bytes(4, draw(st.sampled_from(["little", "big"])))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=40))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 40))]
    return bytes(data)


@pytest.fixture(scope="module")
def scratch() -> Path:
    with tempfile.TemporaryDirectory(prefix="tcp-teardown-fuzz-") as folder:
        yield Path(folder)


@needs_native
@given(data=mutated_capture())
@examples(150)
def test_mutated_capture_native_raises_only_declared_errors(scratch: Path, data: bytes) -> None:
    path = scratch / "fuzzed.pcap"
    path.write_bytes(data)
    batches: list[pa.RecordBatch] = []
    with contextlib.suppress(native.NativeUnsupported, native.TruncatedCapture):
        batches.extend(native.read_packets(path))
    if batches:
        check_packets(pa.Table.from_batches(batches))
