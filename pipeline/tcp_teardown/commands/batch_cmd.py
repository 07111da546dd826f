"""`tcp-teardown batch`: a whole archive of captures into one Parquet dataset.

Heavy imports (pandas, pyarrow, dask) happen inside the command so `--help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tcp_teardown.cli import fail
from tcp_teardown.commands.options import AsJson, Engine, EngineOption, IdleThreshold, Msl, TsharkPath
from tcp_teardown.errors import TeardownError

DEFAULT_CHUNK_PACKETS = 500_000  # runner.DEFAULT_CHUNK_PACKETS, repeated to keep --help light


def batch(
    inputs: Annotated[list[str], typer.Argument(
        metavar="DIR|GLOB...",
        help="Folders (searched recursively for .pcap, .pcapng, .gz, .zst), globs such as "
             "'archive/**/*.pcap', or capture files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The dataset folder (created; re-runs add to it).")],
    root: Annotated[Path | None, typer.Option(
        help="Name captures (the `file` column, the manifest) by their path relative to this folder "
             "instead of their absolute path: the dataset then survives moving the archive.")] = None,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", min=1, help="Worker processes (default: every core).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo captures the manifest says are done.")] = False,
    stitch: Annotated[bool, typer.Option(
        help="Analyze a rotation set (x_00001_<time>.pcap ..., x.pcap x.pcap1 ...) as one capture, "
             "so connections that cross files come out whole.")] = True,
    chunk_packets: Annotated[int, typer.Option(
        min=0, help="Read a capture larger than this many packets in pieces of this many, in parallel "
                    "(bounds memory per worker; 0: never split).")] = DEFAULT_CHUNK_PACKETS,
    dask: Annotated[str | None, typer.Option(
        metavar="SCHEDULER_ADDRESS",
        help="Run the tasks on a Dask cluster (archive and dataset on shared storage); "
             "'local' starts a LocalCluster.")] = None,
    idle_threshold: IdleThreshold = 5.0,
    msl: Msl = 30.0,
    engine: EngineOption = Engine.AUTO,
    tshark: TsharkPath = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress line.")] = False,
    as_json: AsJson = False,
) -> None:
    """Label every TCP connection of an archive into a hive-partitioned Parquet dataset.

    A manifest in the dataset records every capture (size, time, SHA-256, status, error, timings, counts): a re-run skips what is done, retries what failed, and resumes after a crash with each capture's rows exactly once.
    """  # noqa: E501 (one line: the help text is reflowed to the terminal)
    from tcp_teardown.batch import Options, run_batch
    from tcp_teardown.facts import Params

    options = Options(out=out, params=Params(idle_threshold, msl), engine=str(engine), tshark=tshark,
                      jobs=jobs, force=force, stitch=stitch, chunk_packets=chunk_packets, dask=dask,
                      root=root, progress=False if quiet else None)
    try:
        summary = run_batch(inputs, options)
    except TeardownError as error:
        raise fail(error) from None
    typer.echo(json.dumps(summary.as_dict(), indent=2) if as_json else summary.render())
    if summary.exit_code:
        raise typer.Exit(code=summary.exit_code)


def register(app: typer.Typer) -> None:
    """Attach `batch` to the main app (called from tcp_teardown.commands)."""
    app.command("batch")(batch)
