"""From a window of frames to its TCP segments, all in NumPy over the whole window.

Besides the segments that become rows, this finds the TCP headers that tshark sees but
that are no rows of ours, because they still open tshark conversations and so shift its
tcp.stream numbers: headers quoted in ICMP errors, and headers tshark gives up on before
the flags (a header length field below 20).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tcp_teardown.codes import sorted_distinct
from tcp_teardown.native import frames as fr
from tcp_teardown.native import link, tunnels
from tcp_teardown.native.frames import Frames
from tcp_teardown.native.ip import IPV4_HEADER, IPPackets, header_fields, parse_ip
from tcp_teardown.native.views import Views, blocks, is_in

TCP = 6
ICMP = 1
ICMPV6 = 58
ICMP_ERRORS = np.array([3, 4, 5, 11, 12])  # unreachable, quench, redirect, time, parameter
ICMPV6_ERRORS = np.array([1, 2, 3, 4])  # unreachable, too big, time, parameter
# tshark reads ports, sequence and ack numbers, flags and window (16 bytes) before it
# looks the conversation up; with fewer bytes it stops with no stream and no flags.
TCP_FIXED_FIELDS = 16
TCP_MIN_HEADER = 20
# the 16 bytes tshark reads before anything else
TCP_HEADER = np.dtype(
    [("sport", ">u2"), ("dport", ">u2"), ("seq", ">u4"), ("ack", ">u4"), ("offset_flags", ">u2"), ("window", ">u2")]
)
PLAIN_VHL = 0x45  # IPv4, header length 20 (no options)
# Link types with a fixed-size header before IP: (size, offset of an ethertype that must
# say IPv4, or None if the link type itself is IP). Their frames are decoded by
# `_plain_tcp` when plain (most frames of most captures), else by `_general`.
PLAIN_LINKS: dict[int, tuple[int, int | None]] = {
    fr.LINK_ETHERNET: (14, 12),
    fr.LINK_RAW: (0, None),
    fr.LINK_RAW_12: (0, None),
    fr.LINK_RAW_14: (0, None),
    fr.LINK_IPV4: (0, None),
}


@dataclass
class Segments:
    """TCP headers of one window, in frame order (at most one per frame)."""

    frame: np.ndarray  # int64 index into the window's frames
    row: np.ndarray  # bool: a row of the packet table (else it only counts for tcp.stream)
    analyzed: np.ndarray  # bool: tshark's sequence analysis sees it (sets the stream's ISNs)
    # the columns of the packet table, in its types (so rows need no conversion)
    version: np.ndarray  # int8
    src_hi: np.ndarray  # uint64 (IPv4: 0)
    src_lo: np.ndarray  # uint64 (IPv4: the address)
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray  # int32
    dport: np.ndarray  # int32
    flags: np.ndarray  # int16
    seq: np.ndarray  # int64
    ack: np.ndarray  # int64
    payload: np.ndarray  # int32
    window: np.ndarray  # int32
    ttl: np.ndarray  # int16
    ip_id: np.ndarray  # int32 (IPv6: 0)
    ts: np.ndarray  # float64 the frame's time

    def take(self, index: np.ndarray) -> Segments:
        if index.dtype == bool and index.all():
            return self
        return Segments(**{k: v[index] for k, v in self.__dict__.items()})

    @staticmethod
    def concat(parts: list[Segments]) -> Segments:
        if not parts:
            return Segments(**{k: np.zeros(0, dtype=t) for k, t in SEGMENT_TYPES.items()})
        return Segments(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in Segments.__annotations__})

    def __len__(self) -> int:
        return len(self.frame)


# Columns (by Segments name) of the space a caller offers for the rows; see `in_room`.
Room = dict[str, np.ndarray]


def in_room(room: Room | None, name: str, rows: int, dtype: type) -> np.ndarray:
    """A column of `rows` rows: in `room` if it has one of that name and type, else new."""
    if room is not None and name in room and room[name].dtype == dtype:
        return room[name][:rows]
    return np.empty(rows, dtype)


SEGMENT_TYPES = {
    "frame": np.int64, "row": bool, "analyzed": bool, "version": np.int8,
    "src_hi": np.uint64, "src_lo": np.uint64, "dst_hi": np.uint64, "dst_lo": np.uint64,
    "sport": np.int32, "dport": np.int32, "flags": np.int16, "seq": np.int64, "ack": np.int64,
    "payload": np.int32, "window": np.int32, "ttl": np.int16, "ip_id": np.int32, "ts": np.float64,
}  # fmt: skip


def decode(frames: Frames, room: Room | None = None) -> Segments:
    """The TCP segments of `frames`; raises NativeUnsupported on tunnelled TCP.

    `room`: arrays of at least len(frames) rows that columns of the segments may be
    made in (the caller's row buffer), so that they need not be copied there."""
    plain, rest = _plain_tcp(frames, room)
    if not len(rest):
        return plain
    general = _general(frames, rest)
    if not len(plain):
        return general
    segments = Segments.concat([plain, general])
    return segments.take(np.argsort(segments.frame, kind="stable"))


def _general(frames: Frames, which: np.ndarray) -> Segments:
    """The TCP segments of the frames `which`, whatever their link and IP layers hold."""
    views = frames.views
    if len(which) < len(frames):
        frames = frames.take(which)
    l3, code = link.link_layer(frames)
    cap_end = frames.data + frames.caplen
    # Wireshark's "reported length" is the wire length (never less than what was captured).
    rep_end = frames.data + np.maximum(frames.wirelen, frames.caplen)

    ip_frames = np.flatnonzero((code == link.IP) | (code == link.IP6))
    packets = parse_ip(
        views,
        ip_frames,
        l3[ip_frames],
        cap_end[ip_frames],
        rep_end[ip_frames],
        allow_v6=np.ones(len(ip_frames), dtype=bool),
        allow_v4=code[ip_frames] == link.IP,
    )
    usable = ~packets.later_fragment
    direct = _tcp(views, packets.take(usable & (packets.proto == TCP)), frames.ts, quoted=False)
    quoted = _icmp_quotes(views, packets.take(usable), frames.ts)

    other = np.flatnonzero(code == link.OTHER)
    frame_numbers = frames.first_frame + which
    tunnels.check(views, frame_numbers, l3[other], cap_end[other], rep_end[other], other, packets)

    segments = direct if len(quoted) == 0 else Segments.concat([direct, quoted])
    if len(segments) > 1 and not (segments.frame[1:] > segments.frame[:-1]).all():
        segments = segments.take(np.argsort(segments.frame, kind="stable"))
    segments.frame = which[segments.frame]
    return segments


def _plain_tcp(frames: Frames, room: Room | None = None) -> tuple[Segments, np.ndarray]:
    """The segments of frames whose link layer has a fixed size (Ethernet without tags,
    raw IP) and is followed by a plain IPv4 header (no options, not a later fragment)
    with TCP's first 16 bytes captured; and the other frames, for `_general`.

    Exactly what the general path makes of them, with one gather of the headers
    instead of a dozen field reads and filters per layer."""
    parts: list[Segments] = []
    if not len(frames):
        return Segments.concat([]), np.zeros(0, dtype=np.int64)
    links = sorted_distinct(frames.link).tolist()
    for link_type in links:
        if link_type in PLAIN_LINKS:
            which = None if len(links) == 1 else np.flatnonzero(frames.link == link_type)
            # Frames of one link type only: their segments may be rows in frame order.
            parts.append(_plain_link(frames, which, *PLAIN_LINKS[link_type], room if which is None else None))
    if not parts:
        return Segments.concat([]), np.arange(len(frames))
    plain = parts[0] if len(parts) == 1 else Segments.concat(parts)
    if len(plain) == len(frames):
        # Every frame plain: the parts (one per link type) go back into capture order here;
        # otherwise `decode` sorts them together with the general path's segments.
        return (plain if len(parts) == 1 else plain.take(np.argsort(plain.frame))), np.zeros(0, dtype=np.int64)
    rest = np.ones(len(frames), dtype=bool)
    rest[plain.frame] = False
    return plain, np.flatnonzero(rest)


def _plain_link(frames: Frames, which: np.ndarray | None, size: int, ethertype_at: int | None,
                room: Room | None = None) -> Segments:
    """`_plain_tcp` for frames `which` (None: all) of one link type (header `size`
    bytes, the ethertype, which must be IPv4's, at `ethertype_at`)."""
    # A record header the format reader left unread (pcap's) comes in the same gather.
    record = frames.record if frames.known_wirelen is None else None
    before = 0 if record is None else record.fields.itemsize
    layout = _plain_layout(size, ethertype_at, None if record is None else record.fields)
    data, caplen = frames.data, frames.caplen
    if which is not None:
        data, caplen = data[which], caplen[which]
    fits = caplen >= layout.itemsize - before
    if not fits.all():
        which = np.flatnonzero(fits) if which is None else which[fits]
        data, caplen = data[fits], caplen[fits]
    if which is None:
        which = np.arange(len(frames))
    columns = {name: in_room(room, name, len(which), dtype) for name, dtype in PLAIN_COLUMNS.items()}
    for part in blocks(len(which)):
        head = frames.views.gather(data[part] - before, layout)
        fields = {name: column[part] for name, column in columns.items()}
        if record is None:
            wirelen = frames.wirelen[which[part]]
            np.take(frames.ts, which[part], out=fields["ts"])
        else:
            wirelen = head["wirelen"]
            record.timestamps(head, fields["ts"])
        _plain_fields(head, caplen[part], wirelen, size, ethertype_at is not None, fields)
    ok = columns.pop("ok")
    if not ok.all():
        which = which[ok]
        columns = {name: column[ok] for name, column in columns.items()}
    version = in_room(room, "version", len(which), np.int8)
    version.fill(4)
    zeros = np.broadcast_to(np.uint64(0), (len(which),))  # IPv4: no high halves
    return Segments(frame=which, version=version, src_hi=zeros, dst_hi=zeros, **columns)


# What `_plain_fields` writes for each frame: whether it is a plain TCP segment, and the
# Segments columns (in their types).
PLAIN_COLUMNS = {"ok": bool} | {
    name: SEGMENT_TYPES[name]
    for name in ("row", "analyzed", "src_lo", "dst_lo", "sport", "dport", "flags", "seq", "ack", "payload",
                 "window", "ttl", "ip_id", "ts")
}


def _plain_fields(head: np.ndarray, caplen: np.ndarray, wirelen: np.ndarray, size: int,
                  has_ethertype: bool, out: dict[str, np.ndarray]) -> None:
    """Fill `out` (PLAIN_COLUMNS) from the gathered headers of a block of frames; each
    field is read once, converted straight into its column."""
    # Wireshark: a zero total length is a TSO-offloaded packet, whose length is the
    # frame's; a total length beyond the frame is cut to what the frame has.
    total = head["length"]
    available = np.maximum(wirelen, caplen)
    available -= size
    length = np.minimum(total, available)
    np.copyto(length, available, where=total == 0)
    # Plain: IPv4 with a 20-byte header (after an IPv4 ethertype) carrying TCP, not a
    # later fragment; two of the checks read one 32-bit word each.
    ok = out["ok"]
    if has_ethertype:
        np.equal(head["ethertype_vhl"] >> 8, link.IP << 8 | PLAIN_VHL, out=ok)
    else:
        np.equal(head["vhl"], PLAIN_VHL, out=ok)
    frag_proto = head["frag_proto"].astype(np.uint32)  # fragment field, TTL, protocol
    ok &= (frag_proto & 0x1FFF00FF) == TCP
    ok &= length >= 20 + TCP_FIXED_FIELDS  # TCP's first bytes inside the IP packet too
    offset_flags = head["offset_flags"].astype(np.int32)
    header = offset_flags >> 10
    header &= 0x3C  # the data offset field, in bytes
    length -= 20  # the bytes of the IP payload the frame reports
    complete = out["analyzed"]
    np.greater_equal(length, header, out=complete)
    complete &= (frag_proto & 0x3FFF0000) == 0  # not a first fragment either
    np.greater_equal(header, TCP_MIN_HEADER, out=out["row"])
    length -= header
    np.multiply(length, complete, out=out["payload"], casting="unsafe")
    np.bitwise_and(offset_flags, 0x0FFF, out=out["flags"], casting="unsafe")
    for name, field in (("src_lo", "src"), ("dst_lo", "dst"), ("sport", "sport"), ("dport", "dport"),
                        ("seq", "seq"), ("ack", "ack"), ("window", "window"), ("ttl", "ttl"), ("ip_id", "id")):
        np.copyto(out[name], head[field], casting="unsafe")


def _plain_layout(size: int, ethertype_at: int | None, record: np.dtype | None) -> np.dtype:
    """The link header's ethertype, a 20-byte IPv4 header and TCP's first 16 bytes;
    after the `record` header if there is one. (The ethertype must directly precede IP.)"""
    assert ethertype_at is None or ethertype_at + 2 == size, "the ethertype directly precedes IP"
    before = 0 if record is None else record.itemsize
    names: list[str] = []
    formats: list[object] = []
    offsets: list[int] = []
    parts = [(IPV4_HEADER, before + size), (TCP_HEADER, before + size + 20)]
    if record is not None:
        parts.insert(0, (record, 0))
    for header, at in parts:
        for name in header.names:
            kind, offset = header.fields[name][:2]
            names.append(name)
            formats.append(kind)
            offsets.append(at + offset)
    # words that overlap the fields above, for checks of several fields at once
    names.append("frag_proto")
    formats.append(">u4")
    offsets.append(before + size + IPV4_HEADER.fields["frag"][1])
    if ethertype_at is not None:
        names.append("ethertype_vhl")  # the ethertype, then IPv4's version and length
        formats.append(">u4")
        offsets.append(before + ethertype_at)
    itemsize = before + size + 20 + TCP_FIXED_FIELDS
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize})


