"""The vectorised write stage (filters, endpoints, hosts, counts, Parquet) against plain
Python references on small random tables full of ties, reuse and odd values."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tcp_teardown import endpoints, filters
from tcp_teardown.api import summary_counts
from tcp_teardown.codes import radix_order
from tcp_teardown.filters import LABELS, LabelFilter, label_filters, set_filters
from tcp_teardown.output import parquet_options, write_table
from tcp_teardown.schema import LABEL
from tcp_teardown.vocab import CLOSE_VALUES, OPEN_VALUES, Close, Flag, Open

FLAGS = [Flag.PORT_REUSE_TIME_WAIT.value, Flag.THREE_WAY_CLOSE.value, Flag.IDLE_CLOSE.value, "zz_local", "aa_local"]


def random_tables(seed: int, rows: int = 400) -> tuple[pa.Table, pa.Table]:
    """Connections and key frames over three files, in two chunks with their own dictionaries."""
    rng = np.random.default_rng(seed)
    ips = [f"10.0.0.{i}" for i in range(6)] + ["fd00::1", "192.168.1.1"]
    first = np.round(rng.uniform(0, 40, rows))  # whole seconds: many ties
    conns = {
        "file": rng.choice(["b.pcap", "a.pcap", "c.pcap"], rows).tolist(),
        "tcp_stream": [None if rng.random() < 0.05 else int(rng.integers(0, rows // 2)) for _ in range(rows)],
        "client_ip": rng.choice(ips, rows).tolist(),
        "client_port": rng.integers(1000, 1010, rows).astype(np.int32),  # 4-tuples are reused
        "server_ip": rng.choice(ips[:3], rows).tolist(),
        "server_port": rng.choice([80, 443, 8080], rows).astype(np.int32),
        "open": rng.choice([*OPEN_VALUES, Open.SYN_ACK_NO_ACK.value], rows).tolist(),
        "close": rng.choice(CLOSE_VALUES, rows, p=[0.3, 0.3, 0.2, 0.05, 0.05, 0.04, 0.03, 0.03]).tolist(),
        "flags": [rng.choice(FLAGS, int(rng.integers(0, 3))).tolist() for _ in range(rows)],
        "first_ts": first,
        "last_ts": first + np.round(rng.uniform(0, 5, rows)),
    }
    table = pa.table(conns)
    halves = [table.slice(0, rows // 2), table.slice(rows // 2)]
    conns_table = pa.concat_tables([_with_labels(h) for h in halves])  # dictionaries differ per chunk
    frame_rows = rows * 2
    frames = pa.table({
        "file": rng.choice(["a.pcap", "b.pcap", "c.pcap", "other.pcap"], frame_rows).tolist(),
        "frame_number": rng.integers(1, 3 * rows, frame_rows),
        "labels": [rng.choice([*LABELS[:8], "zz_local", "unknown"], int(rng.integers(0, 3))).tolist()
                   for _ in range(frame_rows)],
    })
    return conns_table, frames


def _with_labels(table: pa.Table) -> pa.Table:
    for name in ("open", "close"):
        column = table.column(name).combine_chunks().dictionary_encode().cast(LABEL)
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


# --- filters --------------------------------------------------------------------------------
def reference_filters(conns: pa.Table, frames: pa.Table) -> list[LabelFilter]:
    rows, frame_rows = conns.to_pylist(), frames.to_pylist()
    files = list(dict.fromkeys(r["file"] for r in rows))

    def labels(row: dict) -> list[str]:
        return [row["open"], row["close"], *row["flags"]]

    present = {label for r in rows for label in labels(r)}
    order = [*LABELS, *sorted(present - set(LABELS))]
    found = []
    for file in files:
        for label in order:
            holders = [r for r in rows if r["file"] == file for held in labels(r) if held == label]
            if not holders:
                continue
            streams = [r["tcp_stream"] for r in holders if r["tcp_stream"] is not None and r["tcp_stream"] >= 0]
            frames_of = [f["frame_number"] for f in frame_rows if f["file"] == file
                         for held in f["labels"] if held == label]
            found.append(LabelFilter(file, label, len(holders), set_filters("tcp.stream", streams),
                                     set_filters("frame.number", frames_of), len(frames_of)))
    return found


@pytest.mark.parametrize("seed", range(4))
def test_label_filters_match_a_plain_reference(seed: int) -> None:
    conns, frames = random_tables(seed)
    assert label_filters(conns, frames) == reference_filters(conns, frames)


@pytest.mark.parametrize("limit", [12, 40])
def test_label_filters_at_the_set_size_limit(limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels held by more rows than the limit, some with few distinct streams or frames
    (sets written) and some with many (sets left out), as the plain reference decides."""
    monkeypatch.setattr(filters, "MAX_TOTAL_MEMBERS", limit)
    conns, frames = random_tables(5, rows=600)
    got = label_filters(conns, frames)
    assert got == reference_filters(conns, frames)
    assert any(f.stream_filters for f in got if f.connections > limit)
    assert any(not f.stream_filters for f in got if f.connections > limit)


