"""Classic pcap: the file header, and the record index of each window."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tcp_teardown.native.chains import RecordLayout, Walk
from tcp_teardown.native.errors import NativeUnsupported, TruncatedCapture
from tcp_teardown.native.files import ByteSource
from tcp_teardown.native.frames import MAX_CAPLEN, Frames, check_links, iter_windows, truncated_tail
from tcp_teardown.native.views import Views

HEADER = 24
RECORD_HEADER = 16
RECORD_FIELDS = ("seconds", "fraction", "caplen", "wirelen")
# Guessed record starts must have a timestamp within this many seconds of the window's
# first record. A capture that jumps further only loses guesses (slower, still exact).
GUESS_TS_SPAN = 30 * 86400

# magic as read little-endian -> (file is little-endian, nanosecond timestamps)
MAGICS = {
    0xA1B2C3D4: (True, False),
    0xD4C3B2A1: (False, False),
    0xA1B23C4D: (True, True),
    0x4D3CB2A1: (False, True),
}
# Variants with longer record headers (Kuznetzov/Nokia "modified" pcap): declined.
MODIFIED_MAGICS = {0xA1B2CD34, 0x34CDB2A1}


@dataclass(frozen=True)
class PcapHeader:
    little: bool
    nanoseconds: bool
    snaplen: int
    link: int


def is_pcap(head: bytes) -> bool:
    if len(head) < 4:
        return False
    magic = struct.unpack("<I", head[:4])[0]
    return magic in MAGICS or magic in MODIFIED_MAGICS


def parse_header(head: bytes) -> PcapHeader:
    if len(head) < HEADER:
        raise NativeUnsupported("pcap file header is incomplete")
    magic = struct.unpack("<I", head[:4])[0]
    if magic in MODIFIED_MAGICS:
        raise NativeUnsupported("modified (extended record header) pcap")
    little, nanoseconds = MAGICS[magic]
    order = "<" if little else ">"
    _major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack(order + "HHiIII", head[4:24])
    # The top bits of the link type field carry FCS information, not the link type.
    return PcapHeader(little, nanoseconds, snaplen, network & 0x03FFFFFF)


def _layout(header: PcapHeader, views: Views) -> RecordLayout:
    u32 = views.u32(header.little)
    order = "<" if header.little else ">"
    unpack = struct.Struct(order + "I").unpack_from
    buf = views.buf
    frac_limit = 1_000_000_000 if header.nanoseconds else 1_000_000
    reference = int(u32[0]) if views.n >= 4 else 0
    low = np.uint32((reference - GUESS_TS_SPAN) & 0xFFFFFFFF)
    span = np.uint32(2 * GUESS_TS_SPAN)

    def length(p: np.ndarray) -> np.ndarray:
        return u32[p + 8].astype(np.int64) + RECORD_HEADER

    caplens = u32[8:]
    last = len(caplens) - 1

    def advance(p: np.ndarray) -> np.ndarray:
        return p + caplens[np.minimum(p, last)] + RECORD_HEADER

    def scalar_length(p: int) -> int:
        return int(unpack(buf, p + 8)[0]) + RECORD_HEADER

    def plausible_fields(p: np.ndarray) -> np.ndarray:
        caplen = u32[p + 8]
        return (u32[p + 4] < frac_limit) & (caplen <= MAX_CAPLEN) & (caplen <= u32[p + 12])

    def plausible(p: np.ndarray) -> np.ndarray:
        ok = (u32[p] - low) <= span
        ok[ok] = plausible_fields(p[ok])
        return ok

    return RecordLayout(
        header=RECORD_HEADER,
        align=1,
        min_length=RECORD_HEADER,
        length=length,
        advance=advance,
        scalar_length=scalar_length,
        sane=None,
        # Wireshark stops at a longer record ("bad record")
        max_length=RECORD_HEADER + MAX_CAPLEN,
        prefilter=(
            # the seconds within GUESS_TS_SPAN of the window's first record
            (u32, 0, None, int(low), int(span)),
            # the top bytes of caplen and wirelen zero
            (views.u8, 11 if header.little else 8, None, 0, 0),
            (views.u8, 15 if header.little else 12, None, 0, 0),
        ),
        plausible=plausible,
    )


def timestamps(seconds: np.ndarray, fraction: np.ndarray, per_second: int,
               out: np.ndarray | None = None) -> np.ndarray:
    """float64 seconds, rounded as tshark's printed `frame.time_epoch` would parse."""
    ticks = seconds.astype(np.int64)
    ticks *= per_second
    ticks += fraction.astype(np.int64, copy=False)
    if per_second <= 1_000_000:
        # exact integers below 2**53, so one correctly rounded division
        return np.divide(ticks, per_second, out=out)
    exact = (ticks.astype(np.longdouble) / per_second).astype(np.float64)
    if out is None:
        return exact
    out[...] = exact
    return out


@dataclass(frozen=True)
class _RecordHeader:
    """The pcap record header, for `Frames` (see frames.RecordHeader)."""

    fields: np.dtype
    per_second: int

    def timestamps(self, head: np.ndarray, out: np.ndarray) -> None:
        if self.per_second > 1_000_000:
            timestamps(head["seconds"], head["fraction"], self.per_second, out=out)
            return
        # `timestamps` in float64 throughout, without temporaries: with 32-bit fields the
        # tick count is an integer below 2**53, so every step is exact but the division.
        np.multiply(head["seconds"], float(self.per_second), out=out)
        out += head["fraction"]
        out /= self.per_second


def read_frames(source: ByteSource, head: bytes) -> Iterator[Frames]:
    """Every frame of a pcap file, window by window."""
    header = parse_header(head)
    check_links(np.array([header.link]))
    frame_no = 1
    last = None
    for views, walk in iter_windows(source, HEADER, lambda v: _layout(header, v)):
        last = (views, walk)
        if walk.offsets.size:
            frames = _frames(header, views, walk, frame_no)
            frame_no += len(frames)
            yield frames
        if walk.status == "bad":
            # tshark too stops there, after printing the frames before it
            raise TruncatedCapture(frame_no - 1, "a damaged record follows (tshark: bad record)")
    if last is not None:
        truncated_tail(source, last[1], last[0], frame_no - 1)


def _frames(header: PcapHeader, views: Views, walk: Walk, first_frame: int) -> Frames:
    """The frames of the records a walk found (wire lengths and times read later, with
    the frames' first headers)."""
    offsets = walk.offsets
    # Records are back to back, so a record's captured length is the gap to the next.
    caplen = np.diff(offsets, append=walk.end)
    caplen -= RECORD_HEADER
    order = "<" if header.little else ">"
    record = _RecordHeader(
        fields=np.dtype([(f, order + "u4") for f in RECORD_FIELDS]),
        per_second=1_000_000_000 if header.nanoseconds else 1_000_000,
    )
    return Frames(
        views=views,
        data=offsets + RECORD_HEADER,
        caplen=caplen,
        link=np.broadcast_to(np.int32(header.link), offsets.shape),  # one link type for all
        first_frame=first_frame,
        record=record,
    )
