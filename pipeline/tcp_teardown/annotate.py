"""Frame comments that carry the analysis back into the capture, for Wireshark to show.

One comment per annotated frame, made of one piece per label the frame proves:

    tcp-teardown: fin_simultaneous (second FIN); tcp-teardown: fin_retransmitted (second FIN)

The piece always ends in " (", roles, ")", so a display filter can name one label
exactly: `frame.comment contains "tcp-teardown: refused ("` does not also match
`refused_after_handshake`. With `all_frames`, every other frame of a selected connection
gets a piece naming its connection and labels (`tcp-teardown flow <flow_id>: ...`), which
filters on the key-frame pieces never match.

The comments come from the shared analysis (`api.analyze`): nothing here decides a label.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tcp_teardown.vocab import CLOSE_VALUES, FLAG_VALUES, OPEN_VALUES

if TYPE_CHECKING:
    import pandas as pd

    from tcp_teardown.pcapng_writer import Packet

COMMENT_PREFIX = "tcp-teardown"
KEY_PREFIX = f"{COMMENT_PREFIX}: "  # starts every key-frame piece
FLOW_PREFIX = f"{COMMENT_PREFIX} flow "  # starts every all-frames piece
PIECE_SEPARATOR = "; "
UNLABELLED = "key frame"  # stands in for the label of a key frame that proves none

# Every label a frame can prove, in taxonomy order (open, close, flags).
ALL_LABELS: tuple[str, ...] = tuple(dict.fromkeys((*OPEN_VALUES, *CLOSE_VALUES, *FLAG_VALUES)))


def label_filter(label: str) -> str:
    """The display filter that selects the key frames proving `label` in an annotated capture."""
    return f'frame.comment contains "{KEY_PREFIX}{label} ("'


def piece(label: str, roles: Iterable[str]) -> str:
    """One label's part of a comment: `tcp-teardown: <label> (<role>, <role>)`."""
    return f"{KEY_PREFIX}{label} ({', '.join(roles)})"


def parse_labels(text: str | Iterable[str] | None) -> frozenset[str] | None:
    """A label selection from "a,b" or a list; None (or nothing given) means every label.

    Unknown names are an error rather than silently matching nothing.
    """
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in items if n.strip()]
    if not names:
        return None
    unknown = sorted(set(names) - set(ALL_LABELS))
    if unknown:
        raise ValueError(
            f"unknown label(s) {', '.join(unknown)}; known: {', '.join(ALL_LABELS)}"
        )
    return frozenset(names)


def _as_list(value: Any) -> list[str]:
    """A list cell of a DataFrame (list, numpy array or missing) as a list of str."""
    if value is None:
        return []
    try:
        return [str(v) for v in value]
    except TypeError:
        return []  # a scalar NA


def key_frame_comments(
    frames: pd.DataFrame, labels: Collection[str] | None = None
) -> dict[int, str]:
    """`frame_number -> comment` for the key frames of one capture (rows of schema.FRAMES).

    With `labels`, only those labels are written and frames proving none of them get no
    comment; without, every key frame gets one (a frame that proves no label is written as
    `tcp-teardown: key frame (<roles>)`, so the comments still show every key frame).
    Several rows for one frame (it is key in two connections) are merged into one comment.
    """
    pieces: dict[int, list[str]] = {}
    for number, roles, frame_labels in zip(
        frames["frame_number"], frames["roles"], frames["labels"], strict=True
    ):
        roles_l = _as_list(roles)
        wanted = [lb for lb in _as_list(frame_labels) if labels is None or lb in labels]
        if not wanted and labels is None and not _as_list(frame_labels):
            wanted = [UNLABELLED]
        for label in wanted:
            text = piece(label, roles_l)
            bucket = pieces.setdefault(int(number), [])
            if text not in bucket:
                bucket.append(text)
    return {n: PIECE_SEPARATOR.join(p) for n, p in sorted(pieces.items())}


def connection_labels(row: Any) -> list[str]:
    """The labels of one connection row (schema.CONNECTIONS): open, close, then flags."""
    return [str(row.open), str(row.close), *_as_list(row.flags)]


@dataclass(frozen=True)
class _Span:
    """Where a selected connection's frames are: its 4-tuple within a frame range."""

    first: int
    last: int
    ends: frozenset[tuple[bytes, int]]  # {(client ip, port), (server ip, port)}
    text: str


