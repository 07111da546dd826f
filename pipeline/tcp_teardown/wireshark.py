"""Put tcp-teardown into the installed Wireshark: the extcap launcher and a profile.

- The launcher is a tiny script in the folder where *this* Wireshark looks for personal
  extcaps. It runs this project's interpreter (`sys.executable`) with
  `-m tcp_teardown.extcap`, so it works in a Wireshark started from a desktop menu,
  outside any virtual environment.
- The configuration profile "TCP teardown" has one filter button, one coloring rule and
  one saved display filter per label, each selecting the frames an annotated capture
  (extcap replay or `tcp-teardown annotate`) commented with that label. Every expression
  is compiled by the installed tshark before anything is written.
- `open_command` builds the Wireshark command line for one flow or label.

Which folders: tshark says (`tshark -G folders`). Wireshark 4.0 reads personal extcaps
from the personal configuration folder (`$XDG_CONFIG_HOME/wireshark/extcap`, default
`~/.config/wireshark/extcap`); from 4.1 on it has its own "Personal Extcap path"
(`~/.local/lib/wireshark/extcap`), which `-G folders` lists.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcp_teardown.annotate import ALL_LABELS, COMMENT_PREFIX, KEY_PREFIX, label_filter
from tcp_teardown.errors import ExitCode, TeardownError
from tcp_teardown.vocab import CLOSE_VALUES, FLAG_VALUES, OPEN_VALUES

PROFILE_NAME = "TCP teardown"
LAUNCHER_STEM = "tcp_teardown_extcap"
LAUNCHER_MARKER = "tcp-teardown extcap launcher"  # how uninstall recognizes our file
PROFILE_MARKER = "# Written by tcp-teardown"  # first line of every profile file we write
EXTCAP_INTERFACE = "tcpteardown"
ALL_KEY_FRAMES_FILTER = f'frame.comment contains "{KEY_PREFIX}"'
PERSONAL_EXTCAP_SINCE = (4, 1)  # from this version Wireshark has a separate extcap folder
TSHARK_TIMEOUT_S = 60


# --- where the installed Wireshark looks -----------------------------------------------------
@dataclass(frozen=True)
class Folders:
    """The folders the installed tshark reports, and the personal extcap folder it uses."""

    tshark: str
    version: tuple[int, int, int]
    personal_config: Path
    global_config: Path | None
    personal_extcap: Path

    @property
    def profile_dir(self) -> Path:
        return self.personal_config / "profiles" / PROFILE_NAME


def parse_folders(text: str) -> dict[str, str]:
    """`tshark -G folders` output ("Name:<tab>path" lines) as a dict; repeated names: first."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and value.strip():
            out.setdefault(name.strip(), value.strip())
    return out


def personal_extcap_dir(
    folders: dict[str, str], version: tuple[int, int, int], home: Path | None = None
) -> Path:
    """The personal extcap folder of this Wireshark version (see the module docstring)."""
    if "Personal Extcap path" in folders:
        return Path(folders["Personal Extcap path"])
    if version[:2] >= PERSONAL_EXTCAP_SINCE:
        return (home or Path.home()) / ".local" / "lib" / "wireshark" / "extcap"
    return Path(folders["Personal configuration"]) / "extcap"


