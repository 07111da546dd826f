"""Commands that connect tcp-teardown to Wireshark: `wireshark install|uninstall|profile`,
`annotate` and `open`.

Heavy imports (pandas, the analysis) happen inside the commands so `--help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tcp_teardown.errors import ExitCode, TeardownError

wireshark_app = typer.Typer(
    name="wireshark",
    help="Install the extcap interface and the 'TCP teardown' profile into Wireshark.",
    no_args_is_help=True,
)

TsharkOption = Annotated[
    str | None, typer.Option("--tshark", help="The tshark of the Wireshark to install into.")
]
LabelsOption = Annotated[
    str | None,
    typer.Option("--labels", help="Comma-separated labels to annotate (default: all)."),
]


def _fail(error: TeardownError) -> typer.Exit:
    typer.echo(f"tcp-teardown: {error.message}", err=True)
    return typer.Exit(code=int(error.code))


def _labels(text: str | None) -> frozenset[str] | None:
    from tcp_teardown.annotate import parse_labels

    try:
        return parse_labels(text)
    except ValueError as exc:
        raise _fail(TeardownError(str(exc), ExitCode.USAGE)) from None


@wireshark_app.command("install")
def install(
    tshark: TsharkOption = None,
    profile: Annotated[
        bool, typer.Option("--profile/--no-profile", help="Also write the profile.")
    ] = True,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Ask tshark -D whether it lists us.")
    ] = True,
) -> None:
    """Install the extcap launcher (and the 'TCP teardown' profile) for this Wireshark."""
    from tcp_teardown import wireshark

    try:
        done = wireshark.install(tshark, profile=profile, check=check)
    except TeardownError as error:
        raise _fail(error) from None
    typer.echo(f"extcap launcher: {done.launcher}")
    if done.profile is not None:
        typer.echo(f"profile: {done.profile}")
    if done.listed is False:
        typer.echo(
            f"tcp-teardown: tshark -D does not list '{wireshark.EXTCAP_INTERFACE}': "
            f"run {done.launcher} --extcap-interfaces to see why",
            err=True,
        )
        raise typer.Exit(code=int(ExitCode.FAILED))
    typer.echo(f"interface: {wireshark.EXTCAP_INTERFACE} ({'listed' if done.listed else 'not checked'})")


@wireshark_app.command("uninstall")
def uninstall(
    tshark: TsharkOption = None,
    profile: Annotated[
        bool, typer.Option("--profile/--no-profile", help="Also remove the profile.")
    ] = True,
) -> None:
    """Remove the extcap launcher (and the profile files tcp-teardown wrote)."""
    from tcp_teardown import wireshark

    try:
        removed = wireshark.uninstall(tshark, profile=profile)
    except TeardownError as error:
        raise _fail(error) from None
    for path in removed:
        typer.echo(f"removed: {path}")
    if not removed:
        typer.echo("nothing to remove")


@wireshark_app.command("profile")
def profile(tshark: TsharkOption = None) -> None:
    """(Re)write the 'TCP teardown' profile: buttons, colors and filters per label."""
    from tcp_teardown import wireshark

    try:
        target = wireshark.write_profile(wireshark.find_folders(tshark))
    except TeardownError as error:
        raise _fail(error) from None
    typer.echo(f"profile: {target}")


def annotate(
    capture: Annotated[Path, typer.Argument(help="Capture file (pcap, pcapng; .gz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The annotated pcapng to write.")],
    labels: LabelsOption = None,
    all_frames: Annotated[
        bool, typer.Option("--all-frames", help="Comment every frame of selected connections.")
    ] = False,
    idle_threshold: Annotated[
        float, typer.Option(min=0.0, help="Seconds of silence that make a close idle_close.")
    ] = 5.0,
    msl: Annotated[float, typer.Option(min=0.0, help="Maximum segment lifetime (s).")] = 30.0,
) -> None:
    """Write the capture as pcapng with a comment on every frame that proves a label."""
    from tcp_teardown.annotate import annotate_file
    from tcp_teardown.ingest import sniff
    from tcp_teardown.pcapng_writer import CaptureFormatError

    selected = _labels(labels)
    try:
        sniff(capture)
        frames = annotate_file(capture, out, selected, all_frames, idle_threshold, msl)
    except TeardownError as error:
        raise _fail(error) from None
    except CaptureFormatError as exc:
        text = str(exc) if str(exc).startswith(str(capture)) else f"{capture}: {exc}"
        raise _fail(TeardownError(text, ExitCode.TRUNCATED)) from None
    except OSError as exc:
        raise _fail(
            TeardownError(f"{out}: cannot write: {exc.strerror}", ExitCode.OUTPUT_UNWRITABLE)
        ) from None
    typer.echo(f"{out}: {frames} frames")


def open_(
    capture: Annotated[Path, typer.Argument(help="Capture file to open in Wireshark.")],
    flow: Annotated[str | None, typer.Option("--flow", help="A flow_id (or its prefix).")] = None,
    label: Annotated[str | None, typer.Option("--label", help="A label to show.")] = None,
    idle_threshold: Annotated[float, typer.Option(min=0.0)] = 5.0,
    msl: Annotated[float, typer.Option(min=0.0)] = 30.0,
    wireshark_bin: Annotated[
        str | None, typer.Option("--wireshark", help="The wireshark binary to run.")
    ] = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="Only print the command line.")
    ] = False,
) -> None:
    """Open the capture in Wireshark filtered to one flow or one label's connections."""
    import shlex

    from tcp_teardown import wireshark

    try:
        argv = build_open_command(capture, flow, label, idle_threshold, msl, wireshark_bin)
    except TeardownError as error:
        raise _fail(error) from None
    if print_only:
        typer.echo(shlex.join(argv))
        return
    command = wireshark.launch(argv)  # returns only when Wireshark is not installed
    typer.echo("tcp-teardown: wireshark not found; run:", err=True)
    typer.echo(command)