def flow_piece(row: Any) -> str:
    """The all-frames piece of a connection: `tcp-teardown flow <id>: open, close, flags`."""
    return f"{FLOW_PREFIX}{row.flow_id}: {', '.join(connection_labels(row))}"


def _spans(connections: pd.DataFrame, labels: Collection[str] | None) -> list[_Span]:
    spans = []
    for row in connections.itertuples(index=False):
        if labels is not None and not set(connection_labels(row)) & set(labels):
            continue
        try:
            client = ipaddress.ip_address(str(row.client_ip)).packed
            server = ipaddress.ip_address(str(row.server_ip)).packed
        except ValueError:
            continue
        ends = frozenset({(client, int(row.client_port)), (server, int(row.server_port))})
        spans.append(_Span(int(row.first_frame), int(row.last_frame), ends, flow_piece(row)))
    return spans


class FlowMatcher:
    """Finds the selected connection a packet belongs to, from its own headers.

    The analysis lists each connection's 4-tuple and frame range; a frame belongs to it
    when its TCP endpoints are that 4-tuple and its number is in the range (a reused
    4-tuple gives connections with disjoint ranges). Only the headers needed to read the
    4-tuple are parsed; frames that cannot be parsed are left uncommented.
    """

    def __init__(self, spans: list[_Span]) -> None:
        self._by_ends: dict[frozenset[tuple[bytes, int]], list[_Span]] = {}
        for span in spans:
            self._by_ends.setdefault(span.ends, []).append(span)

    def piece_for(self, packet: Packet) -> str | None:
        if not self._by_ends:
            return None
        ends = tcp_endpoints(packet.linktype, packet.data)
        if ends is None:
            return None
        for span in self._by_ends.get(frozenset(ends), ()):
            if span.first <= packet.frame_number <= span.last:
                return span.text
        return None


# --- just enough link/IP parsing to read a 4-tuple -----------------------------------------
LINKTYPE_NULL = 0  # BSD loopback, host byte order family
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108  # OpenBSD loopback, network byte order family
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = frozenset({0x8100, 0x88A8, 0x9100})  # 802.1Q, 802.1ad, old QinQ
BSD_AF_INET6 = frozenset({10, 24, 28, 30})  # AF_INET6 on Linux, BSDs and macOS
IPPROTO_TCP = 6
IPV6_EXTENSION_HEADERS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options


def _network_offset(linktype: int, data: bytes) -> tuple[int, int] | None:
    """(offset of the IP header, IP version) for the link types captures commonly use."""
    if linktype == LINKTYPE_ETHERNET:
        offset, ethertype = 14, int.from_bytes(data[12:14], "big")
        while ethertype in ETHERTYPE_VLAN and len(data) >= offset + 4:
            ethertype = int.from_bytes(data[offset + 2 : offset + 4], "big")
            offset += 4
    elif linktype == LINKTYPE_LINUX_SLL:
        offset, ethertype = 16, int.from_bytes(data[14:16], "big")
    elif linktype == LINKTYPE_LINUX_SLL2:
        offset, ethertype = 20, int.from_bytes(data[0:2], "big")
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        family = struct.unpack("<I" if linktype == LINKTYPE_NULL else ">I", data[:4])[0]
        if linktype == LINKTYPE_NULL and family > 0xFFFF:
            family = struct.unpack(">I", data[:4])[0]  # written on a big-endian host
        ethertype = ETHERTYPE_IPV6 if family in BSD_AF_INET6 else ETHERTYPE_IPV4
        offset = 4
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        offset = 0
        ethertype = ETHERTYPE_IPV6 if data[:1] and data[0] >> 4 == 6 else ETHERTYPE_IPV4
    else:
        return None
    if ethertype == ETHERTYPE_IPV4:
        return offset, 4
    if ethertype == ETHERTYPE_IPV6:
        return offset, 6
    return None


