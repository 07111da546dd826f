"""The run's outputs: tables, filters, a run summary (versions, parameters, inputs, counts)."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path

from tcp_teardown import __version__, filters
from tcp_teardown.api import Tables, summary_counts
from tcp_teardown.output import write_all


def summary(tables: Tables) -> dict:
    """Everything a later reader needs to trust or reproduce the run."""
    conns = tables.connections
    return {
        "tcp_teardown": __version__,
        "tshark": tables.tshark.version_text if tables.tshark else None,
        "python": platform.python_version(),
        "parameters": {"idle_threshold_s": tables.params.idle_threshold, "msl_s": tables.params.msl},
        "inputs": [asdict(f) for f in tables.files],
        "connections": conns.num_rows,
        "key_frames": int(tables.frames.num_rows),
        "counts": summary_counts(conns),
    }


def write_run(out: Path, tables: Tables) -> dict:
    """All output files of one run, each written to a temp name and renamed."""
    label_filters = filters.label_filters(tables.connections, tables.frames)
    run = summary(tables)

    write_all(
        out,
        {
            "connections.parquet": tables.connections,
            "frames.parquet": tables.frames,
            "endpoints.parquet": tables.endpoints,
            "hosts.parquet": tables.hosts,
        },
        {
            "filters.txt": filters.render_text(label_filters),
            "filters.json": json.dumps(filters.as_records(label_filters), indent=1) + "\n",
            "summary.json": json.dumps(run, indent=2, default=str) + "\n",
        },
    )
    return run


def render(run: dict) -> str:
    """A compact human summary: connections per open, close and flag."""
    lines = [f"{run['connections']} connections in {len(run['inputs'])} capture(s)"
             f" ({sum(f['packets'] for f in run['inputs'])} TCP packets)"]
    for kind in ("open", "close", "flags"):
        counts = run["counts"][kind]
        if counts:
            lines.append(f"{kind}:")
            width = max(len(k) for k in counts)
            lines += [f"  {k:<{width}}  {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)
