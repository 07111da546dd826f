"""Soak: many generated captures, faults injected at random, then check nothing was lost.

    .venv/bin/python tools/soak.py [--captures 1000] [--interruptions 8] [--jobs 2]
                                   [--seed 1] [--work DIR] [--mode batch|analyze]

Not part of `make test` (`make soak` runs it). It writes an archive of small captures:
most of them good (pcap, pcapng, gzip; 1 to 12 connections each), the rest broken in
the ways archives are: cut short, corrupt in the middle, empty, not a capture at all,
a header without packets. Then it runs `tcp-teardown batch` over the archive and stops
that run at a random moment with SIGINT, SIGTERM or kill -9 (the whole process group),
again and again, before letting one run finish and one more find nothing left to do.
Without `tcp-teardown batch`, `--mode analyze` does the same with one `analyze` per
capture and a resumable loop (a capture is done when its summary.json is there).

Afterwards, every Parquet file must read back, no temp file may be left, every capture
must have its manifest record with the status its fault calls for, and each good
capture must have exactly the connections it was built with, once. The resident memory
of the driver and of its workers is sampled while the runs go: the figures printed at
the end show whether it stays flat. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.malformed import builders as b  # noqa: E402  (the project's capture builders)

CLI = Path(sys.executable).with_name("tcp-teardown")
CLOSES = ("fin_by_client", "fin_by_server", "fin_simultaneous", "rst_by_client", "rst_by_server",
          "half_closed", "not_closed", "three_way")
# Fault -> share of the archive. "good" captures must come out whole.
FAULTS = {"good": 0.70, "truncated": 0.08, "corrupt": 0.07, "empty": 0.05, "not_a_capture": 0.05,
          "header_only": 0.05}
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


@dataclass
class Made:
    """One generated capture and what the dataset must say about it."""

    path: Path
    fault: str
    connections: int  # as built (before any damage)


@dataclass
class Run:
    """One run of the tool: how it ended and its memory."""

    signal: str | None
    seconds: float
    exit_code: int
    stop_seconds: float | None = None  # from the signal to the end of the process
    driver_rss_mb: list[float] = field(default_factory=list)  # one sample every 0.25 s
    worker_rss_mb: list[float] = field(default_factory=list)  # the largest descendant, same samples


def make_archive(folder: Path, count: int, rng: random.Random) -> list[Made]:
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    faults, weights = zip(*FAULTS.items(), strict=True)
    for i in range(count):
        fault = rng.choices(faults, weights)[0]
        n = rng.randint(1, 12)
        segs: list[b.Seg] = []
        for k in range(n):
            close = rng.choice(CLOSES)
            data = [(rng.choice("cs"), rng.randint(1, 1400)) for _ in range(rng.randint(0, 3))]
            segs += b.conversation(close, client=(f"10.{i % 250}.{k}.1", 30000 + rng.randint(0, 30000)),
                                   server=(f"10.250.{k}.2", rng.choice((22, 80, 443, 8080))),
                                   isn_c=rng.randrange(2**32), isn_s=rng.randrange(2**32),
                                   t0=1_700_000_000.0 + i * 60 + k * 0.5, step=rng.choice((0.001, 0.05, 0.3)),
                                   data=data)
        segs.sort(key=lambda s: s.ts)
        kind = rng.choice(("pcap", "pcapng", "gzip"))
        raw = (b.pcapng_bytes(b.records(b.frames_of(segs))) if kind == "pcapng" else b.pcap_of(segs))
        name = f"s{i:05d}-{fault}.{'pcapng' if kind == 'pcapng' else 'pcap'}"
        if fault == "truncated":
            raw = raw[:rng.randint(len(raw) // 3, len(raw) - 1)]
        elif fault == "corrupt":
            at = rng.randint(len(raw) // 3, 2 * len(raw) // 3)
            raw = raw[:at] + rng.randbytes(64) + raw[at + 64:]
        elif fault == "empty":
            raw = b""
        elif fault == "not_a_capture":
            raw = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n" * rng.randint(1, 50)
        elif fault == "header_only":
            raw, n = (b.pcap_bytes([]) if kind != "pcapng" else b.pcapng_bytes([])), 0
        if kind == "gzip" and fault not in ("empty", "not_a_capture"):
            raw, name = gzip.compress(raw), name + ".gz"
        path = folder / name
        path.write_bytes(raw)
        made.append(Made(path, fault, n))
    return made


# --- memory ----------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Sampler(threading.Thread):
    """RSS of a process and of the largest of its descendants, every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.driver: list[float] = []
        self.worker: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            rss = _rss_mb(self.pid)
            if rss:
                self.driver.append(rss)
                self.worker.append(max((_rss_mb(c) for c in _descendants(self.pid)), default=0.0))