def tcp_endpoints(linktype: int, data: bytes) -> tuple[tuple[bytes, int], tuple[bytes, int]] | None:
    """((src ip, src port), (dst ip, dst port)) of a TCP frame, or None if not plain TCP/IP."""
    try:
        where = _network_offset(linktype, data)
        if where is None:
            return None
        off, version = where
        if version == 4:
            ihl = (data[off] & 0x0F) * 4
            if data[off] >> 4 != 4 or data[off + 9] != IPPROTO_TCP:
                return None
            src, dst = data[off + 12 : off + 16], data[off + 16 : off + 20]
            tcp = off + ihl
        else:
            if data[off] >> 4 != 6:
                return None
            nxt, src, dst = data[off + 6], data[off + 8 : off + 24], data[off + 24 : off + 40]
            tcp = off + 40
            while nxt in IPV6_EXTENSION_HEADERS:
                nxt, tcp = data[tcp], tcp + (data[tcp + 1] + 1) * 8
            if nxt != IPPROTO_TCP:
                return None
        sport, dport = struct.unpack(">HH", data[tcp : tcp + 4])
    except (IndexError, struct.error):
        return None
    return (bytes(src), sport), (bytes(dst), dport)


# --- whole captures ------------------------------------------------------------------------
@dataclass(frozen=True)
class Annotations:
    """What to add to each frame of one capture."""

    key: dict[int, str]  # frame_number -> key-frame comment
    matcher: FlowMatcher | None = None  # set for all_frames

    def comment_for(self, packet: Packet) -> list[str]:
        """The one comment for `packet` (as a list of zero or one item)."""
        parts = [self.key[packet.frame_number]] if packet.frame_number in self.key else []
        if self.matcher is not None:
            flow = self.matcher.piece_for(packet)
            if flow is not None:
                parts.append(flow)
        return [PIECE_SEPARATOR.join(parts)] if parts else []


def build_annotations(
    frames: pd.DataFrame,
    connections: pd.DataFrame | None = None,
    labels: Collection[str] | None = None,
    all_frames: bool = False,
) -> Annotations:
    """The comments for one capture, from its rows of `Result.frames` / `Result.connections`."""
    matcher = None
    if all_frames and connections is not None:
        matcher = FlowMatcher(_spans(connections, labels))
    return Annotations(key_frame_comments(frames, labels), matcher)


def analyze_for_comments(
    capture: Path,
    labels: Collection[str] | None = None,
    all_frames: bool = False,
    idle_threshold: float = 5.0,
    msl: float = 30.0,
) -> Annotations:
    """Run the shared analysis on one capture and turn it into comments."""
    from tcp_teardown import api  # heavy (pandas, pyarrow): only when a capture is analyzed

    result = api.analyze([capture], idle_threshold=idle_threshold, msl=msl)
    return build_annotations(result.frames, result.connections, labels, all_frames)


def write_annotated(capture: Path, annotations: Annotations, stream: Any) -> int:
    """Stream `capture` into `stream` as pcapng with the comments; returns frames written.

    Comments an earlier run left (starting with "tcp-teardown") are dropped, so
    annotating an annotated capture replaces its comments instead of doubling them.
    """
    from tcp_teardown.pcapng_writer import CaptureReader, PcapngWriter, replay

    writer = PcapngWriter(stream, userappl=_userappl())
    with CaptureReader(capture) as reader:
        return replay(reader, writer, annotations.comment_for, COMMENT_PREFIX)


def _userappl() -> str:
    try:
        from importlib.metadata import version

        return f"tcp-teardown {version('tcp-teardown')}"
    except Exception:  # not installed (running from a source tree): name only
        return "tcp-teardown"


def annotate_file(
    capture: Path,
    out: Path,
    labels: Collection[str] | None = None,
    all_frames: bool = False,
    idle_threshold: float = 5.0,
    msl: float = 30.0,
) -> int:
    """Write `capture` with comments to `out` (pcapng); returns the number of frames.

    Written to a temporary name in the same folder and renamed at the end, so `out` is
    either the finished result or untouched (also when `out` is the input itself). A
    capture cut short mid-record is handled like the analysis does: the frames before
    the cut are written, then `TruncatedCapture` is raised.
    """
    from tcp_teardown.errors import TruncatedCapture
    from tcp_teardown.pcapng_writer import CaptureFormatError

    annotations = analyze_for_comments(capture, labels, all_frames, idle_threshold, msl)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    damage: CaptureFormatError | None = None
    try:
        with os.fdopen(fd, "wb") as stream:
            try:
                frames = write_annotated(capture, annotations, stream)
            except CaptureFormatError as exc:
                damage = exc
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if damage is not None:
        text = str(damage)
        if not text.startswith(str(capture)):
            text = f"{capture}: {text}"
        raise TruncatedCapture(f"{text}; the frames before the cut were written to {out}")
    return frames
