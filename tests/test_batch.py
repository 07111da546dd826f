"""`tcp-teardown batch` over a small generated archive, with the real tshark.

The archive (built once per module): real captures in dated, nested folders, some
converted to pcapng, some gzipped, one zstd, one cut short, one corrupt file, and a
rotation set written by `editcap -c` from a capture whose connections span its files.
The dataset must hold exactly the rows a per-file `analyze` gives (the rotation set:
the rows of the original capture, with per-file frame numbers and streams), survive a
kill -9 mid-run, and a re-run must do no work.

The helpers here (archive, reference, dataset comparison) are shared with
test_batch_dask.py and test_chunks.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tcp_teardown.api import analyze_file
from tcp_teardown.batch import Options, dataset, run_batch
from tcp_teardown.batch.discover import Capture, discover, group_units, rotation_key
from tcp_teardown.batch.manifest import MANIFEST_SCHEMA, Manifest, Part, Record
from tcp_teardown.batch.progress import Progress
from tcp_teardown.endpoints import endpoint_table, host_table
from tcp_teardown.facts import Params
from tcp_teardown.schema import CONNECTIONS, FRAMES
from tcp_teardown.tshark import find_tshark
from tests.conftest import CLI, ROOT, SAMPLE, SEEDS, needs_tshark, run_cli, tshark_fields

REAL = ROOT / "tests" / "captures" / "real"
RING_PACKETS = 25  # editcap -c for the rotation set: teardowns.pcap (123 packets) -> 5 files
FRAME_COLUMNS = ("syn_frame", "first_fin_frame", "second_fin_frame", "rst_frame", "final_ack_frame",
                 "first_frame", "last_frame")


# --- the archive ---------------------------------------------------------------------


@dataclass
class Archive:
    root: Path
    lone: dict[str, Path] = field(default_factory=dict)  # dataset name -> capture analyzed alone
    ring: list[tuple[str, Path]] = field(default_factory=list)  # rotation set members, in order
    ring_source: Path = SAMPLE
    corrupt: str = ""
    truncated: str = ""

    @property
    def names(self) -> list[str]:
        return sorted([*self.lone, *(n for n, _ in self.ring), self.corrupt])


def editcap(*args: str | Path) -> None:
    subprocess.run(["editcap", *map(str, args)], check=True, capture_output=True, timeout=60)


def build_archive(base: Path, real: int = 11, seeds: int = 7) -> Archive:
    """A small archive in `base/archive` (see the module docstring)."""
    root = base / "archive"
    archive = Archive(root)

    def add(relative: str, source: Path, how: str = "copy") -> None:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if how == "copy":
            shutil.copyfile(source, target)
        elif how == "pcapng":
            editcap("-F", "pcapng", source, target)
        elif how == "gzip":
            target.write_bytes(gzip.compress(source.read_bytes()))
        elif how == "zstd":
            import zstandard

            target.write_bytes(zstandard.ZstdCompressor().compress(source.read_bytes()))
        archive.lone[f"archive/{relative}"] = target

    reals = sorted(REAL.glob("*.pcap"))[:real]
    for i, path in enumerate(reals):
        if i < 3:
            add(f"2024-01-15/night/{path.stem}.pcapng", path, "pcapng")
        else:
            add(f"2024-01-15/{path.name}", path)
    seed_files = sorted(SEEDS.glob("seed0*.pcap"))[:seeds]
    for i, path in enumerate(seed_files):
        if i < 2:
            add(f"2024-01-16/am/{path.name}.gz", path, "gzip")
        elif i == 2:
            add(f"2024-01-16/am/{path.name}.zst", path, "zstd")
        else:
            add(f"2024-01-16/pm/{path.name}", path)
    # Cut short in the middle of a packet: labelled up to the cut, reported as truncated.
    whole = (SEEDS / "seed_all_in_one.pcap").read_bytes()
    cut = root / "2024-01-16/pm/cut_short.pcap"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    archive.lone["archive/2024-01-16/pm/cut_short.pcap"] = cut
    archive.truncated = "archive/2024-01-16/pm/cut_short.pcap"
    corrupt = root / "2024-01-16/pm/corrupt.pcap"
    corrupt.write_bytes(bytes(range(256)) * 8)
    archive.corrupt = "archive/2024-01-16/pm/corrupt.pcap"
    ring_dir = root / "ring"
    ring_dir.mkdir(parents=True)
    editcap("-F", "pcap", "-c", RING_PACKETS, SAMPLE, ring_dir / "web.pcap")
    archive.ring = [(f"archive/ring/{m.name}", m) for m in sorted(ring_dir.glob("web_*.pcap"))]
    # Not captures: a hidden folder and a text file are not picked up.
    (root / ".trash").mkdir()
    shutil.copyfile(reals[0], root / ".trash" / "old.pcap")
    (root / "README.txt").write_text("not a capture\n")
    return archive


# --- what the dataset must hold ------------------------------------------------------


def analyze_reference(path: Path, name: str, engine: str = "tshark") -> tuple[pa.Table, pa.Table]:
    tshark = find_tshark() if engine == "tshark" else None
    conns, frames, _ = analyze_file(path, Params(), engine, tshark, name=name)
    return conns, frames


def split_into_members(conns: pa.Table, frames: pa.Table, members: list[tuple[str, Path]],
                       per_member: int) -> tuple[pa.Table, pa.Table]:
    """Whole-capture rows as a rotation set must show them: each frame number in its own file
    (members of `per_member` frames), each stream as tshark numbers it opening that file."""
    names = np.asarray([n for n, _ in members], dtype=object)
    streams = [{int(f): int(s) for f, s, *_ in tshark_fields(path, "frame.number", "tcp.stream") if s}
               for _, path in members]

    def local(column: pa.Array) -> pa.Array:
        return pc.add(_mod(pc.subtract(column, 1), per_member), 1)

    first = conns.column("first_frame").to_numpy()
    member = (first - 1) // per_member
    columns = {n: conns.column(n) for n in conns.column_names}
    for name in FRAME_COLUMNS:
        columns[name] = local(conns.column(name).combine_chunks())
    key_frames = conns.column("key_frames").combine_chunks()
    columns["key_frames"] = pa.ListArray.from_arrays(key_frames.offsets, local(key_frames.values))
    columns["file"] = pa.array(names[member].tolist(), pa.string())
    local_first = (first - 1) % per_member + 1
    stream_of_conn = np.array([streams[m][f] for m, f in zip(member, local_first, strict=True)], np.int64)
    columns["tcp_stream"] = pa.array(stream_of_conn)
    out_conns = pa.table([columns[f.name] for f in CONNECTIONS], schema=CONNECTIONS)
    # A key frame's stream is its connection's: find the connection by its key frames.
    frame_to_conn = dict(zip(pc.list_flatten(key_frames).to_pylist(),
                             pc.list_parent_indices(key_frames).to_pylist(), strict=True))
    numbers = frames.column("frame_number").to_numpy()
    fcols = {n: frames.column(n) for n in frames.column_names}
    fcols["frame_number"] = local(frames.column("frame_number").combine_chunks())
    fcols["file"] = pa.array(names[(numbers - 1) // per_member].tolist(), pa.string())
    fcols["tcp_stream"] = pa.array(stream_of_conn[[frame_to_conn[int(f)] for f in numbers]])
    out_frames = pa.table([fcols[f.name] for f in FRAMES], schema=FRAMES)
    return out_conns, out_frames


def _mod(values: pa.Array, divisor: int) -> pa.Array:
    """values % divisor, nulls kept."""
    mask = values.is_null().to_numpy(zero_copy_only=False)
    filled = pc.fill_null(values, 0).to_numpy(zero_copy_only=False)
    return pa.array(filled % divisor, pa.int64(), mask=mask if mask.any() else None)


def expected_tables(archive: Archive, engine: str = "tshark") -> tuple[pa.Table, pa.Table]:
    """The rows every done capture of the archive must contribute, computed file by file."""
    items = sorted(archive.lone.items())
    with ThreadPoolExecutor(2) as pool:  # tshark runs in its own process: threads overlap them
        results = list(pool.map(lambda kv: analyze_reference(kv[1], kv[0], engine), items))
    ring_conns, ring_frames = analyze_reference(archive.ring_source, "whole", engine)
    ring_conns, ring_frames = split_into_members(ring_conns, ring_frames, archive.ring, RING_PACKETS)
    conns = pa.concat_tables([canonical(c) for c, _ in results] + [canonical(ring_conns)])
    frames = pa.concat_tables([canonical(f) for _, f in results] + [canonical(ring_frames)])
    return conns, frames


def canonical(table: pa.Table) -> pa.Table:
    """Labels as plain strings, no partition column, one chunk: comparable across writers."""
    if "day" in table.column_names:
        table = table.drop_columns(["day"])
    columns = []
    for f in table.schema:
        column = table.column(f.name)
        if pa.types.is_dictionary(f.type):
            column = column.cast(pa.string())
        columns.append(column.combine_chunks())
    return pa.table(columns, names=table.column_names)


def read_kind(root: Path, kind: str) -> pa.Table:
    """One table of the dataset, through pyarrow.dataset with the hive partitioning."""
    table = ds.dataset(root / kind, format="parquet", partitioning="hive").to_table()
    return canonical(table)


SORT_KEYS = {"connections": ["file", "first_frame"], "frames": ["file", "frame_number"],
             "endpoints": ["server_ip", "server_port"], "hosts": ["ip"]}


def assert_same_rows(actual: pa.Table, expected: pa.Table, kind: str) -> None:
    keys = [(k, "ascending") for k in SORT_KEYS[kind]]
    actual = canonical(actual).select(expected.column_names).sort_by(keys)
    expected = canonical(expected).sort_by(keys)
    assert actual.num_rows == expected.num_rows, f"{kind}: {actual.num_rows} rows, expected {expected.num_rows}"
    for name in expected.column_names:
        a, e = actual.column(name), expected.column(name)
        if not a.equals(e):
            diff = np.flatnonzero(~np.asarray(pc.fill_null(pc.equal(a, e), False)))
            first = int(diff[0]) if len(diff) else 0
            raise AssertionError(f"{kind}.{name} differs in {len(diff)} rows, e.g. {a[first]} != {e[first]} "
                                 f"(row {expected.slice(first, 1).to_pylist()})")


def assert_same_dataset(a: Path, b: Path) -> None:
    for kind in ("connections", "frames", "endpoints", "hosts"):
        assert_same_rows(read_kind(a, kind), read_kind(b, kind), kind)
    statuses = [{r.file: (r.status, r.packets, r.connections, r.key_frames, r.sha256, sorted(p.path for p in r.parts))
                 for r in Manifest(root).records.values()} for root in (a, b)]
    assert statuses[0] == statuses[1]


def batch(archive: Archive | Path, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    root = archive.root if isinstance(archive, Archive) else archive
    result = run_cli("batch", root, "--out", out, "--root", root.parent, "--engine", "tshark", "--jobs", "2",
                     "--json", *args)
    assert result.returncode in (0, 4), result.stderr
    return result, json.loads(result.stdout)


# --- fixtures ------------------------------------------------------------------------


def archive_or_skip(base: Path, **sizes: int) -> Archive:
    """build_archive, or a skip saying what is missing (the seed corpus, tshark, editcap)."""
    if not SEEDS.is_dir():
        pytest.skip("the shared seed corpus is not beside the checkout")
    if shutil.which("editcap") is None or shutil.which("tshark") is None:
        pytest.skip("tshark and editcap are needed")
    return build_archive(base, **sizes)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    return archive_or_skip(tmp_path_factory.mktemp("batch"))


@pytest.fixture(scope="module")
def expected(archive: Archive) -> tuple[pa.Table, pa.Table]:
    return expected_tables(archive)


@pytest.fixture(scope="module")
def clean_run(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("dataset") / "ds"
    result, summary = batch(archive, out)
    return out, summary, result.stderr


# --- the archive, end to end (real tshark) -----------------------------------------


@needs_tshark
def test_rows_equal_per_file_analyze(clean_run: tuple[Path, dict, str], expected: tuple[pa.Table, pa.Table],
                                     archive: Archive) -> None:
    out, summary, _ = clean_run
    conns, frames = expected
    assert_same_rows(read_kind(out, "connections"), conns, "connections")
    assert_same_rows(read_kind(out, "frames"), frames, "frames")
    # The rotation set's connections that cross files came out whole: as many as in the original.
    ring_rows = pc.sum(pc.starts_with(read_kind(out, "connections").column("file"), "archive/ring/")).as_py()
    whole, _ = analyze_reference(archive.ring_source, "whole")
    assert ring_rows == whole.num_rows
    crossing = [c for c in whole.to_pylist()
                if (c["first_frame"] - 1) // RING_PACKETS != (c["last_frame"] - 1) // RING_PACKETS]
    assert crossing, "the rotation set must have connections that span files"
    assert summary["rotation_sets"] == 1 and summary["files"] == len(archive.names)


@needs_tshark
def test_manifest_reports_the_corrupt_file_and_the_rest_succeed(clean_run: tuple[Path, dict, str],
                                                                archive: Archive) -> None:
    out, summary, _ = clean_run
    assert summary["done"] == len(archive.names) - 1
    assert [f["file"] for f in summary["failed"]] == [archive.corrupt]
    table = pq.read_table(out / "manifest.parquet").to_pandas().set_index("file")
    assert sorted(table.index) == archive.names
    bad = table.loc[archive.corrupt]
    assert bad["status"] == "failed" and bad["exit_code"] == 4 and "not a capture" in bad["error"]
    done = table.drop(index=archive.corrupt)
    assert (done["status"] == "done").all() and done["error"].isna().all()
    assert done.loc[archive.truncated, "truncated"] and done["truncated"].sum() == 1
    for name, row in done.iterrows():
        path = Path(row["path"])
        assert row["size"] == path.stat().st_size
        assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), name
        assert row["seconds"] > 0 and row["started"] <= row["finished"]
        assert row["packets"] > 0 and row["params"] == json.dumps({"idle_threshold": 5.0, "msl": 30.0})
        assert all((out / p).is_file() for p in row["parts"])
    ring = done[done["rotation_set"].notna()]
    assert len(ring) == len(archive.ring) and ring["set_signature"].nunique() == 1


@needs_tshark
def test_endpoints_are_aggregated_over_the_whole_dataset(clean_run: tuple[Path, dict, str],
                                                         expected: tuple[pa.Table, pa.Table]) -> None:
    out, _, _ = clean_run
    conns = expected[0].to_pandas()
    assert_same_rows(read_kind(out, "endpoints"), endpoint_table(conns, 30.0), "endpoints")
    assert_same_rows(read_kind(out, "hosts"), host_table(conns, 30.0), "hosts")


@needs_tshark
def test_pandas_pyarrow_and_duckdb_read_one_table_per_kind(clean_run: tuple[Path, dict, str],
                                                           expected: tuple[pa.Table, pa.Table]) -> None:
    import pandas as pd

    out, _, _ = clean_run
    rows = expected[0].num_rows
    conns = pd.read_parquet(out / "connections")
    assert len(conns) == rows and {"day", "open", "flags", "file"} <= set(conns.columns)
    assert isinstance(conns["open"].dtype, pd.CategoricalDtype)
    assert len(pd.read_parquet(out / "frames")) == expected[1].num_rows
    table = ds.dataset(out / "connections", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == rows and table.schema.field("day").type == pa.string()
    duckdb = pytest.importorskip("duckdb")
    by_day = dict(duckdb.sql(f"select day::varchar, count(*) from read_parquet('{out}/connections/*/*.parquet', "
                             "hive_partitioning=true) group by all").fetchall())
    assert sum(by_day.values()) == rows
    assert by_day == conns.groupby("day", observed=True).size().to_dict()


@needs_tshark
def test_rerun_does_no_work(clean_run: tuple[Path, dict, str], archive: Archive) -> None:
    out, _, _ = clean_run
    parts = {p: p.stat().st_mtime_ns for kind in ("connections", "frames", "endpoints", "hosts")
             for p in (out / kind).rglob("*.parquet")}
    before = {r.file: r for r in Manifest(out).records.values()}
    started = time.monotonic()
    _, summary = batch(archive, out)
    assert summary["done"] == 0 and summary["skipped"] == len(archive.names) - 1
    assert [f["file"] for f in summary["failed"]] == [archive.corrupt]  # failures are retried
    assert {p: p.stat().st_mtime_ns for p in parts} == parts
    after = {r.file: r for r in Manifest(out).records.values()}
    assert {k: v for k, v in after.items() if k != archive.corrupt} == \
        {k: v for k, v in before.items() if k != archive.corrupt}
    assert time.monotonic() - started < 30


@needs_tshark
def test_killed_run_resumes_to_the_identical_dataset(clean_run: tuple[Path, dict, str], archive: Archive,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "ds"
    proc = subprocess.Popen([str(CLI), "batch", str(archive.root), "--out", str(out),
                             "--root", str(archive.root.parent), "--engine", "tshark", "--jobs", "2", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    log = out / "manifest.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its workers and their tshark
    proc.wait(timeout=30)
    done_before = len(Manifest(out).records)
    assert 5 <= done_before < len(archive.names)
    # Nothing half-written is visible: every part a reader would pick up is whole.
    for part in out.rglob("*.parquet"):
        if not part.name.startswith("."):
            pq.read_metadata(part)
    _, summary = batch(archive, out)
    assert summary["done"] + summary["skipped"] + len(summary["failed"]) == len(archive.names)
    assert summary["done"] >= len(archive.names) - done_before - 1
    assert not list(out.rglob("*.tmp")) and not (out / ".scratch").exists()
    assert_same_dataset(out, clean_run[0])


@needs_tshark
def test_rerun_verifies_parts_and_redoes_a_damaged_capture(clean_run: tuple[Path, dict, str], archive: Archive,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "ds"
    shutil.copytree(clean_run[0], out)
    record = Manifest(out).get(sorted(archive.lone)[0])
    victim = out / record.parts[0].path
    victim.write_bytes(victim.read_bytes()[:100])  # damaged behind our back
    stray = out / "connections" / "day=2001-01-01" / "part-stray.parquet"
    stray.parent.mkdir()
    stray.write_bytes(b"")  # a part no manifest record names (a run died before its record): swept
    _, summary = batch(archive, out)
    assert summary["done"] == 1 and not stray.exists()
    assert_same_dataset(out, clean_run[0])


@needs_tshark
def test_force_redoes_done_captures_and_new_parameters_redo_them_too(tmp_path: Path) -> None:
    archive = tmp_path / "in"
    archive.mkdir()
    for name in ("fin_by_server.pcap", "refused.pcap"):
        shutil.copyfile(REAL / name, archive / name)
    out = tmp_path / "ds"
    first = run_batch([str(archive)], Options(out=out, engine="tshark", jobs=1, progress=False))
    again = run_batch([str(archive)], Options(out=out, engine="tshark", jobs=1, progress=False))
    forced = run_batch([str(archive)], Options(out=out, engine="tshark", jobs=1, force=True, progress=False))
    other = run_batch([str(archive)], Options(out=out, engine="tshark", jobs=1, progress=False,
                                              params=Params(idle_threshold=1.0, msl=60.0)))
    assert (first.done, again.done, again.skipped, forced.done, other.done) == (2, 0, 2, 2, 2)
    assert {r.params["msl"] for r in Manifest(out).records.values()} == {60.0}
    assert sorted(Manifest(out).records) == sorted(str(p) for p in archive.iterdir())  # absolute names


# --- units: discovery, names, rotation sets, manifest, progress ---------------------


def _capture(name: str) -> Capture:
    return Capture(Path("/x") / name, name, 1, 1)


@pytest.mark.parametrize(("name", "key"), [
    ("a/web_00001_20240115120000.pcapng", ("a/web_*.pcapng", 1)),
    ("a/web_00002_20240115121000.pcap.gz", ("a/web_*.pcap", 2)),  # older members compressed
    ("a/trace.pcap3.zst", ("a/trace.pcap*", 3)),
    ("a/trace.pcap", ("a/trace.pcap*", 0)),
    ("a/trace.pcap12", ("a/trace.pcap*", 12)),
    ("a/notes.txt", None),
])
def test_rotation_names(name: str, key: tuple[str, int] | None) -> None:
    assert rotation_key(name) == key


def test_rotation_sets_are_grouped_in_order() -> None:
    names = ["a/x.pcap", "a/x.pcap2", "a/x.pcap1", "a/lone.pcap", "b/r_00010_20240101000000.pcap",
             "b/r_00002_20240101000100.pcap", "b/other_00001_20240101000000.pcap"]
    units = group_units([_capture(n) for n in sorted(names)])
    sets = {u.rotation_set: [m.name for m in u.members] for u in units}
    assert sets["a/x.pcap*"] == ["a/x.pcap", "a/x.pcap1", "a/x.pcap2"]
    assert sets["b/r_*.pcap"] == ["b/r_00002_20240101000100.pcap", "b/r_00010_20240101000000.pcap"]
    assert sets[None] != [] and len(units) == 4  # lone.pcap and the one-file "set" other_ stay alone
    assert all(u.rotation_set is None for u in group_units([_capture(n) for n in names], stitch=False))


def test_discovery_recurses_names_stably_and_skips_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "arc" / "2024" / "01" / ".hidden").mkdir(parents=True)
    for rel in ("2024/01/a.pcap", "2024/01/b.pcapng.gz", "2024/c.pcap.zst", "2024/01/.hidden/d.pcap",
                "2024/notes.txt", "2024/01/x.pcap1"):
        (tmp_path / "arc" / rel).write_bytes(b"x")
    names = [c.name for c in discover([str(tmp_path / "arc")], root=tmp_path)]
    assert names == ["arc/2024/01/a.pcap", "arc/2024/01/b.pcapng.gz", "arc/2024/01/x.pcap1", "arc/2024/c.pcap.zst"]
    # Whatever selects a capture (folder, glob, the file, from another directory), its name is the same.
    assert [c.name for c in discover([f"{tmp_path}/arc/**/*.pcap*"], root=tmp_path)] == names
    monkeypatch.chdir(tmp_path / "arc" / "2024")
    assert [c.name for c in discover(["*/a.pcap", "01/a.pcap"], root=tmp_path)] == names[:1]
    assert [c.name for c in discover(["01/a.pcap"])] == [f"{tmp_path}/{names[0]}"]  # no root: absolute
    # The dataset folder itself is never read as input.
    assert [c.name for c in discover([str(tmp_path)], exclude=tmp_path / "arc")] == []


def test_manifest_ignores_a_torn_last_line(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path)
    record = Record(file="a/x.pcap", path="/a/x.pcap", size=1, mtime_ns=2, sha256="00", status="done",
                    parts=[Part("connections/day=2024-01-01/part-x.parquet", 3, 4)])
    manifest.append([record])
    with (tmp_path / "manifest.jsonl").open("a") as fh:
        fh.write('{"file": "a/y.pcap", "status": "do')  # kill -9 mid-write
    reread = Manifest(tmp_path)
    assert reread.get("a/x.pcap") == record and reread.get("a/y.pcap") is None and reread.torn_lines == 1
    reread.append([Record(file="a/y.pcap", path="/a/y.pcap", size=1, mtime_ns=2, sha256="01", status="failed")])
    assert Manifest(tmp_path).get("a/y.pcap").status == "failed"  # not glued to the torn line


def test_part_writer_commits_row_groups_or_leaves_nothing(tmp_path: Path) -> None:
    conns = analyze_file(SAMPLE, Params(), "native")[0]
    relative = "connections/day=2024-01-01/part-x.parquet"
    writer = dataset.PartWriter(tmp_path, relative)
    writer.write(conns.slice(0, 2))
    writer.write(conns.slice(2, 3))
    writer.flush()  # the rows held so far: one row group
    writer.write(conns.slice(5))
    assert not (tmp_path / relative).exists()  # only the temp file until committed
    part = writer.commit()
    assert (part.path, part.rows) == (relative, conns.num_rows)
    written = pq.ParquetFile(tmp_path / relative)
    assert written.metadata.num_row_groups == 2 and written.read().equals(dataset.conform_labels(conns))
    abandoned = dataset.PartWriter(tmp_path, "connections/day=2024-01-01/part-y.parquet")
    abandoned.write(conns)
    abandoned.abandon()
    assert sorted(p.name for p in (tmp_path / relative).parent.iterdir()) == ["part-x.parquet"]


def test_manifest_table_holds_every_record_field(tmp_path: Path) -> None:
    """The Parquet copy of the manifest: what Arrow makes of the records' own values."""
    manifest = Manifest(tmp_path)
    assert manifest.table().equals(MANIFEST_SCHEMA.empty_table())
    done = Record(file="b/x.pcap", path="/b/x.pcap", size=10, mtime_ns=2**62, sha256="ab" * 32, status="done",
                  engine="native", packets=5, connections=2, key_frames=3, truncated=True,
                  warnings=["cut short", 'a "quoted" \\ warning \u00e9'], day="2024-01-01",
                  parts=[Part("connections/day=2024-01-01/part-x.parquet", 3, 4), Part("filters/x.txt", 1, 2)],
                  rotation_set="b/x", set_signature="ff", chunks=4, params={"msl": 30.0, "idle_threshold": 5},
                  version="0.1.0", started="2024-01-01T00:00:00+00:00", finished="2024-01-01T00:00:03+00:00",
                  seconds=3, task_seconds=2.5)
    failed = Record(file="a/y.pcap", path="/a/y.pcap", size=1, mtime_ns=2, sha256=None, status="failed",
                    error="not a capture", exit_code=4)
    manifest.append([done, failed])
    rows = []
    for record in (failed, done):  # sorted by file
        row = dataclasses.asdict(record)
        row["parts"] = [p["path"] for p in row["parts"]]
        row["params"] = json.dumps(row["params"], sort_keys=True)
        rows.append(row)
    expected = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    assert manifest.table().equals(expected)
    assert manifest.table().column("warnings")[1].as_py() == done.warnings


def test_progress_line_has_files_rate_and_eta() -> None:
    import io

    stream = io.StringIO()
    progress = Progress(files=4, total_bytes=1000, enabled=True, stream=stream)
    progress.add(files=1, bytes_done=250, packets=5000)
    progress.refresh(force=True)
    line = stream.getvalue().rsplit("\r", 1)[-1]
    assert "1/4 files" in line and "packets/s" in line and "ETA 0:" in line
    quiet = io.StringIO()
    Progress(files=4, total_bytes=1000, stream=quiet).add(files=1)  # not a terminal: silent
    assert quiet.getvalue() == ""


def test_batch_help_and_bad_input_through_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tcp_teardown.cli import app
    from tcp_teardown.commands import register

    register(app)
    result = CliRunner().invoke(app, ["batch", "--help"])
    assert result.exit_code == 0 and "--chunk-packets" in result.output and "--dask" in result.output
    missing = run_cli("batch", tmp_path / "nowhere", "--out", tmp_path / "ds")
    assert missing.returncode == 3 and "no such file or folder" in missing.stderr