def _icmp_quotes(views: Views, packets: IPPackets, ts: np.ndarray) -> Segments:
    """TCP headers quoted by ICMP/ICMPv6 errors (never rows; they only open streams)."""
    is_error = (packets.l4 + 8 <= packets.cap_end) & (
        ((packets.proto == ICMP) & (packets.version == 4)) | ((packets.proto == ICMPV6) & (packets.version == 6))
    )
    idx = np.flatnonzero(is_error)
    kind = views.u8[packets.l4[idx]]
    v4 = packets.version[idx] == 4
    is_error[idx] = np.where(v4, is_in(kind, ICMP_ERRORS), is_in(kind, ICMPV6_ERRORS))
    errors = packets.take(is_error)
    inner = parse_ip(
        views,
        errors.which,
        errors.l4 + 8,
        errors.cap_end,
        errors.end,
        allow_v6=errors.version == 6,
        allow_v4=errors.version == 4,
    )
    inner = inner.take(~inner.later_fragment & (inner.proto == TCP))
    return _tcp(views, inner, ts, quoted=True)


def _tcp(views: Views, packets: IPPackets, ts: np.ndarray, quoted: bool) -> Segments:
    """TCP header fields of IP packets whose protocol is TCP (`ts`: the times of the
    frames `packets.which` indexes)."""
    packets = packets.take(packets.cap_end - packets.l4 >= TCP_FIXED_FIELDS)
    t = packets.l4
    head = views.gather(t, TCP_HEADER)  # one copy of each header's first 16 bytes
    offset_flags = head["offset_flags"].astype(np.int64)
    header = (offset_flags >> 12) * 4
    reported = packets.end - t
    # tshark computes tcp.len (and analyses sequence numbers) only when the segment is at
    # least as long as its header and not an IP fragment (tshark engine: no reassembly);
    # without tcp.len the packet table has payload_len 0. A header length below 20 is
    # bogus: tshark stops before the flags, so there is no row (but a stream is opened).
    complete = (reported >= header) & ~packets.fragmented
    if quoted:
        row = np.zeros(len(t), dtype=bool)
        analyzed = row
    else:
        row = header >= TCP_MIN_HEADER
        analyzed = complete
    ack = head["ack"].astype(np.int64)
    flags = (offset_flags & 0x0FFF).astype(np.int16)
    ip = header_fields(views, packets.l3, packets.version)
    return Segments(
        frame=packets.which,
        row=row,
        analyzed=analyzed,
        version=packets.version,
        src_hi=ip["src_hi"],
        src_lo=ip["src_lo"],
        dst_hi=ip["dst_hi"],
        dst_lo=ip["dst_lo"],
        sport=head["sport"].astype(np.int32),
        dport=head["dport"].astype(np.int32),
        flags=flags,
        seq=head["seq"].astype(np.int64),
        ack=ack,  # the raw field, as tshark prints it, ACK flag or not
        payload=np.where(complete, reported - header, 0).astype(np.int32),
        window=head["window"].astype(np.int32),
        ttl=ip["ttl"].astype(np.int16),
        ip_id=ip["ip_id"].astype(np.int32),
        ts=ts[packets.which],
    )
