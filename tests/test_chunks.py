"""Large captures in pieces: the same connections table as a whole-file run, bounded memory.

Two levels:
- in-process: one tshark read of a capture, cut into tiny pieces (a few packets), regrouped
  by 4-tuple and analyzed bucket by bucket: every column equals the whole-file analysis,
  tcp.stream included (recomputed with tshark's rule, compared with tshark's own numbers);
- end to end: `batch` with `editcap -c` chunks read by tshark in a process pool, for a
  large synthetic capture and for a rotation set whose members are themselves split.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tcp_teardown import filters
from tcp_teardown.analysis import analyze_packets
from tcp_teardown.batch import Options, chunks, dataset, run_batch, stitch
from tcp_teardown.batch.manifest import Manifest
from tcp_teardown.batch.synth import replicate
from tcp_teardown.facts import Params
from tcp_teardown.ingest import read_packet_table
from tcp_teardown.tshark import find_tshark
from tests.conftest import CLI, SAMPLE, SEEDS, needs_tshark
from tests.test_batch import REAL, analyze_reference, assert_same_rows, canonical, read_kind, split_into_members

SHARED_TRACES = SEEDS.parent / "zeek" / "traces"
# Captures where 4-tuples come back (port reuse, TIME_WAIT challenges, retried SYNs),
# where the connection split and tcp.stream numbering are hardest to get right.
CASES = [SAMPLE, SEEDS / "seed_all_in_one.pcap", SEEDS / "seed004_time_wait_port_reuse.pcap",
         *(REAL / f"{n}.pcap" for n in ("port_reuse_time_wait", "time_wait_challenge", "syn_retransmitted",
                                        "refused", "one_direction_only", "midstream")),
         SHARED_TRACES / "tunnels" / "Teredo.pcap", SHARED_TRACES / "tcp" / "rst-inject-rae.pcap",
         SHARED_TRACES / "tcp" / "handshake-reorder.pcap", SHARED_TRACES / "tcp" / "syn-then-ack-then-rst.pcap"]


def synthetic(path: Path, copies: int, spacing_s: float, same_addresses: int = 1) -> Path:
    replicate(SAMPLE, path, copies, spacing_s, same_addresses)
    return path


def chunked_in_process(packets: pa.Table, name: str, root: Path, piece_rows: int,
                       buckets: int) -> tuple[pa.Table, pa.Table]:
    """Cut a packet table into pieces, bucket them, analyze and finish as `batch` does."""
    scratch = root / "scratch"
    scratch.mkdir(parents=True)
    pieces = []
    for i, start in enumerate(range(0, packets.num_rows, piece_rows)):
        target = scratch / f"piece-{i}.arrow"
        chunks.write_buckets(packets.slice(start, piece_rows), buckets, target)
        pieces.append(str(target))
    results = [stitch.analyze_bucket(stitch.BucketSpec(b, (b,), tuple(pieces), frozenset({0}), Params(),
                                                       str(scratch))) for b in range(buckets)]
    openers = np.unique(np.concatenate([r.openers for r in results]))
    stitch.finish(stitch.FinishSpec(str(root / "ds"), (stitch.MemberInfo(name, "2000-01-01"),),
                                    tuple((r.connections_path, r.frames_path) for r in results), openers))
    return read_kind(root / "ds", "connections"), read_kind(root / "ds", "frames")


@needs_tshark
@pytest.mark.parametrize("capture", [c for c in CASES if c.exists()], ids=lambda p: p.stem)
def test_tiny_pieces_equal_the_whole_file(capture: Path, tmp_path: Path) -> None:
    packets = read_packet_table(capture, "tshark", find_tshark())
    whole = analyze_packets(packets, "x", Params())
    conns, frames = chunked_in_process(packets, "x", tmp_path, piece_rows=5, buckets=3)
    assert_same_rows(conns, whole.connections, "connections")
    assert_same_rows(frames, whole.frames, "frames")
    assert_same_filters(tmp_path / "ds", "x", whole.connections, whole.frames)


@needs_tshark
@pytest.mark.parametrize(("open_parts", "held_rows", "row_groups"), [
    (stitch.MAX_OPEN_PARTS, stitch.FINISH_HELD_ROWS, [1]),  # one part, its rows written at the end
    (stitch.MAX_OPEN_PARTS, 0, [3]),  # rows written after every bucket: a row group each
    (1, stitch.FINISH_HELD_ROWS, [1, 1, 1]),  # too many captures to keep parts open: a part per bucket
], ids=["part per capture", "row group per bucket", "part per bucket"])
def test_parts_per_capture_or_per_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_parts: int,
                                         held_rows: int, row_groups: list[int]) -> None:
    """A capture's rows go to one part per kind, written as they add up (past
    FINISH_HELD_ROWS held, after a bucket); past MAX_OPEN_PARTS open files, to a part per
    bucket. Either way the rows are those of the whole file."""
    monkeypatch.setattr(stitch, "MAX_OPEN_PARTS", open_parts)
    monkeypatch.setattr(stitch, "FINISH_HELD_ROWS", held_rows)
    packets = read_packet_table(SAMPLE, "tshark", find_tshark())
    whole = analyze_packets(packets, "x", Params())
    conns, frames = chunked_in_process(packets, "x", tmp_path, piece_rows=5, buckets=3)
    assert_same_rows(conns, whole.connections, "connections")
    assert_same_rows(frames, whole.frames, "frames")
    parts = sorted((tmp_path / "ds" / "connections").rglob("*.parquet"))
    groups = [pq.ParquetFile(p).metadata.num_row_groups for p in parts]
    assert groups == row_groups, (parts, groups)


@needs_tshark
def test_recurring_4_tuples_across_many_pieces(tmp_path: Path) -> None:
    # Copies in groups of 8 share addresses and ISNs, 7 s apart: connections merge across
    # pieces, ports are reused within 2·MSL, and tshark opens and reuses conversations.
    capture = synthetic(tmp_path / "recurring.pcap", 96, 7.0, same_addresses=8)
    packets = read_packet_table(capture, "tshark", find_tshark())
    whole = analyze_packets(packets, "x", Params())
    conns, frames = chunked_in_process(packets, "x", tmp_path, piece_rows=997, buckets=5)
    assert_same_rows(conns, whole.connections, "connections")
    assert_same_rows(frames, whole.frames, "frames")
    flags = set(whole.connections.column("flags").combine_chunks().flatten().to_pylist())
    assert {"port_reuse_time_wait", "syn_retransmitted"} <= flags


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[tuple[str, Path]]]:
    """An archive with one large capture and a rotation set of three large members
    (the second gzipped, the third zstd: editcap reads the one, is fed the other)."""
    if shutil.which("editcap") is None or shutil.which("tshark") is None:
        pytest.skip("tshark and editcap are needed")
    base = tmp_path_factory.mktemp("large")
    archive = base / "archive"
    (archive / "ring").mkdir(parents=True)
    big = synthetic(archive / "big.pcap", 90, 0.4, same_addresses=3)  # ~11k packets
    source = synthetic(base / "ring-source.pcap", 70, 0.5, same_addresses=2)  # ~8.6k packets
    plain = base / "ring-plain"
    plain.mkdir()
    subprocess.run(["editcap", "-F", "pcap", "-c", "3000", str(source), str(plain / "r.pcap")],
                   check=True, capture_output=True)
    members = sorted(plain.glob("r_*.pcap"))
    assert len(members) == 3
    ring = []  # (dataset name, plain copy for the reference)
    for i, member in enumerate(members):
        data = member.read_bytes()
        name = member.name + ("", ".gz", ".zst")[i]
        if i == 1:
            data = gzip.compress(data)
        elif i == 2:
            import zstandard

            data = zstandard.ZstdCompressor().compress(data)
        (archive / "ring" / name).write_bytes(data)
        ring.append((f"archive/ring/{name}", member))
    return big, source, ring


@needs_tshark
def test_large_capture_and_split_rotation_set_equal_whole_runs(large: tuple[Path, Path, list[tuple[str, Path]]],
                                                              tmp_path: Path) -> None:
    big, source, ring = large
    archive = big.parent
    summary = run_batch([str(archive)], Options(out=tmp_path / "ds", engine="tshark", jobs=2, chunk_packets=2000,
                                                root=archive.parent, progress=False))
    assert not summary.failed and summary.rotation_sets == 1
    records = Manifest(tmp_path / "ds").records
    assert records["archive/big.pcap"].chunks >= 5  # editcap pieces of 2000 frames
    assert all(records[name].chunks >= 2 for name, _ in ring), {n: records[n].chunks for n, _ in ring}
    big_conns, big_frames = analyze_reference(big, "archive/big.pcap")
    ring_conns, ring_frames = split_into_members(*analyze_reference(source, "whole"), ring, 3000)
    conns = read_kind(tmp_path / "ds", "connections")
    frames = read_kind(tmp_path / "ds", "frames")
    assert_same_rows(conns, pa.concat_tables([canonical(big_conns), canonical(ring_conns)]), "connections")
    assert_same_rows(frames, pa.concat_tables([canonical(big_frames), canonical(ring_frames)]), "frames")


@pytest.mark.skipif(importlib.util.find_spec("tcp_teardown.native") is None,
                    reason="the native reader is not installed")
def test_native_batches_as_pieces_equal_the_whole_file(large: tuple[Path, Path, list[tuple[str, Path]]],
                                                       tmp_path: Path) -> None:
    big = large[0]
    single = tmp_path / "in"
    single.mkdir()
    shutil.copyfile(big, single / "big.pcap")
    summary = run_batch([str(single)], Options(out=tmp_path / "ds", engine="native", jobs=2, chunk_packets=1500,
                                               root=tmp_path, progress=False))
    assert not summary.failed and summary.pieces >= 7
    conns, frames = analyze_reference(single / "big.pcap", "in/big.pcap", engine="native")
    assert_same_rows(read_kind(tmp_path / "ds", "connections"), conns, "connections")
    assert_same_rows(read_kind(tmp_path / "ds", "frames"), frames, "frames")
    assert_same_filters(tmp_path / "ds", "in/big.pcap", conns, frames)


def assert_same_filters(root: Path, name: str, conns: pa.Table, frames: pa.Table) -> None:
    """The filters a stitched run writes, bucket by bucket, are those of the whole file."""
    written = (root / dataset.filters_path(name)).read_text(encoding="utf-8")
    assert written == filters.render_text(filters.label_filters(conns, frames))
    assert "tcp.stream in {" in written and "frame.number in {" in written


def _high_water_mb(process: object) -> float:
    """The process's peak RSS so far (VmHWM): a sample catches peaks between samples too."""
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
    except OSError:
        return process.memory_info().rss / 2**20
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return kib / 1024 if kib is not None else process.memory_info().rss / 2**20