def find_folders(tshark_path: str | None = None) -> Folders:
    """Ask the installed tshark where its folders are (with the user's own environment)."""
    from tcp_teardown.tshark import find_tshark

    tshark = find_tshark(tshark_path)
    try:
        proc = subprocess.run(
            [tshark.path, "-G", "folders"],
            capture_output=True, text=True, timeout=TSHARK_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TeardownError(f"tshark -G folders failed: {exc}", ExitCode.TSHARK_FAILED) from exc
    folders = parse_folders(proc.stdout)
    if "Personal configuration" not in folders:
        raise TeardownError(
            f"tshark -G folders did not name a personal configuration folder: "
            f"{' '.join(proc.stderr.split())[:200]}",
            ExitCode.TSHARK_FAILED,
        )
    global_config = folders.get("Global configuration")
    return Folders(
        tshark=tshark.path,
        version=tshark.version,
        personal_config=Path(folders["Personal configuration"]),
        global_config=Path(global_config) if global_config else None,
        personal_extcap=personal_extcap_dir(folders, tshark.version),
    )


# --- the launcher ------------------------------------------------------------------------
def _needs_pythonpath(python: str, package_parent: Path) -> bool:
    """True if `python` cannot import tcp_teardown on its own (a source tree, not installed)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        proc = subprocess.run(
            [python, "-c", "import tcp_teardown; print(tcp_teardown.__file__)"],
            capture_output=True, text=True, timeout=60, check=False, env=env, cwd=os.sep,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return True
    found = Path(proc.stdout.strip()).resolve()
    return proc.returncode != 0 or not found.is_relative_to(package_parent)


def launcher_text(python: str, pythonpath: Path | None, windows: bool = False) -> str:
    """The launcher script: exec this interpreter on the extcap module with all arguments.

    Arguments pass through untouched ("$@" / %*); only our own paths are written into
    the script, quoted. PYTHONPATH is set only when the package is not installed into
    the interpreter (running from a source tree).
    """
    if windows:
        lines = ["@echo off", f"rem {LAUNCHER_MARKER} (written by tcp-teardown wireshark install)"]
        if pythonpath is not None:
            lines.append(f'set "PYTHONPATH={pythonpath};%PYTHONPATH%"')
        lines.append(f'"{python}" -m tcp_teardown.extcap %*')
        return "\r\n".join(lines) + "\r\n"
    lines = [
        "#!/bin/sh",
        f"# {LAUNCHER_MARKER} (written by tcp-teardown wireshark install).",
        "# Runs the interpreter tcp-teardown is installed in, so it also works when",
        "# Wireshark was started outside that environment.",
    ]
    if pythonpath is not None:
        lines += [
            f'PYTHONPATH={shlex.quote(str(pythonpath))}"${{PYTHONPATH:+:$PYTHONPATH}}"',
            "export PYTHONPATH",
        ]
    lines.append(f'exec {shlex.quote(python)} -m tcp_teardown.extcap "$@"')
    return "\n".join(lines) + "\n"


def launcher_path(folders: Folders, windows: bool | None = None) -> Path:
    windows = os.name == "nt" if windows is None else windows
    return folders.personal_extcap / (LAUNCHER_STEM + (".bat" if windows else ""))


def install_launcher(folders: Folders, python: str | None = None) -> Path:
    """Write the launcher into the personal extcap folder (atomically, executable)."""
    import tcp_teardown

    python = python or sys.executable  # not resolved: a venv's python must stay the venv's
    package_parent = Path(tcp_teardown.__file__).resolve().parent.parent
    pythonpath = package_parent if _needs_pythonpath(python, package_parent) else None
    target = launcher_path(folders)
    text = launcher_text(python, pythonpath, windows=target.suffix == ".bat")
    _write_atomic(target, text, mode=0o755)
    return target


def _write_atomic(target: Path, text: str, mode: int = 0o644) -> None:
    """Write to a temporary name beside `target`, then rename: never a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


# --- the profile -------------------------------------------------------------------------
# Colors as Wireshark stores them (16-bit RGB), background first. Grouped so a glance tells
# the kind: orderly closes green, aborts red, failed opens purple, other flags amber.
_BG_ORDERLY = (50372, 61166, 50372)
_BG_ABORT = (65535, 49344, 49344)
_BG_OPEN = (57568, 51400, 65535)
_BG_FLAG = (65535, 59624, 41120)
_BG_OTHER = (59110, 59110, 59110)
_FG = (4718, 10030, 11796)


def _label_background(label: str) -> tuple[int, int, int]:
    if label in ("fin_by_client", "fin_by_server", "fin_simultaneous"):
        return _BG_ORDERLY
    if label.startswith("rst_"):
        return _BG_ABORT
    if label in ("refused", "no_answer", "syn_ack_no_ack", "never_opened"):
        return _BG_OPEN
    if label in FLAG_VALUES:
        return _BG_FLAG
    return _BG_OTHER


def _kind(label: str) -> str:
    if label in OPEN_VALUES:
        return "open"
    if label in CLOSE_VALUES:
        return "close"
    return "flag"


@dataclass(frozen=True)
class ProfileEntry:
    """One label's button, coloring rule and saved filter."""

    label: str
    expression: str

    @property
    def name(self) -> str:
        return f"{COMMENT_PREFIX}: {self.label}"


def profile_entries(labels: Iterable[str] = ALL_LABELS) -> list[ProfileEntry]:
    return [ProfileEntry(label, label_filter(label)) for label in labels]


def _uat_string(text: str) -> str:
    """A quoted UAT field: `"` and `\\` (and non-printables) as \\xNN, as Wireshark writes them."""
    escaped = "".join(
        f"\\x{ord(c):02x}" if c in '"\\' or not c.isprintable() else c for c in text
    )
    return f'"{escaped}"'


def dfilter_buttons_text(entries: Sequence[ProfileEntry]) -> str:
    lines = [f"{PROFILE_MARKER}: one button per label (frames proving it).",
             "# This file is automatically generated, DO NOT MODIFY."]  # fmt: skip
    rows = [("TRUE", "teardown: all", ALL_KEY_FRAMES_FILTER, "every annotated key frame")]
    rows += [("TRUE", e.label, e.expression, f"{_kind(e.label)} label {e.label}") for e in entries]
    lines += [",".join(_uat_string(field) for field in row) for row in rows]
    return "\n".join(lines) + "\n"


def dfilters_text(entries: Sequence[ProfileEntry]) -> str:
    lines = [f'"{COMMENT_PREFIX}: all key frames" {ALL_KEY_FRAMES_FILTER}']
    lines += [f'"{e.name}" {e.expression}' for e in entries]
    return "\n".join(lines) + "\n"


def colorfilters_text(entries: Sequence[ProfileEntry], global_config: Path | None) -> str:
    """Our rules first (the first matching rule colors a frame), then Wireshark's defaults."""
    lines = [f"{PROFILE_MARKER}: one coloring rule per label, then the default rules."]
    for e in entries:
        bg = ",".join(map(str, _label_background(e.label)))
        fg = ",".join(map(str, _FG))
        lines.append(f"@{e.name}@{e.expression}@[{bg}][{fg}]")
    defaults = global_config / "colorfilters" if global_config else None
    if defaults is not None and defaults.is_file():
        lines += [
            line
            for line in defaults.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.startswith(("@", "!@"))
        ]
    return "\n".join(lines) + "\n"


# A column that shows the comments in the packet list. Custom column syntax of 4.0:
# %Cus:<field>:<occurrence>:<R(esolved)|U(nresolved)>.
PREFERENCES_TEXT = f"""{PROFILE_MARKER}: the default columns plus one for the comments.
gui.column.format:
\t"No.", "%m",
\t"Time", "%t",
\t"Source", "%s",
\t"Destination", "%d",
\t"Protocol", "%p",
\t"Length", "%L",
\t"tcp-teardown", "%Cus:frame.comment:0:R",
\t"Info", "%i"
"""


def check_expressions(expressions: Sequence[str], tshark_path: str | None = None) -> None:
    """Compile every display filter with the installed tshark; raise naming the bad ones.

    One tshark run compiles them all joined by `||` (a join parses iff every part does);
    only if that fails is each one tried alone, to name the culprit.
    """
    from tcp_teardown.tshark import find_tshark

    tshark = find_tshark(tshark_path).path
    with tempfile.TemporaryDirectory(prefix="tcp-teardown-dfcheck-") as tmp:
        capture = Path(tmp) / "empty.pcapng"
        _write_empty_capture(capture)
        joined = " || ".join(f"({e})" for e in expressions)
        if _compiles(tshark, capture, joined) is None:
            return
        bad = [(e, err) for e in expressions if (err := _compiles(tshark, capture, e))]
    if bad:
        expr, err = bad[0]
        raise TeardownError(
            f"{len(bad)} display filter(s) do not compile in this tshark, e.g. {expr!r}: {err}",
            ExitCode.TSHARK_FAILED,
        )


def _write_empty_capture(path: Path) -> None:
    """A pcapng with one Ethernet interface and no packets: all `-Y` needs to compile."""
    from tcp_teardown.pcapng_writer import Interface, PcapngWriter

    with path.open("wb") as fh:
        PcapngWriter(fh).add_interface(Interface(linktype=1, snaplen=0))


def _compiles(tshark: str, capture: Path, expression: str) -> str | None:
    """None if `expression` compiles, else tshark's complaint (one line)."""
    from tcp_teardown.tshark import tshark_env

    try:
        proc = subprocess.run(
            [tshark, "-n", "-r", str(capture), "-Y", expression],
            capture_output=True, text=True, timeout=TSHARK_TIMEOUT_S, check=False,
            env=tshark_env(),
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode == 0:
        return None
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Running as user" not in ln]
    return " ".join(" ".join(lines).split())[:300] or f"exit {proc.returncode}"


def write_profile(folders: Folders, labels: Iterable[str] = ALL_LABELS) -> Path:
    """Write (or rewrite) the "TCP teardown" profile; returns its folder."""
    entries = profile_entries(labels)
    check_expressions([ALL_KEY_FRAMES_FILTER, *(e.expression for e in entries)], folders.tshark)
    target = folders.profile_dir
    files = {
        "dfilter_buttons": dfilter_buttons_text(entries),
        "dfilters": dfilters_text(entries),
        "colorfilters": colorfilters_text(entries, folders.global_config),
        "preferences": PREFERENCES_TEXT,
    }
    for name, text in files.items():
        _write_atomic(target / name, text)
    return target


# --- install / uninstall -----------------------------------------------------------------
@dataclass(frozen=True)
class Installed:
    """What `install` wrote, and whether tshark then listed the interface."""

    launcher: Path
    profile: Path | None
    listed: bool | None  # None when not checked


def interface_listed(tshark_path: str) -> bool:
    """True if `tshark -D` lists the extcap interface (it runs every extcap to ask)."""
    try:
        proc = subprocess.run(
            [tshark_path, "-D"], capture_output=True, text=True, timeout=TSHARK_TIMEOUT_S,
            check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(
        line.split(". ", 1)[-1].split(" ", 1)[0] == EXTCAP_INTERFACE
        for line in proc.stdout.splitlines()
    )


def install(
    tshark_path: str | None = None, profile: bool = True, check: bool = True
) -> Installed:
    """Install the launcher (and the profile) for the Wireshark that tshark belongs to."""
    folders = find_folders(tshark_path)
    profile_dir = write_profile(folders) if profile else None
    try:
        launcher = install_launcher(folders)
    except OSError as exc:
        raise TeardownError(
            f"cannot write the extcap launcher into {folders.personal_extcap}: {exc.strerror}",
            ExitCode.OUTPUT_UNWRITABLE,
        ) from exc
    listed = interface_listed(folders.tshark) if check else None
    return Installed(launcher, profile_dir, listed)


def _is_ours(path: Path) -> bool:
    """True for a file tcp-teardown wrote: it carries our marker, or for `dfilters` (whose
    format has no comment lines) every saved filter is one of ours."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    if path.name == "dfilters":
        lines = [line for line in text.splitlines() if line.strip()]
        return bool(lines) and all(line.startswith(f'"{COMMENT_PREFIX}: ') for line in lines)
    return LAUNCHER_MARKER in text[:400] or text.startswith(PROFILE_MARKER)


def uninstall(tshark_path: str | None = None, profile: bool = True) -> list[Path]:
    """Remove the launcher (and the profile files we wrote); returns what was removed.

    Only files that carry our marker are removed: a user's own file of the same name
    stays. The profile folder goes only if nothing else is left in it.
    """
    folders = find_folders(tshark_path)
    removed: list[Path] = []
    for candidate in (launcher_path(folders, windows=False), launcher_path(folders, windows=True)):
        if candidate.is_file() and _is_ours(candidate):
            candidate.unlink()
            removed.append(candidate)
    if profile and folders.profile_dir.is_dir():
        for name in ("dfilter_buttons", "dfilters", "colorfilters", "preferences"):
            path = folders.profile_dir / name
            if path.is_file() and _is_ours(path):
                path.unlink()
                removed.append(path)
        try:
            folders.profile_dir.rmdir()
            removed.append(folders.profile_dir)
        except OSError:
            pass  # Wireshark wrote its own files there (recent, ...): keep the folder
    return removed


# --- open a capture in Wireshark ---------------------------------------------------------
def flow_filter(row: Any) -> str:
    """The filter for one connection (a row of Result.connections): its stream, cut to its
    frames, because a reused 4-tuple keeps tshark's stream number across connections."""
    span = f"frame.number >= {int(row.first_frame)} && frame.number <= {int(row.last_frame)}"
    try:
        return f"tcp.stream == {int(row.tcp_stream)} && {span}"
    except (TypeError, ValueError):  # no stream number (another engine): the span alone
        return span


def open_command(
    capture: Path,
    display_filter: str | None,
    wireshark: str | None = None,
    profile: bool = True,
) -> list[str]:
    """The Wireshark command line (an argument list: nothing goes through a shell)."""
    argv = [wireshark or shutil.which("wireshark") or "wireshark", "-r", str(capture)]
    if profile:
        argv += ["-C", PROFILE_NAME]
    if display_filter:
        argv += ["-Y", display_filter]
    return argv


def launch(argv: list[str]) -> str:
    """Replace this process with Wireshark if it is installed; else return the command
    line for the user to run elsewhere (printed by the caller)."""
    found = shutil.which(argv[0])
    if found is None:
        return shlex.join(argv)
    os.execv(found, [found, *argv[1:]])  # does not return
    raise AssertionError("unreachable")  # pragma: no cover


def profile_installed(tshark_path: str | None = None) -> bool:
    try:
        return find_folders(tshark_path).profile_dir.is_dir()
    except TeardownError:
        return False