def run_once(command: list[str], stop_after: float | None, sig: signal.Signals | None) -> Run:
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    sent, sent_at = None, 0.0
    if stop_after is not None and sig is not None:
        try:
            proc.wait(timeout=stop_after)
        except subprocess.TimeoutExpired:
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, signal.SIGKILL)  # the driver, its workers and their tshark
            else:
                proc.send_signal(sig)  # as a terminal or a service manager would
            sent, sent_at = sig.name, time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=3600)
    finally:
        sampler.stop.set()
        sampler.join()
    if "Traceback" in stderr:
        raise SystemExit(f"soak: a traceback on stderr:\n{stderr}")
    return Run(signal=sent, seconds=time.monotonic() - start, exit_code=proc.returncode,
               stop_seconds=time.monotonic() - sent_at if sent else None,
               driver_rss_mb=sampler.driver, worker_rss_mb=sampler.worker)


# --- the two modes ---------------------------------------------------------------------------
def soak_batch(made: list[Made], archive: Path, dataset: Path, args: argparse.Namespace,
               rng: random.Random) -> tuple[list[Run], dict]:
    command = [str(CLI), "batch", str(archive), "--out", str(dataset), "--quiet", "--jobs", str(args.jobs)]
    runs = []
    for _ in range(args.interruptions):
        runs.append(run_once(command, rng.uniform(1.0, args.max_delay), rng.choice(SIGNALS)))
        print(f"  run stopped by {runs[-1].signal or 'nothing (it finished)'} after {runs[-1].seconds:.1f} s, "
              f"exit {runs[-1].exit_code}", flush=True)
    runs.append(run_once(command, None, None))
    print(f"  run to the end: {runs[-1].seconds:.1f} s, exit {runs[-1].exit_code}", flush=True)
    problems = check_batch(made, dataset)
    # Everything again in one uninterrupted run: the memory figures come from this one.
    runs.append(run_once([*command, "--force"], None, None))
    print(f"  forced full re-run: {runs[-1].seconds:.1f} s, exit {runs[-1].exit_code}", flush=True)
    again = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=3600, check=False)
    summary = json.loads(again.stdout) if again.stdout.strip().startswith("{") else {}
    return runs, {"rerun_done": summary.get("done"), "rerun_skipped": summary.get("skipped"),
                  "resumed_problems": problems}


def soak_analyze(made: list[Made], archive: Path, dataset: Path, args: argparse.Namespace,
                 rng: random.Random) -> tuple[list[Run], dict]:
    """One `analyze` per capture, some killed and retried: a capture is done once its summary.json is there."""
    runs = []
    kills = set(rng.sample(range(len(made)), min(len(made), args.interruptions * 10)))
    for i, capture in enumerate(made):
        out = dataset / capture.path.name
        command = [str(CLI), "analyze", str(capture.path), "--out", str(out)]
        while not (out / "summary.json").exists():
            killed = i in kills
            kills.discard(i)
            run = run_once(command, rng.uniform(0.2, 2.0) if killed else None,
                           rng.choice(SIGNALS) if killed else None)
            runs.append(run)
            if run.signal is None and run.exit_code not in (0, 6):
                (dataset / "failed").mkdir(parents=True, exist_ok=True)
                (dataset / "failed" / capture.path.name).write_text(str(run.exit_code))
                break
    return runs, {}