def build_open_command(
    capture: Path,
    flow: str | None,
    label: str | None,
    idle_threshold: float = 5.0,
    msl: float = 30.0,
    wireshark_bin: str | None = None,
) -> list[str]:
    """Analyze `capture` and build the Wireshark argument list for a flow or a label."""
    from tcp_teardown import api, wireshark
    from tcp_teardown.annotate import parse_labels

    if flow and label:
        raise TeardownError("give --flow or --label, not both", ExitCode.USAGE)
    display_filter = None
    if flow or label:
        result = api.analyze([capture], idle_threshold=idle_threshold, msl=msl)
        if flow:
            conns = result.connections
            rows = conns[conns["flow_id"].astype(str).str.startswith(flow)]
            if len(rows) != 1:
                raise TeardownError(
                    f"{capture}: {len(rows)} connections have a flow_id starting {flow!r}",
                    ExitCode.USAGE,
                )
            display_filter = wireshark.flow_filter(next(rows.itertuples(index=False)))
        else:
            try:
                parse_labels(label)
            except ValueError as exc:
                raise TeardownError(str(exc), ExitCode.USAGE) from exc
            parts = [p for f in result.filters() if f.label == label for p in f.stream_filters]
            if not parts:
                raise TeardownError(f"{capture}: no connection is {label}", ExitCode.USAGE)
            display_filter = " || ".join(f"({p})" for p in parts) if len(parts) > 1 else parts[0]
    return wireshark.open_command(
        capture, display_filter, wireshark_bin, profile=wireshark.profile_installed()
    )


def register(app: typer.Typer) -> None:
    """Attach these commands to the main app (called from tcp_teardown.commands)."""
    app.add_typer(wireshark_app, name="wireshark")
    app.command("annotate")(annotate)
    app.command("open")(open_)
