"""What the format readers (pcap, pcapng) hand to the decoder: one window of frames."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from tcp_teardown.native.chains import RecordLayout, Walk, walk_records
from tcp_teardown.native.errors import NativeUnsupported, TruncatedCapture
from tcp_teardown.native.files import ByteSource
from tcp_teardown.native.views import Views

# Link types the decoder understands (pcap LINKTYPE_ values).
LINK_NULL = 0
LINK_ETHERNET = 1
LINK_RAW_12 = 12
LINK_RAW_14 = 14
LINK_RAW = 101
LINK_LOOP = 108
LINK_SLL = 113
LINK_IPV4 = 228
LINK_IPV6 = 229
LINK_SLL2 = 276
SUPPORTED_LINKS = frozenset(
    {
        LINK_NULL,
        LINK_ETHERNET,
        LINK_RAW_12,
        LINK_RAW_14,
        LINK_RAW,
        LINK_LOOP,
        LINK_SLL,
        LINK_IPV4,
        LINK_IPV6,
        LINK_SLL2,
    }
)

# Wireshark refuses records longer than this for the link types above ("bad record").
MAX_CAPLEN = 262144


@dataclass
class Frames:
    """The frames of one window, in capture order (every frame, TCP or not)."""

    views: Views  # the window's bytes
    data: np.ndarray  # int64 offset of each frame's first byte in the window
    caplen: np.ndarray  # int64 captured bytes
    wirelen: np.ndarray  # int64 bytes on the wire (Wireshark's "reported length")
    ts: np.ndarray  # float64 seconds since the epoch
    link: np.ndarray  # int32 link type of each frame
    first_frame: int  # frame number (1-based) of the first frame

    def __len__(self) -> int:
        return len(self.data)

    def take(self, index: np.ndarray) -> Frames:
        """Some of the frames (`first_frame` stays: frame numbers are the caller's)."""
        return Frames(
            views=self.views,
            data=self.data[index],
            caplen=self.caplen[index],
            wirelen=self.wirelen[index],
            ts=self.ts[index],
            link=self.link[index],
            first_frame=self.first_frame,
        )


def check_links(links: np.ndarray) -> None:
    """Decline a window that has frames of a link type the decoder does not know."""
    unknown = set(np.unique(links).tolist()) - SUPPORTED_LINKS
    if unknown:
        raise NativeUnsupported(f"link type(s) {sorted(unknown)} not supported natively")


def iter_windows(
    source: ByteSource,
    start: int,
    make_layout: Callable[[Views], RecordLayout],
) -> Iterator[tuple[Views, Walk]]:
    """Walk records window by window from byte `start` of `source`.

    Yields each window with the records completely inside it; the bytes after the last
    complete record are carried into the next window. Ends after a window whose walk
    stopped ("stop"/"bad": the source is then positioned at that record) or at the end
    of the data; the caller inspects the last walk.
    """
    source.consume(start)
    min_bytes = 0
    while True:
        buf = source.window(min_bytes)
        views = Views(buf)
        walk = walk_records(make_layout(views), views.n, 0)
        yield views, walk
        if walk.status != "more":
            source.consume(walk.end)  # the caller resumes at the stop/bad record
            return
        if source.at_end:
            return  # clean end, or a partial record the caller reports
        if walk.end == 0:
            # A record longer than the window: ask for a bigger one.
            min_bytes = max(2 * views.n, 1 << 20)
            continue
        min_bytes = 0
        source.consume(walk.end)


def truncated_tail(source: ByteSource, walk: Walk, views: Views, frames_read: int) -> None:
    """After the last window: raise TruncatedCapture if bytes of a partial record remain."""
    leftover = views.n - walk.end
    if leftover > 0 or source.cut_short:
        detail = f"{leftover} bytes of an incomplete record" if leftover else "stream cut short"
        raise TruncatedCapture(frames_read, detail)
