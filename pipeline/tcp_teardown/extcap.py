"""The extcap protocol: Wireshark shows tcp-teardown's labels as frame comments, without Lua.

Wireshark (and tshark, through dumpcap) runs this program as a capture interface,
"TCP teardown (annotated replay)". A "capture" on it analyzes a capture file with the
shared pipeline (`api.analyze`, the one implementation of the labels) and streams that
file into Wireshark's fifo as pcapng: every packet unchanged (bytes, timestamps, link
type, pcapng interfaces), with one comment on each frame that proves a label.

The calls Wireshark makes, in order of a session:

    --extcap-interfaces [--extcap-version=4.0]        list the interface
    --extcap-interface tcpteardown --extcap-dlts      its link type
    --extcap-interface tcpteardown --extcap-config    its options (also tshark's prefs)
    --extcap-interface tcpteardown --capture --fifo PATH --capture-file FILE ...

Wireshark adds arguments this program does not know (they vary by version), so the
parser keeps the ones it knows and ignores the rest. Errors are one line on stderr and a
distinct exit code (`errors.ExitCode`), and the fifo is always opened and closed with at
least a valid pcapng header in it: a reader left waiting on a fifo nobody opens would
hang. No argument ever reaches a shell; the program opens nothing but the capture file,
the fifo, and whatever the analysis itself needs.

Module import stays light (no pandas) because Wireshark runs the discovery calls at
every start; the analysis is imported only when a capture runs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import stat
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn

from tcp_teardown.errors import ExitCode, TeardownError
from tcp_teardown.pcapng_writer import (
    CaptureFormatError,
    CaptureReader,
    PcapngWriter,
    first_linktype,
    replay,
    section_header,
)

INTERFACE = "tcpteardown"
DISPLAY = "TCP teardown (annotated replay)"
FIFO_OPEN_TIMEOUT_S = 30.0  # how long to wait for the reader to open the fifo
FIFO_RETRY_S = 0.05

# Link types we can name in --extcap-dlts (Wireshark only displays the name); others
# are announced by number.
DLT_NAMES: dict[int, tuple[str, str]] = {
    0: ("NULL", "BSD loopback"),
    1: ("EN10MB", "Ethernet"),
    101: ("RAW", "Raw IP"),
    108: ("LOOP", "OpenBSD loopback"),
    113: ("LINUX_SLL", "Linux cooked-mode capture v1"),
    228: ("IPV4", "Raw IPv4"),
    229: ("IPV6", "Raw IPv6"),
    276: ("LINUX_SLL2", "Linux cooked-mode capture v2"),
}
DEFAULT_DLT = 1  # pcapng lets every interface have its own link type: this is only a hint

log_prefix = "tcp-teardown extcap"


def version() -> str:
    """The package version, from its one source (the installed metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("tcp-teardown")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+source"


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting: errors are one line."""

    def error(self, message: str) -> NoReturn:
        raise TeardownError(f"bad arguments: {message}", ExitCode.USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tcp_teardown.extcap", add_help=True, allow_abbrev=False)
    # The extcap protocol.
    parser.add_argument("--extcap-interfaces", action="store_true")
    parser.add_argument("--extcap-interface")
    parser.add_argument("--extcap-dlts", action="store_true")
    parser.add_argument("--extcap-config", action="store_true")
    parser.add_argument("--extcap-version")
    parser.add_argument("--extcap-capture-filter")  # accepted; a replay has nothing to filter
    parser.add_argument("--capture", action="store_true")
    parser.add_argument("--fifo")
    # Our options (see config_lines for what Wireshark shows for each).
    parser.add_argument("--capture-file")
    parser.add_argument("--labels")
    parser.add_argument("--idle-threshold", type=float, default=5.0)
    parser.add_argument("--msl", type=float, default=30.0)
    parser.add_argument("--all-frames", action="store_true")
    return parser


def interfaces_lines() -> list[str]:
    return [
        f"extcap {{version={version()}}}{{help=Replays a capture file with a comment on every "
        "frame that proves how a TCP connection opened or ended}",
        f"interface {{value={INTERFACE}}}{{display={DISPLAY}}}",
    ]


def dlts_lines(capture_file: str | None) -> list[str]:
    """One link type. Without a capture file (Wireshark asks before one is chosen) Ethernet."""
    linktype = DEFAULT_DLT
    if capture_file:
        # A bad file is reported by the capture call; the hint then stays Ethernet.
        with contextlib.suppress(OSError, CaptureFormatError):
            linktype = first_linktype(Path(capture_file)) or DEFAULT_DLT
    name, display = DLT_NAMES.get(linktype, (f"DLT_{linktype}", f"Link type {linktype}"))
    return [f"dlt {{number={linktype}}}{{name={name}}}{{display={display}}}"]


def config_lines() -> list[str]:
    """The options Wireshark shows; tshark takes them as `-o extcap.tcpteardown.<call>:v`.

    tshark drops the dashes of the option name: `--capture-file` is
    `extcap.tcpteardown.capturefile`, `--all-frames` is `...allframes:true` (lower case).
    """
    from tcp_teardown.annotate import ALL_LABELS  # light: vocab only

    lines = [
        "arg {number=0}{call=--capture-file}{display=Capture file}{type=fileselect}"
        "{mustexist=true}{required=true}{group=Capture}"
        "{tooltip=The pcap or pcapng file (optionally gzip-compressed) to analyze and replay}",
        "arg {number=1}{call=--labels}{display=Labels to annotate}{type=multicheck}"
        "{group=Labels}{tooltip=Only frames proving these labels get a comment (none: all)}",
    ]
    lines += [
        f"value {{arg=1}}{{value={label}}}{{display={label}}}{{enabled=true}}{{default=true}}"
        for label in ALL_LABELS
    ]
    lines += [
        "arg {number=2}{call=--idle-threshold}{display=Idle threshold (s)}{type=double}"
        "{default=5}{range=0,86400}{group=Analysis}"
        "{tooltip=Silence before the first FIN or RST that makes a close idle_close}",
        "arg {number=3}{call=--msl}{display=MSL (s)}{type=double}{default=30}"
        "{range=0.001,3600}{group=Analysis}"
        "{tooltip=Maximum segment lifetime: TIME_WAIT lasts twice this}",
        "arg {number=4}{call=--all-frames}{display=Comment every frame of selected connections}"
        "{type=boolflag}{default=false}{group=Labels}"
        "{tooltip=Also comment the other frames of each connection with its labels}",
    ]
    return lines


# --- the fifo ------------------------------------------------------------------------------
def open_fifo(path: str, timeout_s: float = FIFO_OPEN_TIMEOUT_S) -> BinaryIO:
    """Open Wireshark's fifo for writing, waiting (bounded) for its reader.

    A plain open of a fifo blocks until a reader opens it, forever if none ever does;
    a non-blocking open fails with ENXIO until then, so we retry up to `timeout_s` and
    then switch the descriptor back to blocking writes. Never creates a file.
    """
    if os.name == "nt":  # a Windows named pipe: Wireshark has created and is waiting on it
        return open(path, "wb")  # returned to the caller, who closes it
    is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    flags = os.O_WRONLY | (os.O_NONBLOCK if is_fifo else 0)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(path, flags)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() >= deadline:
                raise
            time.sleep(FIFO_RETRY_S)
    if is_fifo:
        os.set_blocking(fd, True)
    return os.fdopen(fd, "wb")


def _fifo_from_argv(argv: Sequence[str]) -> str | None:
    """The --fifo value, read by hand: used when the arguments did not even parse."""
    for i, arg in enumerate(argv):
        if arg == "--fifo" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--fifo="):
            return arg.split("=", 1)[1]
    return None


def close_fifo_on_error(path: str | None, stream: BinaryIO | None) -> None:
    """Leave the reader a valid, empty pcapng and end of file, whatever went wrong."""
    try:
        if stream is None and path:
            stream = open_fifo(path, timeout_s=5.0)
            stream.write(section_header(f"tcp-teardown {version()}"))
        if stream is not None:
            stream.close()
    except OSError:
        pass  # no reader, or it has gone: nothing more we can do for it


# --- the capture ---------------------------------------------------------------------------
def capture(args: argparse.Namespace, writer: PcapngWriter) -> int:
    """Analyze `--capture-file` and replay it, annotated, into `writer`; returns frames.

    `writer` has already sent its section header: the reader knows at once that a pcapng
    stream is coming, instead of timing out on silence during a long analysis.
    """
    from tcp_teardown.annotate import COMMENT_PREFIX, analyze_for_comments, parse_labels

    capture_file = _checked_capture_file(args.capture_file)
    try:
        labels = parse_labels(args.labels)
    except ValueError as exc:
        raise TeardownError(str(exc), ExitCode.USAGE) from exc
    if not args.idle_threshold >= 0 or not args.msl > 0:
        raise TeardownError(
            "--idle-threshold must be >= 0 and --msl > 0 seconds", ExitCode.USAGE
        )

    annotations = analyze_for_comments(
        capture_file, labels, args.all_frames, args.idle_threshold, args.msl
    )
    try:
        with CaptureReader(capture_file) as reader:
            frames = replay(reader, writer, annotations.comment_for, COMMENT_PREFIX)
    except CaptureFormatError as exc:
        # Everything before the damage has been replayed; say where it stopped.
        text = str(exc)
        if not text.startswith(str(capture_file)):
            text = f"{capture_file}: {text}"
        raise TeardownError(text, ExitCode.TRUNCATED) from exc
    writer.flush()
    return frames


def _checked_capture_file(value: str | None) -> Path:
    if not value:
        raise TeardownError(
            "no capture file: set --capture-file (tshark: -o extcap.tcpteardown.capturefile:PATH)",
            ExitCode.USAGE,
        )
    path = Path(value)
    if not path.exists():
        raise TeardownError(f"{path}: no such file", ExitCode.INPUT_MISSING)
    if not path.is_file():
        raise TeardownError(f"{path}: not a regular file", ExitCode.INPUT_MISSING)
    if not os.access(path, os.R_OK):
        raise TeardownError(f"{path}: cannot read (permission denied)", ExitCode.INPUT_MISSING)
    return path


def _say(lines: list[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


def _fail(message: str) -> None:
    """One line on stderr (Wireshark shows it in a dialog)."""
    text = " ".join(message.split())
    sys.stderr.write(f"{log_prefix}: {text}\n")
    sys.stderr.flush()


def run(argv: Sequence[str]) -> int:
    """Handle one call from Wireshark; returns the exit code."""
    fifo_stream: BinaryIO | None = None
    fifo_path = _fifo_from_argv(argv)
    try:
        args, _unknown = build_parser().parse_known_args(list(argv))  # Wireshark adds more
        if args.extcap_interfaces:
            _say(interfaces_lines())
            return ExitCode.OK
        if args.extcap_interface is not None and args.extcap_interface != INTERFACE:
            raise TeardownError(
                f"unknown interface {args.extcap_interface!r} (this program has {INTERFACE!r})",
                ExitCode.USAGE,
            )
        if args.extcap_dlts:
            _say(dlts_lines(args.capture_file))
            return ExitCode.OK
        if args.extcap_config:
            _say(config_lines())
            return ExitCode.OK
        if args.capture:
            if not args.fifo:
                raise TeardownError("--capture needs --fifo PATH", ExitCode.USAGE)
            try:
                fifo_stream = open_fifo(args.fifo)
            except OSError as exc:
                raise TeardownError(
                    f"cannot open fifo {args.fifo}: {exc.strerror}", ExitCode.OUTPUT_UNWRITABLE
                ) from exc
            writer = PcapngWriter(fifo_stream, userappl=f"tcp-teardown {version()}")
            writer.flush()
            capture(args, writer)
            fifo_stream.close()
            return ExitCode.OK
        raise TeardownError(
            "nothing to do: expected --extcap-interfaces, --extcap-dlts, --extcap-config "
            "or --capture",
            ExitCode.USAGE,
        )
    except BrokenPipeError:
        # The reader stopped the capture (Wireshark's Stop button): a normal end.
        _quiet_close(fifo_stream)
        return ExitCode.OK
    except TeardownError as exc:
        _fail(exc.message)
        close_fifo_on_error(fifo_path, fifo_stream)
        return exc.code
    except KeyboardInterrupt:
        _fail("interrupted")
        close_fifo_on_error(fifo_path, fifo_stream)
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug; still one line, and the reader must not hang
        _fail(f"internal error: {type(exc).__name__}: {exc}")
        close_fifo_on_error(fifo_path, fifo_stream)
        return ExitCode.FAILED


def _quiet_close(stream: BinaryIO | None) -> None:
    if stream is None:
        return
    # The buffered tail cannot go anywhere: the reader is gone.
    with contextlib.suppress(OSError):
        stream.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: `python -m tcp_teardown.extcap ...` and the installed launcher."""
    # Wireshark treats anything on our stderr as an error report, so library log records
    # and Python warnings must not reach it: errors arrive as exceptions, one line each.
    logging.getLogger().addHandler(logging.NullHandler())
    warnings.simplefilter("ignore")
    return int(run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
