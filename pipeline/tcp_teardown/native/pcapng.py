"""pcapng: sections, interfaces and packet blocks (EPB, SPB and the obsolete PB)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from tcp_teardown.codes import sorted_distinct
from tcp_teardown.native.chains import RecordLayout
from tcp_teardown.native.errors import NativeUnsupported, TruncatedCapture
from tcp_teardown.native.files import ByteSource
from tcp_teardown.native.frames import LINK_ETHERNET, Frames, check_links, iter_windows, truncated_tail
from tcp_teardown.native.pcap import timestamps
from tcp_teardown.native.views import Views, is_in

SHB = 0x0A0D0D0A
IDB = 1
PB = 2  # obsolete Packet Block
SPB = 3
EPB = 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D
MAX_BLOCK = 1 << 24  # longer blocks are not guessed at (still read when walked to)
MAX_WALKED_BLOCK = 1 << 28  # longer ones are taken for corruption (and declined)
# Blocks Wireshark 4.0 counts as frames although they hold no packet: systemd journal
# entries and custom blocks (either kind). They take a frame number and give no row.
# (Sysdig blocks, 0x2xx, are partly frames: files with them are declined.)
EMPTY_FRAMES = np.array([9, 0x00000BAD, 0x40000BAD])
OPTION_TSRESOL = 9
BLOCK_FIELDS = ("type", "length", "interface", "high", "low", "caplen", "wirelen")
OPTION_TSOFFSET = 14


@dataclass
class Interface:
    link: int
    snaplen: int
    units_per_second: int = 1_000_000
    offset: int = 0  # seconds added to every timestamp (if_tsoffset)


@dataclass
class Section:
    little: bool
    interfaces: list[Interface] = field(default_factory=list)


def is_pcapng(head: bytes) -> bool:
    return head[:4] == b"\x0a\x0d\x0d\x0a"


def _layout(little: bool, views: Views) -> RecordLayout:
    u32 = views.u32(little)
    order = "<" if little else ">"
    unpack = struct.Struct(order + "I").unpack_from
    buf = views.buf
    lengths = u32[4:]
    last = len(lengths) - 1

    def length(p: np.ndarray) -> np.ndarray:
        return u32[p + 4].astype(np.int64)

    def advance(p: np.ndarray) -> np.ndarray:
        return p + np.maximum(lengths[np.minimum(p, last)], 12)

    def scalar_length(p: int) -> int:
        return int(unpack(buf, p + 4)[0])

    def sane(p: np.ndarray, size: np.ndarray) -> np.ndarray:
        ok = (size % 4 == 0) & (size >= 12)
        ok[ok] = u32[p[ok] + size[ok] - 4] == size[ok]  # the trailing copy of the length
        return ok

    def stop(p: np.ndarray) -> np.ndarray:
        return u32[p] == SHB

    def plausible(p: np.ndarray) -> np.ndarray:
        size = u32[p + 4].astype(np.int64)
        ok = ((u32[p] - np.uint32(1)) <= 5) & (size % 4 == 0) & (size >= 12)
        ok &= (size <= MAX_BLOCK) & (p + size <= views.n)
        ok[ok] = u32[p[ok] + size[ok] - 4] == size[ok]
        return ok

    top, bottom = (7, 4) if little else (4, 7)
    return RecordLayout(
        header=8,
        align=4,
        min_length=12,
        length=length,
        advance=advance,
        scalar_length=scalar_length,
        sane=sane,
        max_length=MAX_WALKED_BLOCK,
        prefilter=(
            (u32, 0, None, 1, 5),  # a block type from IDB (1) to EPB (6)
            (views.u8, top, None, 0, 0),  # a length below 16 MiB
            (views.u8, bottom, 3, 0, 0),  # ... and a multiple of 4
        ),
        plausible=plausible,
        stop=stop,
    )


def _section_header(source: ByteSource) -> Section | None:
    """Read the Section Header Block at the current position (None at the end of data)."""
    buf = source.window(0)
    if len(buf) == 0:
        return None
    if len(buf) < 12:
        raise TruncatedCapture(0, "section header cut short")
    head = buf[:12].tobytes()
    if struct.unpack("<I", head[:4])[0] != SHB:
        raise NativeUnsupported("pcapng: expected a section header block")
    magic = head[8:12]
    if magic == struct.pack("<I", BYTE_ORDER_MAGIC):
        little = True
    elif magic == struct.pack(">I", BYTE_ORDER_MAGIC):
        little = False
    else:
        raise NativeUnsupported("pcapng: bad byte-order magic")
    size = struct.unpack("<I" if little else ">I", head[4:8])[0]
    if size < 28 or size % 4:
        raise NativeUnsupported("pcapng: bad section header length")
    if len(source.window(size)) < size:
        raise TruncatedCapture(0, "section header cut short")
    major = struct.unpack("<H" if little else ">H", buf[12:14].tobytes())[0]
    if major != 1:
        raise NativeUnsupported(f"pcapng major version {major}")
    source.consume(size)
    return Section(little)


def _interface(views: Views, p: int, little: bool) -> Interface:
    order = "<" if little else ">"
    buf = views.buf
    size = struct.unpack_from(order + "I", buf, p + 4)[0]
    link, _reserved, snaplen = struct.unpack_from(order + "HHI", buf, p + 8)
    interface = Interface(link=link, snaplen=snaplen)
    at, end = p + 16, p + size - 4
    while at + 4 <= end:
        code, length = struct.unpack_from(order + "HH", buf, at)
        if code == 0:
            break
        value = bytes(buf[at + 4 : at + 4 + length])
        if code == OPTION_TSRESOL and length >= 1:
            exponent = value[0] & 0x7F
            interface.units_per_second = 2**exponent if value[0] & 0x80 else 10**exponent
        elif code == OPTION_TSOFFSET and length >= 8:
            interface.offset = struct.unpack(order + "q", value[:8])[0]
        at += 4 + length + (-length % 4)
    return interface


def read_frames(source: ByteSource) -> Iterator[Frames]:
    """Every frame of a pcapng file (all sections), window by window."""
    frame_no = 1
    while True:
        try:
            section = _section_header(source)
        except TruncatedCapture as exc:
            raise TruncatedCapture(frame_no - 1, str(exc)) from exc
        if section is None:
            return
        last = None
        for views, walk in iter_windows(source, 0, lambda v, s=section: _layout(s.little, v)):
            last = (views, walk)
            frames = _frames(views, walk.offsets, section, frame_no)
            if frames is not None:
                frame_no += len(frames)
                yield frames
            if walk.status == "bad":
                # tshark too stops there, after printing the frames before it
                raise TruncatedCapture(frame_no - 1, "a damaged block follows")
        if last is None or last[1].status != "stop":
            if last is not None:
                truncated_tail(source, last[1], last[0], frame_no - 1)
            return


def _frames(views: Views, offsets: np.ndarray, section: Section, frame_no: int) -> Frames | None:
    kinds = views.u32(section.little)[offsets].astype(np.int64)
    if ((kinds >= 0x200) & (kinds < 0x300)).any():
        raise NativeUnsupported("pcapng sysdig blocks: which of them are frames is not known here")
    idb_at = offsets[kinds == IDB]
    known_before = len(section.interfaces)
    for p in idb_at.tolist():
        section.interfaces.append(_interface(views, p, section.little))

    is_frame = (kinds == EPB) | (kinds == PB) | (kinds == SPB) | is_in(kinds, EMPTY_FRAMES)
    p = offsets[is_frame]
    if not p.size:
        return None
    kind = kinds[is_frame]
    if (kind == EPB).all():  # the common case, without the general bookkeeping below
        return _epb_frames(views, p, section, known_before, idb_at, frame_no)
    count = len(p)
    simple = kind == SPB
    empty = is_in(kind, EMPTY_FRAMES)
    interface = np.zeros(count, dtype=np.int64)
    caplen = np.zeros(count, dtype=np.int64)
    wirelen = np.zeros(count, dtype=np.int64)
    room = np.zeros(count, dtype=np.int64)
    ticks = np.zeros(count, dtype=np.uint64)
    full = np.flatnonzero(~simple & ~empty)
    if full.size:  # EPB and PB: one copy of each 28-byte block header
        order = "<" if section.little else ">"
        head = views.gather(p[full], np.dtype([(f, order + "u4") for f in BLOCK_FIELDS]))
        field = head["interface"].astype(np.int64)
        # the obsolete PB has a 16-bit interface id followed by a 16-bit drop count
        pb_field = (field & 0xFFFF) if section.little else (field >> 16)
        interface[full] = np.where(kind[full] == PB, pb_field, field)
        caplen[full] = head["caplen"]
        wirelen[full] = head["wirelen"]
        room[full] = head["length"].astype(np.int64) - 32
        ticks[full] = head["high"].astype(np.uint64) << np.uint64(32) | head["low"]
    spb = np.flatnonzero(simple)
    if spb.size:  # SPB: interface 0, captured length implied by the snapshot length
        u32 = views.u32(section.little)
        wirelen[spb] = u32[p[spb] + 8]
        room[spb] = u32[p[spb] + 4].astype(np.int64) - 16
    # an interface must be described before its first packet
    packet = ~empty
    if (interface[packet] >= known_before + np.searchsorted(idb_at, p[packet])).any():
        raise NativeUnsupported("pcapng packet refers to an undefined interface")
    if spb.size:
        snap = section.interfaces[0].snaplen
        caplen[spb] = np.minimum(wirelen[spb], snap) if snap > 0 else wirelen[spb]
    if (caplen > room).any():
        raise NativeUnsupported("pcapng packet longer than its block")
    data = p + np.where(simple, 12, 28)
    links = np.array([i.link for i in section.interfaces] or [0], dtype=np.int32)
    used = sorted_distinct(interface[packet]).tolist()
    check_links(links[used])
    ts = np.zeros(count, dtype=np.float64)
    for index in used:
        mine = (interface == index) & packet
        ts[mine] = _seconds(ticks[mine], section.interfaces[index])
    # simple packet blocks and frames without a packet have no timestamp: 0
    ts[simple | empty] = 0.0
    # frames without a packet: nothing to decode (caplen 0), any supported link type
    link = np.where(empty, LINK_ETHERNET, links[interface])
    return Frames(
        views=views,
        data=data,
        caplen=caplen,
        link=link,
        first_frame=frame_no,
        known_wirelen=wirelen,
        known_ts=ts,
    )


def _epb_frames(
    views: Views,
    p: np.ndarray,
    section: Section,
    known_before: int,
    idb_at: np.ndarray,
    frame_no: int,
) -> Frames:
    """Frames of a window whose packets are all Enhanced Packet Blocks."""
    order = "<" if section.little else ">"
    head = views.gather(p, np.dtype([(f, order + "u4") for f in BLOCK_FIELDS]))
    interface = head["interface"]
    caplen = head["caplen"].astype(np.int64)
    if (interface >= known_before + np.searchsorted(idb_at, p)).any():
        raise NativeUnsupported("pcapng packet refers to an undefined interface")
    if (caplen > head["length"].astype(np.int64) - 32).any():
        raise NativeUnsupported("pcapng packet longer than its block")
    ticks = head["high"].astype(np.uint64) << np.uint64(32) | head["low"]
    links = np.array([i.link for i in section.interfaces], dtype=np.int32)
    used = sorted_distinct(interface).tolist()
    check_links(links[used])
    if len(used) == 1:
        ts = _seconds(ticks, section.interfaces[used[0]])
        link = np.full(len(p), links[used[0]], dtype=np.int32)
    else:
        ts = np.zeros(len(p), dtype=np.float64)
        for index in used:
            mine = interface == index
            ts[mine] = _seconds(ticks[mine], section.interfaces[index])
        link = links[interface]
    return Frames(
        views=views,
        data=p + 28,
        caplen=caplen,
        link=link,
        first_frame=frame_no,
        known_wirelen=head["wirelen"].astype(np.int64),
        known_ts=ts,
    )


def _seconds(ticks: np.ndarray, interface: Interface) -> np.ndarray:
    """Float seconds of each timestamp, rounded as tshark's printed seconds and
    nanoseconds (Wireshark truncates finer resolutions to nanoseconds)."""
    units = interface.units_per_second
    if 1_000_000 % units == 0:  # microseconds or coarser: exact in int64 and float64
        micros = ticks.astype(np.int64) * (1_000_000 // units)
        return timestamps(np.full(len(ticks), interface.offset), micros, 1_000_000)
    if 1_000_000_000 % units == 0:
        nanos = ticks.astype(np.int64) * (1_000_000_000 // units)
        return timestamps(np.full(len(ticks), interface.offset), nanos, 1_000_000_000)
    seconds = (ticks // np.uint64(units)).astype(np.int64) + interface.offset
    remainder = ticks % np.uint64(units)
    if units % 1_000_000_000 == 0:
        nanos = remainder // np.uint64(units // 1_000_000_000)
    elif units < (1 << 34):
        nanos = remainder * np.uint64(1_000_000_000) // np.uint64(units)
    else:
        nanos = (remainder.astype(np.float64) * 1e9 / units).astype(np.uint64)
    return timestamps(seconds, nanos, 1_000_000_000)
