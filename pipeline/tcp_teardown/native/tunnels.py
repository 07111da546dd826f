"""Spotting TCP hidden inside encapsulations the native decoder does not unwrap.

tshark decodes TCP inside GRE, IP-in-IP, MPLS, PPPoE, VXLAN, Geneve, GTP, Teredo and more,
and reports the innermost headers. Rather than unwrap each of these, the native reader
declines a file as soon as one of its frames looks like it carries an IP packet with TCP
inside such a wrapper, so the caller hands that file to tshark.

Searched: payloads of ethertypes other than IP (MPLS, PPPoE, VN-Tag, 802.1ah, ...), of IP
protocols that carry packets (GRE, IP-in-IP, ...) and of UDP on the ports where Wireshark
decodes an encapsulation. Any other UDP payload is only tested the way Wireshark's Teredo
heuristic tests it (the tshark engine turns that heuristic on): an IPv6 packet, maybe
after Teredo's authentication and origin headers, exactly filling the payload. Nothing
else in UDP is decoded by tshark either.

"Looks like" means: within the first bytes of the payload there is an IPv4 header for TCP
whose total length fits (and whose checksum is valid, or which fills the rest of the
payload: some captures have bad IPv4 checksums), or an IPv6 header for TCP (or an
extension header) whose payload length fits.
"""

from __future__ import annotations

import numpy as np

from tcp_teardown.native.errors import NativeUnsupported
from tcp_teardown.native.ip import IPPackets
from tcp_teardown.native.views import Views, is_in

TCP = 6
UDP = 17
# IP protocols that carry other packets: IPv4, ENCAP, IPv6, GRE, EtherIP, PIM (register),
# L2TPv3, MPLS-in-IP, Ethernet.
TUNNEL_PROTOS = np.array([4, 41, 47, 97, 98, 103, 115, 137, 143])
# UDP ports of encapsulations Wireshark decodes: L2TP, GTP-U, Teredo, LISP, GRE-in-UDP,
# VXLAN, VXLAN-GPE, AYIYA, CAPWAP, Geneve, sFlow, MPLS-in-UDP, Linux VXLAN, LWAPP, TZSP.
TUNNEL_PORTS = np.array(
    [1701, 2152, 3544, 4341, 4754, 4789, 4790, 5072, 5246, 5247, 6081, 6343, 6635, 8472,
     12222, 12223, 37008]
)  # fmt: skip
UDP_DEPTH = 128  # bytes searched into the payload of a tunnel port
DEPTH = 64  # bytes searched into other payloads
SLACK = 24  # bytes after an inner IPv4 packet allowed when its checksum is bad (padding)
IPV6_EXTENSIONS = np.array([0, 43, 44, 60])


def check(
    views: Views,
    frame_numbers: np.ndarray,
    other_start: np.ndarray,
    other_cap_end: np.ndarray,
    other_rep_end: np.ndarray,
    other_frames: np.ndarray,
    packets: IPPackets,
) -> None:
    """Raise NativeUnsupported if any frame seems to carry TCP inside a wrapper.

    `other_*`: non-IP link-layer payloads (MPLS, PPPoE, ... or unknown ethertypes) and
    the indexes of their frames; `packets`: the frame's IP packets (outermost)."""
    regions = [(other_start, other_cap_end, other_rep_end, other_frames, DEPTH, " (non-IP ethertype)")]
    usable = ~packets.later_fragment
    tunnel = usable & is_in(packets.proto, TUNNEL_PROTOS)
    regions.append(
        (
            packets.l4[tunnel],
            packets.cap_end[tunnel],
            packets.end[tunnel],
            packets.which[tunnel],
            DEPTH,
            " (IP in IP, GRE, ...)",
        )
    )
    udp = usable & (packets.proto == UDP) & (packets.l4 + 8 <= packets.cap_end)
    u = np.flatnonzero(udp)
    if u.size:
        l4 = packets.l4[u]
        ports = is_in(views.u16be[l4], TUNNEL_PORTS) | is_in(views.u16be[l4 + 2], TUNNEL_PORTS)
        teredo = _teredo(views, packets.l4[u] + 8, packets.cap_end[u], packets.end[u])
        if teredo.any():
            frame = int(frame_numbers[packets.which[u[np.argmax(teredo)]]])
            raise NativeUnsupported(f"frame {frame} carries TCP inside a tunnel (Teredo)")
        sel = u[ports]
        regions.append(
            (
                packets.l4[sel] + 8,
                packets.cap_end[sel],
                packets.end[sel],
                packets.which[sel],
                UDP_DEPTH,
                " (in UDP)",
            )
        )
    for start, cap_end, rep_end, which, depth, what in regions:
        if not len(start):
            continue
        hit = _search(views, start, cap_end, rep_end, depth)
        if hit.any():
            frame = int(frame_numbers[which[np.argmax(hit)]])
            raise NativeUnsupported(f"frame {frame} carries TCP inside a tunnel{what}")


