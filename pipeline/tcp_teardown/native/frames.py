"""What the format readers (pcap, pcapng) hand to the decoder: one window of frames."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tcp_teardown.codes import sorted_distinct
from tcp_teardown.native.chains import RecordLayout, Walk, walk_records
from tcp_teardown.native.errors import NativeUnsupported, TruncatedCapture
from tcp_teardown.native.files import ByteSource
from tcp_teardown.native.views import Views, blocks

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


class RecordHeader(Protocol):
    """A record header just before each frame's data that tells its wire length and time
    (pcap's). Left unread by the format reader: the decoder reads it in the same gather
    as the frame's first headers, and `Frames` reads it for the frames the decoder
    does not (one gather of each record instead of two)."""

    fields: np.dtype  # its layout: at least "wirelen", which Wireshark calls the reported length

    def timestamps(self, head: np.ndarray, out: np.ndarray) -> None:
        """The time of each frame (`head`: gathered headers, of type `fields`) into `out`."""
        ...


@dataclass
class Frames:
    """The frames of one window, in capture order (every frame, TCP or not)."""

    views: Views  # the window's bytes
    data: np.ndarray  # int64 offset of each frame's first byte in the window
    caplen: np.ndarray  # int64 captured bytes
    link: np.ndarray  # int32 link type of each frame
    first_frame: int  # frame number (1-based) of the first frame
    # The wire lengths and times, if the format reader read them; else read from `record`
    # when first asked for (as `wirelen` and `ts`).
    known_wirelen: np.ndarray | None = None
    known_ts: np.ndarray | None = None
    record: RecordHeader | None = None

    def __len__(self) -> int:
        return len(self.data)

    @property
    def wirelen(self) -> np.ndarray:
        """int64 bytes on the wire (Wireshark's "reported length")."""
        return self._records()[0]

    @property
    def ts(self) -> np.ndarray:
        """float64 seconds since the epoch."""
        return self._records()[1]

    def _records(self) -> tuple[np.ndarray, np.ndarray]:
        if self.known_wirelen is None or self.known_ts is None:
            self._read_records()
        assert self.known_wirelen is not None and self.known_ts is not None
        return self.known_wirelen, self.known_ts

    def _read_records(self) -> None:
        record = self.record
        assert record is not None, "frames without wire lengths and times"
        wirelen = np.empty(len(self), dtype=np.int64)
        ts = np.empty(len(self), dtype=np.float64)
        for part in blocks(len(self)):
            head = self.views.gather(self.data[part] - record.fields.itemsize, record.fields)
            np.copyto(wirelen[part], head["wirelen"], casting="unsafe")
            record.timestamps(head, ts[part])
        self.known_wirelen, self.known_ts = wirelen, ts

    def take(self, index: np.ndarray | slice) -> Frames:
        """Some of the frames (`first_frame` stays: frame numbers are the caller's)."""
        return Frames(
            views=self.views,
            data=self.data[index],
            caplen=self.caplen[index],
            link=self.link[index],
            first_frame=self.first_frame,
            known_wirelen=None if self.known_wirelen is None else self.known_wirelen[index],
            known_ts=None if self.known_ts is None else self.known_ts[index],
            record=self.record,
        )

    def part(self, start: int, stop: int) -> Frames:
        """Frames [start, stop), numbered as in the file."""
        if start == 0 and stop >= len(self):
            return self
        part = self.take(slice(start, stop))
        part.first_frame = self.first_frame + start
        return part


def check_links(links: np.ndarray) -> None:
    """Decline a window that has frames of a link type the decoder does not know."""
    unknown = set(sorted_distinct(links).tolist()) - SUPPORTED_LINKS
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