def test_label_filters_without_frames_or_connections() -> None:
    conns, frames = random_tables(9)
    assert label_filters(conns, frames.slice(0, 0)) == reference_filters(conns, frames.slice(0, 0))
    assert label_filters(conns.slice(0, 0), frames) == []


def test_set_filters_sorts_and_deduplicates() -> None:
    assert set_filters("tcp.stream", [5, 3, 5, 1]) == ("tcp.stream in {1,3,5}",)
    assert set_filters("tcp.stream", np.array([], np.int64)) == ()


@pytest.mark.parametrize("limit", [1, 7, 1 << 16, (1 << 16) + 1, 1 << 40])
def test_radix_order_is_a_stable_argsort(limit: int) -> None:
    rng = np.random.default_rng(limit % 97)
    keys = rng.integers(0, limit, 5000)
    before = np.argsort(rng.random(5000), kind="stable")
    assert (radix_order(keys, limit) == np.argsort(keys, kind="stable")).all()
    assert (radix_order(keys, limit, before) == before[np.argsort(keys[before], kind="stable")]).all()


# --- endpoints and hosts ----------------------------------------------------------------------
def reference_hosts(rows: list[dict], msl: float) -> dict[str, tuple[int, int]]:
    """Per host: (active closes, most TIME_WAITs held at once), by an event sweep."""
    until = []
    for i, row in enumerate(rows):
        end = row["last_ts"] + 2 * msl
        same = sorted((r["first_ts"], j) for j, r in enumerate(rows)
                      if (r["client_ip"], r["client_port"], r["server_ip"], r["server_port"])
                      == (row["client_ip"], row["client_port"], row["server_ip"], row["server_port"]))
        later = [t for t, j in same if (t, j) > (row["first_ts"], i)]
        until.append(min(end, max(later[0], row["last_ts"])) if later else end)
    events: dict[str, list[tuple[float, int]]] = {}
    for row, end in zip(rows, until, strict=True):
        sides = {Close.FIN_BY_CLIENT: ["client_ip"], Close.FIN_BY_SERVER: ["server_ip"],
                 Close.FIN_SIMULTANEOUS: ["client_ip", "server_ip"]}.get(row["close"], [])
        for side in sides:
            events.setdefault(row[side], []).extend([(row["last_ts"], 1), (end, -1)])
    hosts = {}
    for ip, found in events.items():
        held, peak = 0, -math.inf
        for _, step in sorted(found):  # at one instant a TIME_WAIT ends before another starts
            held += step
            peak = max(peak, held)
        hosts[ip] = (len(found) // 2, int(peak))
    return hosts


def reference_endpoints(rows: list[dict], msl: float) -> list[dict]:
    peaks = {ip: peak for ip, (_, peak) in reference_hosts(rows, msl).items()}
    out = []
    for ip, port in sorted({(r["server_ip"], r["server_port"]) for r in rows}):
        mine = [r for r in rows if (r["server_ip"], r["server_port"]) == (ip, port)]
        close = Counter(r["close"] for r in mine)
        orderly = close[Close.FIN_BY_CLIENT] + close[Close.FIN_BY_SERVER] + close[Close.FIN_SIMULTANEOUS]
        half = Counter(math.floor(r["first_ts"]) for r in mine if r["open"] == Open.SYN_ACK_NO_ACK)
        row = {"server_ip": ip, "server_port": port, "connections": len(mine),
               "server_active_close_share": close[Close.FIN_BY_SERVER] / orderly if orderly else None,
               "half_open_peak_per_s": max(half.values(), default=0),
               "port_reuse_time_wait": sum(Flag.PORT_REUSE_TIME_WAIT in r["flags"] for r in mine),
               "server_time_wait_peak": peaks.get(ip, 0)}
        row.update({f"open_{v}": sum(r["open"] == v for r in mine) for v in OPEN_VALUES})
        row.update({f"close_{v}": close[v] for v in CLOSE_VALUES})
        out.append(row)
    return out


@pytest.mark.parametrize(("seed", "msl"), [(0, 30.0), (1, 0.5), (2, 2.0), (3, 0.0)])
def test_endpoints_and_hosts_match_a_plain_reference(seed: int, msl: float) -> None:
    conns, _ = random_tables(seed, rows=250)
    rows = conns.to_pylist()
    endpoint_table, host_table = endpoints.aggregate_tables(conns, msl)
    assert endpoint_table.to_pylist() == reference_endpoints(rows, msl)
    hosts = reference_hosts(rows, msl)
    assert host_table.to_pylist() == [{"ip": ip, "active_closes": n, "time_wait_peak": peak}
                                      for ip, (n, peak) in sorted(hosts.items())]


def test_pandas_callers_get_the_same_tables() -> None:
    conns, _ = random_tables(5)
    arrow = endpoints.aggregate_tables(conns, 30.0)
    frame = conns.to_pandas()
    assert endpoints.endpoint_table(frame, 30.0).equals(arrow[0])
    assert endpoints.host_table(frame, 30.0).equals(arrow[1])
    # Without client ports (explore's loaded tables), TIME_WAIT lasts the full 2·MSL.
    no_ports = conns.drop_columns(["client_port"])
    expected = reference_hosts([{**r, "client_port": i} for i, r in enumerate(no_ports.to_pylist())], 30.0)
    assert endpoints.host_table(no_ports.to_pandas(), 30.0).to_pylist() == [
        {"ip": ip, "active_closes": n, "time_wait_peak": peak} for ip, (n, peak) in sorted(expected.items())]


# --- counts and Parquet ---------------------------------------------------------------------
def test_summary_counts_lists_most_first_then_first_seen() -> None:
    conns, _ = random_tables(6)
    for kind, values in (("open", conns.column("open").to_pylist()), ("close", conns.column("close").to_pylist()),
                         ("flags", [f for fl in conns.column("flags").to_pylist() for f in fl])):
        expected = sorted(Counter(values).items(), key=lambda kv: -kv[1])  # Counter keeps first-seen order
        assert list(summary_counts(conns)[kind].items()) == expected


def test_parquet_options_read_back_unchanged(tmp_path: Path) -> None:
    conns, frames = random_tables(7)
    for table in (conns, frames):
        target, plain = tmp_path / "t.parquet", tmp_path / "plain.parquet"
        write_table(table, target)
        pq.write_table(table, plain)  # the writer's defaults: what any reader got before
        back, before = pq.read_table(target), pq.read_table(plain)
        assert back.to_pylist() == table.to_pylist()
        # Same types, list item names and dictionaries (unified per column) as before.
        assert back.equals(before) and back.schema.equals(before.schema, check_metadata=True)
    options = parquet_options(conns.schema)
    assert options["column_encoding"]["first_ts"] == "BYTE_STREAM_SPLIT"
    assert options["column_encoding"]["client_port"] == "DELTA_BINARY_PACKED"
    assert "client_ip" in options["use_dictionary"] and "open" in options["use_dictionary"]
    assert "flags.list.element" not in options["write_statistics"]
    assert "file" in options["write_statistics"]  # explore prunes files and row groups with them
