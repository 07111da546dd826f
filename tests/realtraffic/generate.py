"""Regenerate the real-traffic captures and their expected.json.

    python -m tests.realtraffic.generate OUTDIR [--only NAME ...] [--jobs N]

Run from the repository root, as root, with iproute2 (ip netns), nftables and tcpdump.
Every scenario of tests/realtraffic/scenarios.py runs in its own pair of network
namespaces and writes OUTDIR/<scenario>.pcap; OUTDIR/expected.json gets the labels in
the corpus format (the key frames and packet counts are read off each capture). A
scenario whose capture does not show what it planned (a timer or the scheduler made
the kernel do otherwise) is run again, up to --attempts times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tests.realtraffic.netns import NetnsError, read_pcap, veth_link
from tests.realtraffic.scenarios import SCENARIOS, Conn, Flow, Lab, Scenario, derive_frames, split_connections

TOOLS = ("ip", "tcpdump", "nft")
PARAMETERS = {"idle_threshold_s": 5, "msl_s": 30}


class ScenarioFailed(RuntimeError):
    pass


def requirements_missing() -> str | None:
    """Why captures cannot be generated here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, tcpdump)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return None


def endpoint(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def to_json(value: object, indent: str = "") -> str:
    """JSON with two-space indentation, but short lists of plain values (`flags`) on one
    line, as the corpus writes them."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {to_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    flat = json.dumps(value, ensure_ascii=False)
    if isinstance(value, list) and value and (len(flat) > 80 or not isinstance(value[0], str | int)):
        return "[\n" + ",\n".join(inner + to_json(v, inner) for v in value) + "\n" + indent + "]"
    return flat


def _run_once(index: int, spec: Scenario, pcap: Path) -> list[Conn]:
    with veth_link(index, ipv6=spec.ipv6, sysctls=spec.sysctls) as link:
        lab = Lab(link, index, pcap, capture_side=spec.capture_side, direction=spec.direction)
        try:
            if spec.start_capture:
                lab.capture.start()
            return spec.run(lab)
        finally:
            lab.close()


def _expectation(spec: Scenario, pcap: Path, conns: list[Conn]) -> tuple[dict, list[str]]:
    """The expected.json entry of one capture, and what in the capture contradicts the plan."""
    wire = read_pcap(pcap)
    problems: list[str] = []
    flows: dict[tuple, list[Flow]] = {}
    used: dict[tuple, int] = {}
    rows = []
    for number, conn in enumerate(conns, 1):
        key = (conn.client, conn.server)
        if key not in flows:
            flows[key] = split_connections(wire, conn.client, conn.server)
        index = used.get(key, 0)
        used[key] = index + 1
        if index >= len(flows[key]):
            problems.append(f"connection {number} ({endpoint(conn.client)}) is not in the capture")
            continue
        flow = flows[key][index]
        problems += [f"connection {number}: not true that {what}" for what, test in conn.checks if not test(flow)]
        frames = derive_frames(flow)
        row: dict[str, object] = {
            "client": endpoint(conn.client),
            "server": endpoint(conn.server),
            "roles_guessed": conn.roles_guessed,
            "open": conn.open,
            "close": conn.close,
            "flags": conn.flags,
        }
        row["time_wait_side"] = conn.time_wait_side
        row.update({name: frames[name] for name in conn.frames})
        row.update(conn.fixed)
        if conn.counts:
            row["packets_c2s"] = len(flow.sent("client"))
            row["packets_s2c"] = len(flow.sent("server"))
        if conn.notes:
            row["notes"] = conn.notes
        rows.append(row)
    for key, found in flows.items():
        if len(found) != used[key]:
            problems.append(f"{len(found)} connections on {endpoint(key[0])}, expected {used[key]}")
    covered = sum(len(flow.packets) for found in flows.values() for flow in found)
    if covered != len(wire.packets):
        problems.append(f"{len(wire.packets) - covered} segments belong to no expected connection")
    side = "server" if spec.capture_side == "server" else "client"
    where = f"captured with tcpdump on the {side}'s veth interface"
    if spec.direction:
        where += f", direction {spec.direction!r} only"
    entry = {
        "source": f"tests/realtraffic/scenarios.py: {spec.name}()",
        "notes": [spec.doc, f"Real Linux {platform.release()} TCP endpoints in two network namespaces, {where}."],
        "connections": rows,
    }
    return entry, problems


def run_scenario(index: int, spec: Scenario, outdir: Path, attempts: int) -> tuple[dict, int, float]:
    """Run one scenario until its capture shows the plan; return the entry, the number of
    attempts it took and the seconds the last one took."""
    pcap = outdir / f"{spec.name}.pcap"
    problems: list[str] = []
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        try:
            conns = _run_once(index, spec, pcap)
            entry, problems = _expectation(spec, pcap, conns)
        except (OSError, NetnsError, ValueError) as exc:
            problems = [f"{type(exc).__name__}: {exc}"]
        if not problems:
            return entry, attempt, time.monotonic() - started
    raise ScenarioFailed(f"{spec.name}: {'; '.join(problems)}")


def generate(outdir: Path, names: list[str], *, jobs: int = 4, attempts: int = 3, log=print) -> dict:
    """Run the named scenarios (in parallel, each in its own namespaces) into `outdir` and
    write `outdir/expected.json`. Entries of other scenarios already there are kept."""
    outdir.mkdir(parents=True, exist_ok=True)
    order = list(SCENARIOS)
    # Addresses come from the scenario's place in the registry, so they stay the same
    # when only some scenarios are regenerated.
    indexes = {name: order.index(name) + 1 for name in names}
    entries: dict[str, dict] = {}
    failures: list[str] = []
    # Scenarios that wait for seconds go first, so the pool is not left waiting on them.
    queue = sorted(names, key=lambda name: not SCENARIOS[name].slow)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(run_scenario, indexes[name], SCENARIOS[name], outdir, attempts): name for name in queue}
        try:
            for future in as_completed(futures):
                name = futures[future]
                try:
                    entry, tries, seconds = future.result()
                except ScenarioFailed as exc:
                    failures.append(str(exc))
                    log(f"FAILED  {exc}")
                    continue
                entries[f"{name}.pcap"] = entry
                again = f", attempt {tries}" if tries > 1 else ""
                log(f"ok      {name} ({seconds:.1f} s{again})")
        except BaseException:
            # Interrupted: start nothing new; the running scenarios finish (each step is
            # bounded) and remove their namespaces on the way out of the pool.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    if failures:
        raise ScenarioFailed("; ".join(failures))
    expected_path = outdir / "expected.json"
    files: dict[str, dict] = {}
    if expected_path.exists() and set(names) != set(SCENARIOS):
        files = json.loads(expected_path.read_text())["files"]
    files.update(entries)
    expected = {
        "format": 1,
        "taxonomy": "docs/teardown-taxonomy.md",
        "parameters": PARAMETERS,
        "generator": "python -m tests.realtraffic.generate OUTDIR",
        "files": {f"{name}.pcap": files[f"{name}.pcap"] for name in order if f"{name}.pcap" in files},
    }
    expected_path.write_text(to_json(expected) + "\n")
    return expected


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help="regenerate only these scenarios (expected.json keeps the others)",
    )
    parser.add_argument("--jobs", type=int, default=4, help="scenarios run at once (default 4)")
    parser.add_argument("--attempts", type=int, default=3, help="runs per scenario before giving up")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        for spec in SCENARIOS.values():
            print(f"{spec.name:24} {spec.doc}")
        return 0
    # Termination (a test runner's timeout) unwinds like Ctrl-C, so every namespace,
    # tcpdump and nft table made so far is removed.
    signal.signal(signal.SIGTERM, _interrupt)
    reason = requirements_missing()
    if reason:
        print(f"generate: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        generate(args.outdir, args.only or list(SCENARIOS), jobs=args.jobs, attempts=args.attempts)
    except ScenarioFailed as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("generate: interrupted; namespaces removed", file=sys.stderr)
        return 130
    print(f"generate: {len(args.only or SCENARIOS)} scenario(s) in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
