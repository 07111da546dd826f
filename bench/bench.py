"""Benchmark: our pipeline with each engine against bare tshark EK, tcptrace and NFStream.

    python bench/bench.py [--capture FILE] [--packets 2000000] [--workdir /tmp/tcp-teardown-bench]
                          [--tshark-packets 500000] [--cores 0] [--repeat 5]
                          [--nfstream-python PY]

Everything runs in one go on the same capture, each tool as its own process pinned to one
core (`taskset`; `batch` runs its driver and its one worker there), and the table prints
packets/s, peak RSS and the ratios against bare `tshark -T ek` (the same fields our
tshark engine asks for) and against tcptrace, so the figures hold even when the
machine's speed drifts between runs. The fast commands (our native engine, batch,
tcptrace) run in turn, round after round, and the last line gives the native engine's
speed over tcptrace's round by round (the median, and the range): the steadiest figure.

Without --capture, the workload is real kernel traffic: short HTTP-like connections
between two network namespaces, captured with tcpdump (needs root, ip, tcpdump); it is
kept in --workdir for the next run. tshark is slow, so the bare-tshark and tshark-engine
rows run on the first --tshark-packets packets and are scaled per packet.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def count_packets(path: Path) -> int:
    """Records of a classic little/big-endian pcap (the workload is always one)."""
    data = path.read_bytes()
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    at, count = 24, 0
    while at + 16 <= len(data):
        at += 16 + struct.unpack_from(order + "I", data, at + 8)[0]
        count += 1
    return count


def head(path: Path, packets: int, out: Path) -> Path:
    subprocess.run(["editcap", "-F", "pcap", "-r", str(path), str(out), f"1-{packets}"], check=True)
    return out


def real_workload(path: Path, packets: int) -> Path:
    """Short request/response connections between two namespaces, captured by tcpdump."""
    from tests.realtraffic.netns import Capture, socket_in, veth_link

    # SYN, SYN-ACK, ACK, request, ACK, response, FIN, ACK, FIN, ACK: about ten a connection.
    # Client ports wrap around the ephemeral range, so the server's TIME_WAIT sees reuse.
    connections = packets // 10 + 1
    with veth_link(240) as link:
        server = socket_in(link.server.ns, link.family)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((link.server.ip, 8080))
        server.listen(4096)

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:  # HTTP/1.0 without keep-alive: the server closes first
                    conn.recv(512)
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

        threading.Thread(target=serve, daemon=True).start()
        with Capture(link.client, path):
            for _ in range(connections):
                client = socket_in(link.client.ns, link.family)
                client.connect((link.server.ip, 8080))
                client.sendall(b"GET / HTTP/1.0\r\n\r\n")
                while client.recv(512):
                    pass
                client.close()
        server.close()
    return path


def measure(name: str, argv: list[str], packets: int, cores: str, repeat: int = 1) -> dict:
    """Best wall time (of `repeat` runs) and peak RSS of one command and its children,
    pinned to `cores`. The best run is the one least disturbed by the rest of the machine."""
    return _best([_run(name, argv, packets, cores) for _ in range(max(repeat, 1))])


def measure_in_turn(commands: list[tuple[str, list[str], int]], cores: str, repeat: int) -> list[dict]:
    """`measure` for several commands run in turn (A B C A B C ...): a drift of the
    machine's speed touches each alike. Each result keeps its runs' wall times by round."""
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in commands}
    for _ in range(max(repeat, 1)):
        for name, argv, packets in commands:
            runs[name].append(_run(name, argv, packets, cores))
    return [_best(r) | {"walls": [run["wall"] for run in r]} for r in runs.values()]


def _best(runs: list[dict]) -> dict:
    best = min(runs, key=lambda r: r["wall"])
    return best | {"rss_mib": max(r["rss_mib"] for r in runs), "runs": len(runs)}


def paired_ratio(ours: dict, theirs: dict) -> tuple[float, float, float]:
    """Median, min and max over rounds of their wall time over ours (how many times as fast)."""
    ratios = sorted(t / o for o, t in zip(ours["walls"], theirs["walls"], strict=True))
    return statistics.median(ratios), ratios[0], ratios[-1]


def _run(name: str, argv: list[str], packets: int, cores: str) -> dict:
    if shutil.which("taskset"):
        argv = ["taskset", "-c", cores, *argv]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 6):
        print(f"{name}: exit {code}: {err.strip()[-300:]}", file=sys.stderr)
    return {"name": name, "wall": wall, "packets": packets, "rate": packets / wall,
            "rss_mib": usage.ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", type=Path)
    parser.add_argument("--packets", type=int, default=2_000_000)
    parser.add_argument("--tshark-packets", type=int, default=500_000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tcp-teardown-bench")
    parser.add_argument("--cores", default="0", help="CPU list for taskset (one core by default)")
    parser.add_argument("--nfstream-python", help="a Python that has NFStream (default: this one)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs of each fast command (our native engine, batch, tcptrace); the best counts")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    capture = args.capture
    if capture is None:
        capture = args.workdir / f"kernel-{args.packets}.pcap"
        if not capture.exists():
            if os.geteuid() != 0 or not shutil.which("tcpdump"):
                print("no --capture given and cannot make real traffic (needs root and tcpdump)", file=sys.stderr)
                return 2
            print(f"generating {args.packets} packets of real kernel traffic in {capture} ...", file=sys.stderr)
            parts: list[Path] = []
            while sum(count_packets(p) for p in parts) < args.packets:
                missing = args.packets - sum(count_packets(p) for p in parts)
                parts.append(real_workload(args.workdir / f"part-{len(parts)}.pcap", missing))
            subprocess.run(["mergecap", "-a", "-F", "pcap", "-w", str(capture), *map(str, parts)], check=True)
            for part in parts:
                part.unlink()
    total = count_packets(capture)
    sample = head(capture, min(args.tshark_packets, total), args.workdir / "sample.pcap")
    sample_packets = count_packets(sample)
    cli = str(Path(sys.executable).with_name("tcp-teardown"))
    import tcp_teardown
    from tcp_teardown.tshark import ek_command, find_tshark

    # Measured as installed: pip compiles an installed package's bytecode, an editable
    # checkout run with PYTHONDONTWRITEBYTECODE would compile every module on every run.
    compileall.compile_dir(Path(tcp_teardown.__file__).parent, quiet=1)

    out = args.workdir / "out"
    fast = [
        ("tcp-teardown (native engine)", [cli, "analyze", str(capture), "--out", str(out / "n"), "--engine", "native"],
         total),
        # The archive path: one worker process, the capture read in pieces of 500k packets
        # that are bucketed by 4-tuple, analyzed and stitched (--force: redone every run).
        ("tcp-teardown batch (1 worker)", [cli, "batch", str(capture), "--out", str(out / "b"), "-j", "1",
                                           "--engine", "native", "--force", "-q"], total),
    ]
    if shutil.which("tcptrace"):
        fast.append(("tcptrace -n", ["tcptrace", "-n", str(capture)], total))
    else:
        print("tcptrace not installed (apt-get install tcptrace): row skipped", file=sys.stderr)
    timed = measure_in_turn(fast, args.cores, args.repeat)
    rows = [
        *timed[:2],
        measure("tcp-teardown (tshark engine)", [cli, "analyze", str(sample), "--out", str(out / "t"),
                                                  "--engine", "tshark"], sample_packets, args.cores),
        measure("bare tshark -T ek", ek_command(find_tshark(), str(sample)), sample_packets, args.cores),
        *timed[2:],
    ]
    nfstream_python = args.nfstream_python or sys.executable
    probe = subprocess.run([nfstream_python, "-c", "import nfstream"], capture_output=True, check=False)
    if probe.returncode == 0:
        code = f"import nfstream; nfstream.NFStreamer(source={str(capture)!r}, n_meters=1).to_pandas()"
        rows.append(measure("NFStream", [nfstream_python, "-c", code], total, args.cores))
    else:
        print("NFStream not installed (pip install nfstream, or --nfstream-python PY): row skipped", file=sys.stderr)
    base = next(r for r in rows if r["name"].startswith("bare tshark"))
    trace = next((r for r in rows if r["name"].startswith("tcptrace")), None)
    print(f"capture: {capture} ({total} packets; tshark rows on the first {sample_packets}); "
          f"one core: {args.cores}; best of {args.repeat} runs for the native engine, batch and tcptrace")
    print(f"{'tool':32} {'packets/s':>12} {'peak RSS MiB':>13} {'x bare tshark':>14} {'x tcptrace':>11}")
    for r in rows:
        vs_trace = f"{r['rate'] / trace['rate']:.2f}" if trace else "-"
        print(f"{r['name']:32} {r['rate']:12,.0f} {r['rss_mib']:13.0f} {r['rate'] / base['rate']:14.1f} {vs_trace:>11}")
    if trace:
        median, low, high = paired_ratio(rows[0], trace)
        print(f"native engine vs tcptrace, run in turn: {median:.2f}x as fast (median of {len(trace['walls'])} "
              f"rounds; {low:.2f}-{high:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
