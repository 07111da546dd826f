"""IPv4 and IPv6 headers (with options and extension headers) of many packets at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tcp_teardown.native.views import Views, is_in

# IPv6 extension headers that have the generic (next header, length in 8-octet units) form.
GENERIC_EXTENSIONS = np.array([0, 43, 60, 135, 139, 140])
FRAGMENT = 44
AH = 51
MAX_EXTENSIONS = 8
IPV4_HEADER = np.dtype(
    [("vhl", "u1"), ("tos", "u1"), ("length", ">u2"), ("id", ">u2"), ("frag", ">u2"),
     ("ttl", "u1"), ("proto", "u1"), ("checksum", ">u2"), ("src", ">u4"), ("dst", ">u4")]
)  # fmt: skip


@dataclass
class IPPackets:
    """Network-layer facts of a set of packets (`which` indexes the caller's arrays)."""

    which: np.ndarray  # int64 index into the caller's frames
    version: np.ndarray  # int8, 4 or 6
    proto: np.ndarray  # int64 upper-layer protocol after options/extension headers
    l4: np.ndarray  # int64 offset of the upper-layer header
    end: np.ndarray  # int64 end of the IP payload as the header says (reported bytes)
    cap_end: np.ndarray  # int64 end of the bytes actually captured of it
    later_fragment: np.ndarray  # bool: a fragment other than the first
    fragmented: np.ndarray  # bool: any fragment (the first too) of a fragmented datagram
    l3: np.ndarray  # int64 offset of the IP header (addresses etc.: see `header_fields`)

    def take(self, mask: np.ndarray) -> IPPackets:
        if mask.dtype == bool and mask.all():
            return self
        return IPPackets(**{k: v[mask] for k, v in self.__dict__.items()})

    @staticmethod
    def concat(parts: list[IPPackets]) -> IPPackets:
        return IPPackets(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in IPPackets.__annotations__})


def parse_ip(
    views: Views,
    which: np.ndarray,
    start: np.ndarray,
    cap_end: np.ndarray,
    rep_end: np.ndarray,
    allow_v6: np.ndarray,
    allow_v4: np.ndarray | None = None,
) -> IPPackets:
    """IP packets starting at `start` (IPv4 or IPv6 by the version nibble, where allowed).

    `cap_end`/`rep_end` are where the captured/reported bytes of the enclosing frame end.
    Packets whose headers are not all captured, or are bogus the way Wireshark rejects
    them, are left out."""
    ok = start < cap_end
    which, start, cap_end, rep_end = which[ok], start[ok], cap_end[ok], rep_end[ok]
    allow_v6 = allow_v6[ok]
    nibble = views.u8[start] >> 4
    v4 = nibble == 4
    if allow_v4 is not None:
        v4 &= allow_v4[ok]
    v6 = (nibble == 6) & allow_v6
    if v4.all():  # the common case: no copies
        return _ipv4(views, which, start, cap_end, rep_end)
    return IPPackets.concat(
        [
            _ipv4(views, which[v4], start[v4], cap_end[v4], rep_end[v4]),
            _ipv6(views, which[v6], start[v6], cap_end[v6], rep_end[v6]),
        ]
    )


def header_fields(views: Views, l3: np.ndarray, version: np.ndarray) -> dict[str, np.ndarray]:
    """Addresses (as two uint64 halves of the 16-byte form; IPv4: 0 and the address),
    TTL/hop limit and IPv4 identification (0 for IPv6) of the IP headers at `l3`."""
    v4 = version == 4
    if v4.all():
        head = views.gather(l3, IPV4_HEADER)
        zeros = np.zeros(len(l3), dtype=np.uint64)
        return {
            "src_hi": zeros,
            "src_lo": head["src"].astype(np.uint64),
            "dst_hi": zeros,
            "dst_lo": head["dst"].astype(np.uint64),
            "ttl": head["ttl"],
            "ip_id": head["id"],
        }

    def half(at: np.ndarray) -> np.ndarray:
        return views.u32be[at].astype(np.uint64) << np.uint64(32) | views.u32be[at + 4]

    # IPv6 positions for every packet; IPv4 ones are replaced below.
    six = np.where(v4, 0, l3)
    fields = {
        "src_hi": np.where(v4, np.uint64(0), half(six + 8)),
        "src_lo": np.where(v4, views.u32be[l3 + 12].astype(np.uint64), half(six + 16)),
        "dst_hi": np.where(v4, np.uint64(0), half(six + 24)),
        "dst_lo": np.where(v4, views.u32be[l3 + 16].astype(np.uint64), half(six + 32)),
        "ttl": np.where(v4, views.u8[l3 + 8], views.u8[l3 + 7]),
        "ip_id": np.where(v4, views.u16be[l3 + 4], 0),
    }
    return fields


