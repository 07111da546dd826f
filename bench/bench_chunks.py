"""Peak memory and time of a large capture: whole-file `analyze` vs chunked `batch`.

    python bench/bench_chunks.py [--packets 2000000] [--chunk-packets 250000] [--jobs 2]
                                 [--engine tshark] [--workdir /tmp] [--keep]

The capture is samples/teardowns.pcap (123 packets, 14 connections) replicated with
shifted IPv4 addresses and timestamps (tcp_teardown.batch.synth): copies overlap in time
like real traffic. It is written to a temporary folder and deleted afterwards.

Each run is a child process. Two figures per run:
  largest  the peak RSS of the largest single process (driver, worker or tshark), from
           getrusage(RUSAGE_CHILDREN) of a wrapper process;
  total    the peak of the summed RSS of the whole process tree, sampled every 0.1 s
           (the chunked run has several workers at once), and the largest sampled RSS
           of each role: driver, pool worker, tshark.
The connection counts of both runs are compared, so the figures are for the same work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "teardowns.pcap"
CLI = Path(sys.executable).with_name("tcp-teardown")
# Runs the command and prints the peak RSS (KiB) of its largest descendant: ru_maxrss of
# RUSAGE_CHILDREN covers every waited-for descendant, and each process waits for its own.
WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    if cmdline and Path(cmdline[0]).name == "tshark":
        return "tshark"
    if "spawn_main" in text:
        return "worker"
    return "driver" if "tcp-teardown" in text else "other"


def measure(cmd: list[str]) -> dict[str, float]:
    """Wall time, largest-process peak and whole-tree peak RSS of a command, in MB."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, *cmd], stdout=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    tree_peak = 0
    by_role: dict[str, int] = {}
    while proc.poll() is None:
        total = 0
        with contextlib.suppress(psutil.Error):  # the tree changes while we walk it
            for p in parent.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss = p.memory_info().rss
                    total += rss
                    kind = role(p.cmdline())
                    by_role[kind] = max(by_role.get(kind, 0), rss)
        tree_peak = max(tree_peak, total)
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode not in (0, 6):
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    largest_kib = int(out.strip().splitlines()[-1])
    return {"seconds": time.monotonic() - started, "largest_mb": largest_kib / 1024, "total_mb": tree_peak / 2**20,
            **{f"{kind}_mb": rss / 2**20 for kind, rss in sorted(by_role.items()) if kind != "other"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=2_000_000)
    parser.add_argument("--chunk-packets", type=int, default=250_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--engine", default="tshark", choices=["tshark", "native", "auto"])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep the capture and outputs")
    args = parser.parse_args()

    from tcp_teardown.batch.synth import replicate

    work = Path(tempfile.mkdtemp(prefix="bench-chunks-", dir=args.workdir))
    try:
        capture = work / "big.pcap"
        copies = max(args.packets // 123, 1)
        started = time.monotonic()
        # 0.02 s between copies: ~5,000 copies (70,000 connections) overlap at any time.
        packets = replicate(SAMPLE, capture, copies, spacing_s=0.02)
        print(f"capture: {packets} packets, {capture.stat().st_size / 2**20:.0f} MB "
              f"(made in {time.monotonic() - started:.1f} s)")
        whole = measure([str(CLI), "analyze", str(capture), "--out", str(work / "whole"),
                         "--engine", args.engine])
        chunked = measure([str(CLI), "batch", str(capture), "--out", str(work / "dataset"), "--engine", args.engine,
                           "--chunk-packets", str(args.chunk_packets), "--jobs", str(args.jobs), "--quiet"])
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        whole_rows = pq.read_metadata(work / "whole" / "connections.parquet").num_rows
        chunked_rows = ds.dataset(work / "dataset" / "connections", format="parquet").count_rows()
        manifest = pq.read_table(work / "dataset" / "manifest.parquet").to_pylist()[0]
        rows = [("whole file", whole), (f"chunked ({manifest['chunks']} pieces, {args.jobs} jobs)", chunked)]
        print(f"{'run':<32} {'time s':>8} {'largest MB':>11} {'total MB':>9}   largest by role (MB)")
        for name, r in rows:
            roles = ", ".join(f"{k[:-3]} {v:.0f}" for k, v in r.items() if k[:-3] in ("driver", "worker", "tshark"))
            print(f"{name:<32} {r['seconds']:>8.1f} {r['largest_mb']:>11.0f} {r['total_mb']:>9.0f}   {roles}")
        print(f"ratio whole/chunked: largest process {whole['largest_mb'] / chunked['largest_mb']:.1f}x, "
              f"process tree {whole['total_mb'] / chunked['total_mb']:.1f}x, "
              f"time {whole['seconds'] / chunked['seconds']:.2f}x")
        print(f"connections: whole {whole_rows}, chunked {chunked_rows}"
              f" ({'same' if whole_rows == chunked_rows else 'DIFFERENT'})")
        print(json.dumps({"packets": packets, "chunk_packets": args.chunk_packets, "jobs": args.jobs,
                          "engine": args.engine, "whole": whole, "chunked": chunked}))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept in {work}")


if __name__ == "__main__":
    main()