def _teredo(views: Views, start: np.ndarray, cap_end: np.ndarray, rep_end: np.ndarray) -> np.ndarray:
    """UDP payloads Wireshark's Teredo heuristic takes for IPv6, when that carries TCP."""
    ok = cap_end - start >= 40
    offset = np.zeros(len(start), dtype=np.int64)
    value = np.zeros(len(start), dtype=np.int64)
    value[ok] = views.u16be[start[ok]]
    auth = ok & (value == 1)  # authentication header: lengths of client id and auth value
    if auth.any():
        a = np.flatnonzero(auth)
        lengths = views.u8[start[a] + 2].astype(np.int64) + views.u8[start[a] + 3]
        fits = cap_end[a] - start[a] - 13 >= lengths + 40
        ok[a[~fits]] = False
        a = a[fits]
        offset[a] = 13 + lengths[fits]
        value[a] = views.u16be[start[a] + offset[a]]
    origin = ok & (value == 0)  # origin indication: 8 bytes
    if origin.any():
        o = np.flatnonzero(origin)
        offset[o] += 8
        fits = cap_end[o] - start[o] - offset[o] >= 40
        ok[o[~fits]] = False
        o = o[fits]
        value[o] = views.u16be[start[o] + offset[o]]
    ok &= (value >> 12) == 6
    idx = np.flatnonzero(ok)
    ip6 = start[idx] + offset[idx]
    length = views.u16be[ip6 + 4].astype(np.int64)
    inner = views.u8[ip6 + 6]
    teredo = (length <= 65467) & (rep_end[idx] - ip6 - 40 == length)
    ok[idx] = teredo & ((inner == TCP) | is_in(inner, IPV6_EXTENSIONS))
    return ok


def _search(
    views: Views,
    start: np.ndarray,
    cap_end: np.ndarray,
    rep_end: np.ndarray,
    depth: int,
) -> np.ndarray:
    """For each region, whether an IP header for TCP starts in its first `depth` bytes."""
    found = np.zeros(len(start), dtype=bool)
    for offset in range(depth):
        p = start + offset
        long_enough = p + 20 <= cap_end
        if not long_enough.any():
            break  # nor at any later offset
        live = np.flatnonzero(~found & long_enough)
        if not live.size:
            break
        q = p[live]
        b0 = views.u8[q]
        v4 = ((b0 & 0xF0) == 0x40) & ((b0 & 0x0F) >= 5) & (views.u8[q + 9] == TCP)
        v6 = ((b0 & 0xF0) == 0x60) & (q + 40 <= cap_end[live])
        if v4.any():
            found[live[v4]] = _ipv4_for_tcp(views, q[v4], cap_end[live[v4]], rep_end[live[v4]])
        if v6.any():
            found[live[v6]] |= _ipv6_for_tcp(views, q[v6], rep_end[live[v6]])
    return found


def _ipv4_for_tcp(views: Views, p: np.ndarray, cap_end: np.ndarray, rep_end: np.ndarray) -> np.ndarray:
    ihl = (views.u8[p] & 0x0F).astype(np.int64) * 4
    total = views.u16be[p + 2].astype(np.int64)
    room = rep_end - p
    ok = (total >= ihl + 16) & (total <= room) & (p + ihl <= cap_end)
    ok &= (views.u16be[p + 6] & 0x1FFF) == 0
    idx = np.flatnonzero(ok & (total < room - SLACK))
    if idx.size:
        # not filling the payload: then the header checksum must be valid (the ones'
        # complement sum of the header is 0xFFFF)
        q, words = p[idx], ihl[idx] // 2
        total_sum = np.zeros(len(q), dtype=np.int64)
        for k in range(30):
            total_sum += np.where(k < words, views.u16be[np.where(k < words, q + 2 * k, q)], 0)
        total_sum = (total_sum & 0xFFFF) + (total_sum >> 16)
        total_sum = (total_sum & 0xFFFF) + (total_sum >> 16)
        ok[idx] = total_sum == 0xFFFF
    return ok


def _ipv6_for_tcp(views: Views, p: np.ndarray, rep_end: np.ndarray) -> np.ndarray:
    next_header = views.u8[p + 6]
    length = 40 + views.u16be[p + 4].astype(np.int64)
    tcp_or_extension = (next_header == TCP) | is_in(next_header, IPV6_EXTENSIONS)
    return tcp_or_extension & (length >= 56) & (length <= rep_end - p)