def _ipv4(views: Views, which: np.ndarray, p: np.ndarray, cap_end: np.ndarray, rep_end: np.ndarray) -> IPPackets:
    ok = p + 20 <= cap_end
    which, p, cap_end, rep_end = which[ok], p[ok], cap_end[ok], rep_end[ok]
    head = views.gather(p, IPV4_HEADER)  # one copy of each 20-byte header
    ihl = (head["vhl"] & 0x0F).astype(np.int64) * 4
    total = head["length"].astype(np.int64)
    available = rep_end - p
    # Wireshark: a zero total length is a TSO-offloaded packet, whose length is the
    # frame's; a total length beyond the frame is cut to what the frame has.
    length = np.where(total == 0, available, np.minimum(total, available))
    ok = (ihl >= 20) & (p + ihl <= cap_end) & (length >= ihl)
    if not ok.all():
        which, p, cap_end, ihl, length = which[ok], p[ok], cap_end[ok], ihl[ok], length[ok]
        head = head[ok]
    end = p + length
    packets = IPPackets(
        which=which,
        version=np.full(len(p), 4, dtype=np.int8),
        proto=head["proto"].astype(np.int64),
        l4=p + ihl,
        end=end,
        cap_end=np.minimum(cap_end, end),
        # fragments other than the first carry no TCP header
        later_fragment=(head["frag"] & 0x1FFF) != 0,
        fragmented=(head["frag"] & 0x3FFF) != 0,  # more fragments, or an offset
        l3=p,
    )
    _skip_extensions(views, packets, ipv6=False)
    return packets


def _ipv6(views: Views, which: np.ndarray, p: np.ndarray, cap_end: np.ndarray, rep_end: np.ndarray) -> IPPackets:
    ok = p + 40 <= cap_end
    which, p, cap_end, rep_end = which[ok], p[ok], cap_end[ok], rep_end[ok]
    end = np.minimum(p + 40 + views.u16be[p + 4].astype(np.int64), rep_end)
    packets = IPPackets(
        which=which,
        version=np.full(len(p), 6, dtype=np.int8),
        proto=views.u8[p + 6].astype(np.int64),
        l4=p + 40,
        end=end,
        cap_end=np.minimum(cap_end, end),
        later_fragment=np.zeros(len(p), dtype=bool),
        fragmented=np.zeros(len(p), dtype=bool),
        l3=p,
    )
    _skip_extensions(views, packets, ipv6=True)
    return packets


def _skip_extensions(views: Views, packets: IPPackets, ipv6: bool) -> None:
    """Follow extension headers (IPv6) and AH (both) to the upper-layer protocol.

    A header that is not captured whole ends the walk with protocol -1 (undecodable)."""
    for _ in range(MAX_EXTENSIONS):
        proto = packets.proto
        generic = is_in(proto, GENERIC_EXTENSIONS) if ipv6 else np.zeros(len(proto), bool)
        fragment = (proto == FRAGMENT) if ipv6 else np.zeros(len(proto), bool)
        ah = proto == AH
        step = generic | fragment | ah
        if not step.any():
            return
        idx = np.flatnonzero(step)
        at = packets.l4[idx]
        captured = at + 8 <= packets.cap_end[idx]
        gone = idx[~captured]
        packets.proto[gone] = -1
        idx, at = idx[captured], at[captured]
        size_byte = views.u8[at + 1].astype(np.int64)
        size = np.where(ah[idx], (size_byte + 2) * 4, np.where(fragment[idx], 8, (size_byte + 1) * 8))
        frag_idx = idx[fragment[idx]]
        if frag_idx.size:
            field = views.u16be[packets.l4[frag_idx] + 2]
            packets.later_fragment[frag_idx] |= (field & 0xFFF8) != 0
            # an atomic fragment (offset 0, no more fragments) is a whole datagram
            packets.fragmented[frag_idx] |= (field & 0xFFF9) != 0
        packets.proto[idx] = views.u8[at]
        packets.l4[idx] = at + size
