"""From a window of frames to its TCP segments, all in NumPy over the whole window.

Besides the segments that become rows, this finds the TCP headers that tshark sees but
that are no rows of ours, because they still open tshark conversations and so shift its
tcp.stream numbers: headers quoted in ICMP errors, and headers tshark gives up on before
the flags (a header length field below 20).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tcp_teardown.native import link, tunnels
from tcp_teardown.native.frames import Frames
from tcp_teardown.native.ip import IPPackets, header_fields, parse_ip
from tcp_teardown.native.views import Views

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


@dataclass
class Segments:
    """TCP headers of one window, in frame order (at most one per frame)."""

    frame: np.ndarray  # int64 index into the window's frames
    row: np.ndarray  # bool: a row of the packet table (else it only counts for tcp.stream)
    analyzed: np.ndarray  # bool: tshark's sequence analysis sees it (sets the stream's ISNs)
    version: np.ndarray  # int8
    src_hi: np.ndarray  # uint64 (IPv4: 0)
    src_lo: np.ndarray  # uint64 (IPv4: the address)
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray  # int64
    dport: np.ndarray
    flags: np.ndarray
    seq: np.ndarray
    ack: np.ndarray
    payload: np.ndarray
    window: np.ndarray
    ttl: np.ndarray
    ip_id: np.ndarray

    def take(self, index: np.ndarray) -> Segments:
        if index.dtype == bool and index.all():
            return self
        return Segments(**{k: v[index] for k, v in self.__dict__.items()})

    @staticmethod
    def concat(parts: list[Segments]) -> Segments:
        return Segments(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in Segments.__annotations__})

    def __len__(self) -> int:
        return len(self.frame)


def decode(frames: Frames) -> Segments:
    """The TCP segments of `frames`; raises NativeUnsupported on tunnelled TCP."""
    views = frames.views
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
    direct = _tcp(views, packets.take(usable & (packets.proto == TCP)), quoted=False)
    quoted = _icmp_quotes(views, packets.take(usable))

    other = np.flatnonzero(code == link.OTHER)
    frame_numbers = frames.first_frame + np.arange(len(frames))
    tunnels.check(views, frame_numbers, l3[other], cap_end[other], rep_end[other], other, packets)

    segments = direct if len(quoted) == 0 else Segments.concat([direct, quoted])
    if len(segments) > 1 and not (segments.frame[1:] > segments.frame[:-1]).all():
        segments = segments.take(np.argsort(segments.frame, kind="stable"))
    return segments


def _icmp_quotes(views: Views, packets: IPPackets) -> Segments:
    """TCP headers quoted by ICMP/ICMPv6 errors (never rows; they only open streams)."""
    is_error = (packets.l4 + 8 <= packets.cap_end) & (
        ((packets.proto == ICMP) & (packets.version == 4)) | ((packets.proto == ICMPV6) & (packets.version == 6))
    )
    idx = np.flatnonzero(is_error)
    kind = views.u8[packets.l4[idx]]
    v4 = packets.version[idx] == 4
    is_error[idx] = np.where(v4, np.isin(kind, ICMP_ERRORS), np.isin(kind, ICMPV6_ERRORS))
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
    return _tcp(views, inner, quoted=True)


def _tcp(views: Views, packets: IPPackets, quoted: bool) -> Segments:
    """TCP header fields of IP packets whose protocol is TCP."""
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
    flags = offset_flags & 0x0FFF
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
        sport=head["sport"].astype(np.int64),
        dport=head["dport"].astype(np.int64),
        flags=flags,
        seq=head["seq"].astype(np.int64),
        ack=ack,  # the raw field, as tshark prints it, ACK flag or not
        payload=np.where(complete, reported - header, 0),
        window=head["window"].astype(np.int64),
        ttl=ip["ttl"],
        ip_id=ip["ip_id"],
    )