def peak_by_role(*cmd: str | Path) -> dict[str, float]:
    """Peak RSS (MB) per kind of process of a command, sampled every 20 ms: the Python that
    analyzes (the CLI itself, or a pool worker) and tshark."""
    psutil = pytest.importorskip("psutil")
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peaks: dict[str, float] = {}
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):  # processes come and go while we look
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    argv = p.cmdline()
                    kind = ("tshark" if argv and Path(argv[0]).name == "tshark" else
                            "worker" if any("spawn_main" in a for a in argv) else "driver" if p == root else "")
                    if kind:
                        peaks[kind] = max(peaks.get(kind, 0.0), _high_water_mb(p))
        time.sleep(0.02)
    assert proc.returncode == 0
    return peaks


@needs_tshark
def test_peak_memory_follows_the_chunk_size_not_the_file_size(tmp_path: Path) -> None:
    """Ten times the packets: read whole, tshark's peak and the analyzing Python's peak grow;
    read in chunks, tshark's peak stays where the chunk size puts it, and so (less the noise
    of a long-lived worker process) does a worker's. The driver is not compared: its final
    dataset-wide endpoint aggregation grows with connections, not packets.
    bench/bench_chunks.py measures the same at 2M packets.
    """
    small = synthetic(tmp_path / "small.pcap", 250, 0.02)  # ~31k packets
    large = synthetic(tmp_path / "large.pcap", 2500, 0.02)  # ~308k packets
    runs = {}
    for capture in (small, large):
        runs["whole", capture.stem] = peak_by_role(CLI, "analyze", capture, "--out", tmp_path / f"w-{capture.stem}",
                                                   "--engine", "tshark")
        runs["chunked", capture.stem] = peak_by_role(CLI, "batch", capture, "--out", tmp_path / f"c-{capture.stem}",
                                                     "--engine", "tshark", "--chunk-packets", "15000", "--jobs", "2",
                                                     "-q")

    def growth(mode: str, role: str) -> float:
        return runs[mode, "large"][role] - runs[mode, "small"][role]

    message = f"peak MB by run and process: {runs}"
    assert growth("whole", "tshark") > 24, message  # ~0.15 KB a packet over its ~160 MB start
    assert abs(growth("chunked", "tshark")) < 5, message
    assert growth("whole", "driver") > 30, message  # the CLI that holds the whole packet table
    assert growth("chunked", "worker") < growth("whole", "driver"), message
    assert runs["chunked", "large"]["worker"] < runs["whole", "large"]["driver"], message
