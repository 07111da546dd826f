"""The native reader's row buffer: parts of rows in, batches of a fixed size out, the same
rows whether the buffer was made big enough at once or had to grow (no tshark needed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tcp_teardown.native import reader
from tcp_teardown.native.reader import ROW_TYPES, RowBuffer
from tcp_teardown.schema import PACKETS


def random_part(rng: np.random.Generator, rows: int, first_frame: int, ipv6: bool) -> dict[str, np.ndarray]:
    part = {name: rng.integers(0, 1000, rows).astype(kind) for name, kind in ROW_TYPES.items()}
    part["frame_number"] = np.arange(first_frame, first_frame + rows, dtype=np.int64)
    part["version"] = np.full(rows, 4, dtype=np.int8)
    if ipv6:
        part["version"][::2] = 6
        part["src_hi"] = np.where(part["version"] == 6, np.uint64(0x20010DB800000000), np.uint64(0))
        part["dst_hi"] = part["src_hi"].copy()
    return part


def batches_of(parts: list[dict[str, np.ndarray]], size: int, expected: int | None) -> list[pa.RecordBatch]:
    rows = RowBuffer(size)
    rows.expected = expected
    out = []
    for part in parts:
        done = 0
        while done < len(part["frame_number"]):
            done += rows.add(part, done)
            if rows.full:
                out.append(rows.batch())
    if rows.count:
        out.append(rows.batch())
    return out


@pytest.mark.parametrize("size", [1, 7, 1000, 10**9])
@pytest.mark.parametrize("expected", [None, 3, 10**6])
def test_batches_hold_the_rows_in_order(monkeypatch: pytest.MonkeyPatch, size: int, expected: int | None) -> None:
    monkeypatch.setattr(reader, "FIRST_BATCH_ROWS", 5)  # grow often
    rng = np.random.default_rng(size)
    parts, first = [], 1
    for i, rows in enumerate([0, 3, 40, 1, 200, 17]):
        parts.append(random_part(rng, rows, first, ipv6=i == 4))  # IPv6 only in some parts
        first += rows
    batches = batches_of(parts, size, expected)
    assert all(batch.num_rows == size for batch in batches[:-1])
    assert batches[-1].num_rows <= size
    table = pa.Table.from_batches(batches, schema=PACKETS)
    assert table.column("frame_number").to_pylist() == list(range(1, first))
    seq = np.concatenate([part["seq"] for part in parts])
    assert table.column("seq_raw").to_pylist() == seq.tolist()
    six = np.concatenate([part["version"] for part in parts]) == 6
    assert table.column("ip_id").is_null().to_numpy(zero_copy_only=False).tolist() == six.tolist()
    src = table.column("src_ip").to_pylist()
    assert all((":" in text) == bool(v6) for text, v6 in zip(src, six, strict=True))


def test_parts_made_in_room_equal_parts_copied_in() -> None:
    """A part written straight into the buffer's `room` (as the reader decodes) makes the
    same batch as the part copied in; room is only offered for parts that fit the batch."""
    rng = np.random.default_rng(5)
    parts, first = [], 1
    for rows in (300, 1, 4000):
        parts.append(random_part(rng, rows, first, ipv6=False))
        first += rows
    copied = batches_of(parts, 10**9, 10**6)
    rows = RowBuffer(10**9)
    rows.expected = 10**6
    for part in parts:
        room = rows.room(len(part["frame_number"]))
        assert room is not None
        for name, values in part.items():
            room[name][: len(values)] = values
        made = {name: room[name][: len(values)] for name, values in part.items()}
        assert rows.add(made, 0) == len(part["frame_number"])
    assert rows.batch().equals(copied[0])
    assert RowBuffer(10).room(11) is None