# --- checks ----------------------------------------------------------------------------------
def check_batch(made: list[Made], dataset: Path) -> list[str]:
    import pyarrow.parquet as pq

    problems = []
    files = list(dataset.rglob("*.parquet"))
    for path in files:
        try:
            pq.read_table(path)
        except Exception as exc:  # report every unreadable file, whatever the reason
            problems.append(f"unreadable {path}: {exc}")
    problems += [f"temp file left: {p}" for p in dataset.rglob("*.tmp")]
    manifest = {r["file"]: r for r in pq.read_table(dataset / "manifest.parquet").to_pylist()}
    conns = pq.read_table(dataset / "connections", columns=["file", "flow_id"]).to_pandas()
    counts = conns.groupby("file").size().to_dict()
    if conns.duplicated(["file", "flow_id"]).any():
        problems.append(f"{int(conns.duplicated(['file', 'flow_id']).sum())} duplicated rows")
    for capture in made:
        record = manifest.get(str(capture.path))
        rows = counts.get(str(capture.path), 0)
        if record is None:
            problems.append(f"{capture.path.name}: no manifest record")
            continue
        if capture.fault in ("good", "header_only"):
            if record["status"] != "done" or rows != capture.connections:
                problems.append(f"{capture.path.name}: {record['status']}, {rows} rows, built {capture.connections}")
        elif capture.fault in ("truncated", "corrupt"):
            # A cut only removes packets; corrupt bytes inside a header may make another
            # 4-tuple (so more rows): for those, the status and the manifest's count.
            if capture.fault == "truncated" and record["status"] == "done" and rows > capture.connections:
                problems.append(f"{capture.path.name}: {rows} rows from {capture.connections} connections")
            if record["status"] != "done" and record["exit_code"] not in (4, 6, 10):
                problems.append(f"{capture.path.name}: failed with exit {record['exit_code']}")
        elif capture.fault == "empty" and (record["status"], record["exit_code"]) != ("failed", 5):
            problems.append(f"{capture.path.name}: {record['status']} exit {record['exit_code']}, expected 5")
        elif capture.fault == "not_a_capture" and (record["status"], record["exit_code"]) != ("failed", 4):
            problems.append(f"{capture.path.name}: {record['status']} exit {record['exit_code']}, expected 4")
        if record["status"] == "done" and rows != record["connections"]:
            problems.append(f"{capture.path.name}: manifest says {record['connections']} rows, dataset {rows}")
    extra = set(counts) - {str(c.path) for c in made}
    problems += [f"rows of an unknown capture: {name}" for name in sorted(extra)]
    return problems


def check_analyze(made: list[Made], dataset: Path) -> list[str]:
    import pyarrow.parquet as pq

    problems = [f"temp file left: {p}" for p in dataset.rglob(".*.tmp")]
    for capture in made:
        out = dataset / capture.path.name
        if capture.fault in ("empty", "not_a_capture"):
            if (out / "connections.parquet").exists():
                problems.append(f"{capture.path.name}: results for a file that is not a capture")
            continue
        try:
            rows = pq.read_table(out / "connections.parquet").num_rows
        except Exception as exc:  # report every unreadable file, whatever the reason
            problems.append(f"{capture.path.name}: {exc}")
            continue
        if capture.fault in ("good", "header_only") and rows != capture.connections:
            problems.append(f"{capture.path.name}: {rows} rows, built {capture.connections}")
        if capture.fault == "truncated" and rows > capture.connections:
            problems.append(f"{capture.path.name}: {rows} rows from {capture.connections} connections")
    return problems


def _thirds(samples: list[float]) -> tuple[float, float] | None:
    """Median of the first and of the last third of `samples` (None if too few)."""
    if len(samples) < 6:
        return None
    third = len(samples) // 3
    return statistics.median(samples[:third]), statistics.median(samples[-third:])


