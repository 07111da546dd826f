"""The `tcp-teardown` command line: thin, one function per command.

Heavy imports (pandas, pyarrow) happen inside the commands so `--help` is instant.
Every failure the user can act on is one line on stderr and a documented exit code
(tcp_teardown.errors.ExitCode); never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from tcp_teardown.commands.options import AsJson, Engine, EngineOption, IdleThreshold, Msl, TsharkPath
from tcp_teardown.errors import ExitCode, TeardownError, one_line

app = typer.Typer(
    name="tcp-teardown",
    help="How every TCP connection in a capture opened and ended: who hung up, and why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(error: TeardownError) -> typer.Exit:
    """Print the one line and return the exit to raise."""
    say(error.message)
    return typer.Exit(code=int(error.code))


def say(text: str) -> None:
    """One line on stderr (control characters in file names escaped)."""
    typer.echo(f"tcp-teardown: {one_line(text)}", err=True)


@app.command()
def analyze(
    captures: Annotated[list[Path], typer.Argument(help="Capture files (pcap, pcapng; .gz/.zst).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for Parquet and filters.")],
    idle_threshold: IdleThreshold = 5.0,
    msl: Msl = 30.0,
    engine: EngineOption = Engine.AUTO,
    tshark: TsharkPath = None,
    as_json: AsJson = False,
) -> None:
    """Label every TCP connection of the captures; write Parquet tables and Wireshark filters."""
    from tcp_teardown.memory import keep_for_reuse

    keep_for_reuse()  # this process analyzes once and exits (first: it tunes NumPy's allocations)
    from tcp_teardown import report as run_report
    from tcp_teardown.api import analyze_tables
    from tcp_teardown.facts import Params
    from tcp_teardown.ingest import sniff
    from tcp_teardown.output import prepare_out_dir

    try:
        for capture in captures:
            sniff(capture)
        prepare_out_dir(out)
        tables = analyze_tables(captures, Params(idle_threshold, msl), str(engine), tshark)
        summary = run_report.write_run(out, tables)
    except TeardownError as error:
        raise fail(error) from None
    typer.echo(json.dumps(summary, indent=2) if as_json else run_report.render(summary))
    warnings = [warning for file in tables.files for warning in file.warnings]
    for warning in warnings:
        say(warning)
    if tables.connections.num_rows == 0 and not warnings:  # a warning already says what was read
        say("no TCP in the input (empty tables written)")
    if any(f.truncated for f in tables.files):
        raise typer.Exit(code=int(ExitCode.TRUNCATED))


@app.command()
def labels(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Print the label vocabulary with one-line meanings (from the rules themselves)."""
    from tcp_teardown.rules import CLOSE_RULES, FLAG_RULES, OPEN_RULES

    groups = {"open": OPEN_RULES, "close": CLOSE_RULES, "flags": FLAG_RULES}
    if as_json:
        typer.echo(json.dumps({k: {str(r.label): r.summary for r in v} for k, v in groups.items()}, indent=2))
        return
    for kind, rules in groups.items():
        typer.echo(f"{kind}:")
        width = max(len(str(r.label)) for r in rules)
        for rule in rules:
            typer.echo(f"  {rule.label!s:<{width}}  {rule.summary}")


@app.command()
def version() -> None:
    """Print the version of tcp-teardown and of the tshark it would use."""
    from tcp_teardown import __version__
    from tcp_teardown.tshark import find_tshark

    typer.echo(f"tcp-teardown {__version__}")
    try:
        found = find_tshark()
        typer.echo(f"tshark {found.version_text} ({found.path})")
    except TeardownError as error:
        raise fail(error) from None


def _register_optional_commands() -> None:
    """Commands that live in their own modules (kept out of this file to keep it thin)."""
    from tcp_teardown.commands import register

    register(app)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends a run like Ctrl-C does: temp files removed, tshark stopped, exit 130."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _usage_error_types() -> tuple[type[Exception], ...]:
    """Typer's command-line errors: its own (vendored click) and click's (older typers)."""
    kinds: list[type[Exception]] = []
    if hasattr(typer, "TyperException"):
        kinds.append(typer.TyperException)
    try:
        import click
    except ImportError:
        pass
    else:
        kinds.append(click.ClickException)
    return tuple(kinds)


def main() -> None:
    """The console script: every outcome is an exit code of errors.ExitCode and at most
    one line on stderr per problem (usage errors too), never a traceback."""
    _register_optional_commands()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
    except _usage_error_types() as exc:
        code = int(getattr(exc, "exit_code", ExitCode.USAGE))
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            say(f"{exc.format_message()}{hint}")
    except KeyboardInterrupt:
        code = int(ExitCode.INTERRUPTED)
    except TeardownError as error:
        say(error.message)
        code = int(error.code)
    except Exception as exc:  # a bug (or typer's Abort): one line, the traceback on request
        if os.environ.get("TCP_TEARDOWN_DEBUG"):
            raise
        say(f"internal error: {type(exc).__name__}: {exc} (set TCP_TEARDOWN_DEBUG=1 for the traceback)")
        code = int(ExitCode.FAILED)
    if code == ExitCode.INTERRUPTED:  # typer turns KeyboardInterrupt (Ctrl-C, SIGTERM) into 130
        say("interrupted")
    _exit(code if isinstance(code, int) else int(ExitCode.OK))


def _exit(code: int) -> None:
    """Exit without interpreter finalization once everything is written and flushed.

    Outputs are complete by now (each renamed into place). Finalization would only tear
    down Arrow's C++ thread pools, and a reader thread of an aborted tshark read can race
    that teardown into an abort(): the exit code must be ours, always.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
