"""Find the captures of an archive and group rotation sets.

Inputs are folders (searched recursively), globs (`archive/**/*.pcap`) or files. Every
capture gets a dataset name, the `file` column of its rows and its key in the manifest:
its absolute path, or its path relative to a root folder when one is given
(`--root /data/archive` names `/data/archive/2024/01/x.pcap` `2024/01/x.pcap`, so the
dataset does not depend on where the archive is mounted). Either way the name does not
depend on the current directory nor on whether the capture was named by a folder, a
glob or itself, so a re-run finds its records whatever inputs select it.

A rotation set is the consecutive files one capture was written into:

- dumpcap ring buffers and `editcap -c`: `name_00001_20240115120000.pcapng`, numbered;
- `tcpdump -C`: `name.pcap`, `name.pcap1`, `name.pcap2`, ...

Connections that run from one file into the next are stitched back into one when the
members are analyzed as one unit (runner, `--stitch`).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tcp_teardown.errors import ExitCode, TeardownError, display_path

# Capture file names: the formats tshark reads, numbered tcpdump -C files, compressed forms.
CAPTURE_NAME = re.compile(r"\.(pcap|pcapng|cap|ntar)\d*(\.gz|\.zst|\.zstd)?$", re.IGNORECASE)
COMPRESSED = re.compile(r"\.(gz|zst|zstd)$", re.IGNORECASE)
RING_NAME = re.compile(r"^(?P<prefix>.+)_(?P<number>\d{5,})_(?P<stamp>\d{14})(?P<ext>\.[A-Za-z]+)$")
TCPDUMP_NAME = re.compile(r"^(?P<base>.+\.(?:pcap|pcapng|cap))(?P<number>\d*)$", re.IGNORECASE)
GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Capture:
    """One capture file of the archive."""

    path: Path  # absolute
    name: str  # the dataset name (`file` column)
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Unit:
    """What is analyzed as one: a capture, or a rotation set in capture order."""

    members: tuple[Capture, ...]
    rotation_set: str | None = None  # the set's name (a pattern), None for a lone capture

    @property
    def size(self) -> int:
        return sum(m.size for m in self.members)

    @property
    def label(self) -> str:
        return self.rotation_set or self.members[0].name


def discover(inputs: list[str], exclude: Path | None = None, root: Path | None = None) -> list[Capture]:
    """Every capture under the inputs, once each, sorted by name (see the module doc)."""
    found: dict[Path, Capture] = {}
    excluded = exclude.resolve() if exclude is not None else None
    for text in inputs:
        for path in _expand(text):
            resolved = path.resolve()
            if resolved in found or (excluded is not None and resolved.is_relative_to(excluded)):
                continue
            stat = resolved.stat()
            found[resolved] = Capture(resolved, _name(path, root), stat.st_size, stat.st_mtime_ns)
    return sorted(found.values(), key=lambda c: c.name)


def _expand(text: str) -> list[Path]:
    """The captures of one input: a file, a folder or a glob."""
    if GLOB_CHARS.search(text):
        paths: list[Path] = []
        for match in sorted(glob.glob(text, recursive=True)):
            path = Path(match)
            if path.is_dir():
                paths += _walk(path)
            elif path.is_file() and CAPTURE_NAME.search(path.name):
                paths.append(path)
        if not paths:
            raise TeardownError(f"{text}: the pattern matches no capture file", ExitCode.INPUT_MISSING)
        return paths
    path = Path(text)
    if path.is_dir():
        return _walk(path)
    if path.is_file():
        return [path]  # named explicitly: taken whatever its name
    raise TeardownError(f"{text}: no such file or folder", ExitCode.INPUT_MISSING)


def _walk(folder: Path) -> list[Path]:
    """Capture files under `folder`, recursively; hidden files and folders are skipped."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames)
                if not f.startswith(".") and CAPTURE_NAME.search(f)]
    return out


def _name(path: Path, root: Path | None) -> str:
    """The dataset name, as valid UTF-8 (Parquet and JSON need it; see display_path)."""
    # Absolute, not resolved: a capture in a symlinked folder keeps the name it has there.
    absolute = Path(os.path.abspath(path))
    if root is None:
        return display_path(absolute.as_posix())
    try:
        return display_path(absolute.relative_to(os.path.abspath(root)).as_posix())
    except ValueError:
        raise TeardownError(f"{path}: not under the --root folder {root}", ExitCode.USAGE) from None


def rotation_key(name: str) -> tuple[str, int] | None:
    """(set pattern, position) if a file name looks like a member of a rotation set.

    Compression is not part of the pattern: archives often compress the older files of
    a ring (`x_00001_<time>.pcap.gz`, ..., `x_00009_<time>.pcap`), which stay one set.
    """
    folder, _, base = name.rpartition("/")
    base = COMPRESSED.sub("", base)
    ring = RING_NAME.match(base)
    if ring:
        pattern = f"{ring['prefix']}_*{ring['ext']}"
        return (f"{folder}/{pattern}" if folder else pattern), int(ring["number"])
    tcpdump = TCPDUMP_NAME.match(base)
    if tcpdump:
        pattern = f"{tcpdump['base']}*"
        number = int(tcpdump["number"]) if tcpdump["number"] else 0
        return (f"{folder}/{pattern}" if folder else pattern), number
    return None


def group_units(captures: list[Capture], stitch: bool = True) -> list[Unit]:
    """Lone captures and rotation sets (two or more members), in name order."""
    if not stitch:
        return [Unit((c,)) for c in captures]
    sets: dict[str, list[tuple[int, Capture]]] = {}
    for capture in captures:
        key = rotation_key(capture.name)
        if key is not None:
            sets.setdefault(key[0], []).append((key[1], capture))
    units: list[Unit] = []
    grouped: set[str] = set()
    for pattern, members in sets.items():
        numbers = [n for n, _ in members]
        # tcpdump -C names the first file without a number: a lone `x.pcap` is no set.
        if len(members) < 2 or len(set(numbers)) != len(numbers):
            continue
        ordered = tuple(c for _, c in sorted(members, key=lambda nc: nc[0]))
        units.append(Unit(ordered, pattern))
        grouped.update(c.name for c in ordered)
    units += [Unit((c,)) for c in captures if c.name not in grouped]
    return sorted(units, key=lambda u: u.members[0].name)
