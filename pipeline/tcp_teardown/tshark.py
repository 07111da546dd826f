"""Find, version-check and run tshark; the EK field table, declared once.

tshark is the reference dissector. We ask it for raw header fields only and switch
off everything that makes it hold per-packet state (sequence analysis, reassembly,
protocols above TCP): that keeps its memory near 60 bytes a packet instead of ~650.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tcp_teardown.errors import ExitCode, TeardownError

MIN_VERSION = (4, 0)
TSHARK_ENV = "TCP_TEARDOWN_TSHARK"


@dataclass(frozen=True)
class Field:
    """One tshark field and the column it becomes in the packet table."""

    tshark: str  # the display-filter field name
    column: str  # our raw column name (EK turns "ip.src" into "ip_src")
    kind: str  # how the EK text is parsed: int, hex, float, str


# The field table. Several fields are read raw and merged by ingest.py (ip/ipv6, ttl/hlim).
FIELDS: tuple[Field, ...] = (
    Field("frame.number", "frame_number", "int"),
    Field("frame.time_epoch", "ts", "float"),
    Field("ip.proto", "ip_proto", "int"),
    Field("ip.src", "ip_src", "str"),
    Field("ip.dst", "ip_dst", "str"),
    Field("ipv6.src", "ipv6_src", "str"),
    Field("ipv6.dst", "ipv6_dst", "str"),
    Field("ip.ttl", "ip_ttl", "int"),
    Field("ipv6.hlim", "ipv6_hlim", "int"),
    Field("ip.id", "ip_id", "hex"),
    Field("tcp.srcport", "src_port", "int"),
    Field("tcp.dstport", "dst_port", "int"),
    Field("tcp.flags", "tcp_flags", "hex"),
    Field("tcp.seq_raw", "seq_raw", "int"),
    Field("tcp.ack_raw", "ack_raw", "int"),
    Field("tcp.len", "payload_len", "int"),
    Field("tcp.window_size_value", "window", "int"),
    Field("tcp.stream", "tcp_stream", "int"),
)

# Preferences that make tshark forget per-packet TCP state our raw fields do not need.
LEAN_PREFERENCES: tuple[str, ...] = (
    "tcp.analyze_sequence_numbers:FALSE",
    "tcp.desegment_tcp_streams:FALSE",
    "tcp.calculate_timestamps:FALSE",
    "tcp.track_bytes_in_flight:FALSE",
    "tcp.relative_sequence_numbers:FALSE",
    "tcp.try_heuristic_first:FALSE",
    "tcp.check_checksum:FALSE",
    "ip.check_checksum:FALSE",
    "ip.defragment:FALSE",
    "ipv6.defragment:FALSE",
)

# Protocols that ride on TCP but also carry IP or TCP themselves: never disable these,
# or a tunnel's inner connection would vanish. Disabling a protocol disables it on every
# transport: GTP registers a TCP port too, and without it GTP-U over UDP (mobile core
# captures) would lose every inner TCP segment.
KEEP_PROTOCOLS = frozenset({"ip", "ipv6", "tcp", "eth", "ppp", "gre", "l2tp", "sstp", "openvpn",
                            "gtp"})

# Heuristic dissectors tshark ships disabled that find TCP inside tunnels. Teredo (IPv6 in
# UDP, RFC 4380) uses no fixed port once a host is qualified, so only its heuristic sees
# it; the heuristic checks for a well-formed IPv6 header, so plain UDP is not mistaken.
TUNNEL_HEURISTICS: tuple[str, ...] = ("teredo_udp",)


@dataclass(frozen=True)
class Tshark:
    """A located, version-checked tshark."""

    path: str
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


def candidate_paths(explicit: str | None = None) -> list[tuple[str, str | None]]:
    """Where tshark is looked for, in order, with what each place names."""
    places: list[tuple[str, str | None]] = [
        ("--tshark option", explicit),
        (f"${TSHARK_ENV}", os.environ.get(TSHARK_ENV)),
        ("PATH", shutil.which("tshark")),
    ]
    places += [(p, p) for p in ("/usr/bin/tshark", "/usr/local/bin/tshark",
                                "/opt/homebrew/bin/tshark",
                                "/Applications/Wireshark.app/Contents/MacOS/tshark")]
    return places


def find_tshark(explicit: str | None = None) -> Tshark:
    """Locate tshark (option, environment variable, PATH, usual places) and check its version."""
    looked: list[str] = []
    for where, candidate in candidate_paths(explicit):
        if not candidate:
            looked.append(f"{where} (unset)")
            continue
        path = shutil.which(candidate) if os.sep not in candidate else candidate
        if path and os.access(path, os.X_OK) and not os.path.isdir(path):
            return Tshark(path, _checked_version(path))
        looked.append(f"{where} ({candidate})")
        if where != "PATH" and not where.startswith("/"):
            break  # an explicit choice (option or variable) that fails is an error, not a hint
    raise TeardownError(
        "tshark not found (install Wireshark's tshark, e.g. apt-get install tshark); looked in: "
        + ", ".join(looked),
        ExitCode.TSHARK_MISSING,
    )


@lru_cache(maxsize=8)
def _checked_version(path: str) -> tuple[int, int, int]:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TeardownError(f"tshark at {path} does not run: {exc}", ExitCode.TSHARK_MISSING) from exc
    version = parse_version(out)
    if version is None:
        raise TeardownError(
            f"tshark at {path} did not report a version (got {out[:60]!r})", ExitCode.TSHARK_TOO_OLD
        )
    if not is_recent_enough(version):
        raise TeardownError(
            f"tshark {'.'.join(map(str, version))} at {path} is too old: "
            f"tcp-teardown needs tshark {MIN_VERSION[0]}.{MIN_VERSION[1]} or newer",
            ExitCode.TSHARK_TOO_OLD,
        )
    return version


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The version from `tshark --version` output ("TShark (Wireshark) 4.0.17 (...)")."""
    match = re.search(r"TShark \(Wireshark\) (\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def is_recent_enough(version: tuple[int, int, int]) -> bool:
    return version[:2] >= MIN_VERSION


@lru_cache(maxsize=8)
def protocols_above_tcp(path: str) -> tuple[str, ...]:
    """Protocols tshark would hand TCP payload to (by port or heuristic): we disable them all.

    `--disable-protocol ALL` silently does nothing in 4.0, so we name them one by one.
    """
    names: set[str] = set()
    decodes = subprocess.run([path, "-G", "decodes"], capture_output=True, text=True,
                             timeout=60, check=False).stdout
    for line in decodes.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] == "tcp.port":
            names.add(parts[2].strip())
    heuristics = subprocess.run([path, "-G", "heuristic-decodes"], capture_output=True,
                                text=True, timeout=60, check=False).stdout
    for line in heuristics.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0] == "tcp":
            names.add(parts[1].strip())
    return tuple(sorted(n for n in names if n and n.lower() not in KEEP_PROTOCOLS))


def ek_command(tshark: Tshark, capture: str, lean: bool = True) -> list[str]:
    """The tshark command line that prints our fields as EK JSON, one packet per line."""
    cmd = [tshark.path, "-n", "-r", capture, "-T", "ek", "-Y", "tcp and not icmp and not icmpv6"]
    for field in FIELDS:
        cmd += ["-e", field.tshark]
    cmd += ["-E", "occurrence=a"]
    for heuristic in TUNNEL_HEURISTICS:
        cmd += ["--enable-heuristic", heuristic]
    if lean:
        for pref in LEAN_PREFERENCES:
            cmd += ["-o", pref]
        for proto in protocols_above_tcp(tshark.path):
            cmd += ["--disable-protocol", proto]
    return cmd


def tshark_env() -> dict[str, str]:
    """A private, empty configuration folder: the user's profile must not change our fields."""
    env = dict(os.environ)
    env["WIRESHARK_CONFIG_DIR"] = str(_private_config_dir())
    return env


@lru_cache(maxsize=1)
def _private_config_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "tcp-teardown" / "wireshark-config"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="tcp-teardown-wsconf-"))
    return folder