def memory_report(runs: list[Run]) -> tuple[list[str], bool]:
    """Flat: in the last run (the forced full re-run), the last third of its samples is not above
    the first third (by more than half, plus 64 MB of noise), for the driver and the workers."""
    lines, flat = [], True
    final = runs[-1]
    workers = [w for w in final.worker_rss_mb if w > 0]
    for who, samples in (("driver", final.driver_rss_mb), ("largest worker", workers)):
        split = _thirds(samples)
        if split is None:
            continue
        first, last = split
        flat = flat and last <= first * 1.5 + 64
        lines.append(f"{who} RSS in the final run: median {first:.0f} MB in its first third, {last:.0f} MB "
                     f"in its last third, peak {max(samples):.0f} MB ({len(samples)} samples)")
    peaks = [(max(r.driver_rss_mb, default=0), max(r.worker_rss_mb, default=0)) for r in runs]
    lines.append("peak RSS per run (driver/worker): " + ", ".join(f"{d:.0f}/{w:.0f}" for d, w in peaks) + " MB")
    return lines, flat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captures", type=int, default=1000)
    parser.add_argument("--interruptions", type=int, default=8, help="runs stopped at a random moment")
    parser.add_argument("--max-delay", type=float, default=20.0, help="latest moment to stop a run (s)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, help="keep the archive and dataset here (default: a temp folder)")
    parser.add_argument("--mode", choices=("auto", "batch", "analyze"), default="auto")
    args = parser.parse_args(argv)

    # A run started in the background inherits SIGINT ignored, and passes that on: the
    # runs under test must get Ctrl-C as a terminal would deliver it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mode = args.mode
    if mode == "auto":
        has_batch = subprocess.run([str(CLI), "batch", "--help"], capture_output=True, check=False).returncode == 0
        mode = "batch" if has_batch else "analyze"
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="tcp-teardown-soak-"))
    archive, dataset = work / "archive", work / "dataset"
    shutil.rmtree(dataset, ignore_errors=True)
    started = time.monotonic()
    made = make_archive(archive, args.captures, rng)
    faults = {f: sum(m.fault == f for m in made) for f in FAULTS}
    print(f"soak ({mode}): {len(made)} captures in {archive} ({time.monotonic() - started:.1f} s): "
          + ", ".join(f"{n} {f}" for f, n in faults.items()), flush=True)
    runs, extra = (soak_batch if mode == "batch" else soak_analyze)(made, archive, dataset, args, rng)
    problems = check_batch(made, dataset) if mode == "batch" else check_analyze(made, dataset)
    problems += [f"after resuming: {p}" for p in extra.get("resumed_problems", [])]
    if mode == "batch" and extra.get("rerun_done"):
        problems.append(f"a re-run after completion still did {extra['rerun_done']} captures")
    for run in runs:
        if run.signal in ("SIGINT", "SIGTERM"):
            if run.exit_code != 130:
                problems.append(f"a run given {run.signal} ended with exit {run.exit_code}, not 130")
            if run.stop_seconds is not None and run.stop_seconds > 30:
                problems.append(f"a run took {run.stop_seconds:.0f} s to stop after {run.signal}")
    memory, flat = memory_report(runs)
    stopped = [r for r in runs if r.signal]
    expected_rows = sum(m.connections for m in made if m.fault in ("good", "header_only"))
    print(f"runs: {len(runs)} ({len(stopped)} stopped: "
          + ", ".join(f"{s.name} x{sum(r.signal == s.name for r in stopped)}" for s in SIGNALS) + "); "
          "seconds from signal to exit: " + ", ".join(f"{r.stop_seconds:.1f}" for r in stopped))
    print(f"connections built in good captures: {expected_rows}; "
          f"wall time {time.monotonic() - started:.0f} s")
    for line in memory:
        print(line)
    print(f"memory flat: {'yes' if flat else 'NO'}")
    for problem in problems[:50]:
        print(f"PROBLEM: {problem}")
    print("soak: OK" if not problems and flat else f"soak: FAILED ({len(problems)} problems)")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not problems and flat else 1


if __name__ == "__main__":
    sys.exit(main())
