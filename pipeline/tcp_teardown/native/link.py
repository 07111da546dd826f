"""Link layers: where each frame's network-layer packet starts, and what it is.

Every function works on whole arrays of frames. The result per frame is the offset of the
network header and an ethertype-like code: IP (IPv4, or IPv6 when the version nibble says
so, as Wireshark's "ip" dissector does), IP6, OTHER (a payload that is not IP but might
carry a tunnel) or NONE (nothing to look at).
"""

from __future__ import annotations

import numpy as np

from tcp_teardown.codes import sorted_distinct
from tcp_teardown.native import frames as fr
from tcp_teardown.native.frames import Frames
from tcp_teardown.native.views import is_in

IP = 0x0800
IP6 = 0x86DD
NONE = -1
OTHER = -2

VLAN_TPIDS = np.array([0x8100, 0x88A8, 0x9100])
MAX_TAGS = 4  # VLAN tags and LLC/SNAP headers unwrapped per frame
ETHERNET_MAX_LENGTH = 1500  # ethertype values up to this are 802.3 lengths
# BSD address families in NULL/LOOP headers, as Wireshark's null.type table has them.
AF_INET = 2
AF_INET6 = (24, 28, 30)
# Linux cooked-capture hardware types whose protocol field is not an ethertype.
SLL_NOT_ETHERTYPE = np.array([824, 803, 802, 801, 0xFFFE])


def link_layer(frames: Frames) -> tuple[np.ndarray, np.ndarray]:
    """(network header offset, protocol code) for every frame."""
    count = len(frames)
    l3 = np.zeros(count, dtype=np.int64)
    code = np.full(count, NONE, dtype=np.int64)
    if count == 0:
        return l3, code
    links = sorted_distinct(frames.link).tolist()
    single = len(links) == 1
    for link in links:
        idx = np.arange(count) if single else np.flatnonzero(frames.link == link)
        if link == fr.LINK_ETHERNET:
            _ethernet(frames, idx, l3, code)
        elif link in (fr.LINK_SLL, fr.LINK_SLL2):
            _cooked(frames, idx, l3, code, link == fr.LINK_SLL2)
        elif link in (fr.LINK_RAW, fr.LINK_RAW_12, fr.LINK_RAW_14, fr.LINK_IPV4):
            ok = idx[frames.caplen[idx] > 0]
            l3[ok] = frames.data[ok]
            code[ok] = IP
        elif link == fr.LINK_IPV6:
            ok = idx[frames.caplen[idx] > 0]
            l3[ok] = frames.data[ok]
            code[ok] = IP6
        elif link in (fr.LINK_NULL, fr.LINK_LOOP):
            _null(frames, idx, l3, code, link == fr.LINK_LOOP)
    return l3, code


def _ethertypes(frames: Frames, idx: np.ndarray, l3: np.ndarray, code: np.ndarray) -> None:
    """Unwrap VLAN tags and LLC/SNAP headers from `code` (ethertypes) at `l3`, in place."""
    views = frames.views
    for _ in range(MAX_TAGS):
        et = code[idx]
        # VLAN tags, and 802.3 lengths that may be followed by LLC/SNAP with an ethertype
        maybe = np.flatnonzero((et <= ETHERNET_MAX_LENGTH) | is_in(et, VLAN_TPIDS))
        if not maybe.size:
            return
        idx = idx[maybe]
        end = frames.data[idx] + frames.caplen[idx]
        at, et = l3[idx], code[idx]
        tagged = is_in(et, VLAN_TPIDS) & (at + 4 <= end)
        snap = (et >= 0) & (et <= ETHERNET_MAX_LENGTH) & (at + 8 <= end)
        if snap.any():
            s = at[snap]
            snap[snap] = (views.u16be[s] == 0xAAAA) & (views.u32be[s + 2] == 0x03000000)
        if not (tagged.any() or snap.any()):
            return
        t = idx[tagged]
        code[t] = views.u16be[l3[t] + 2]
        l3[t] += 4
        s = idx[snap]
        code[s] = views.u16be[l3[s] + 6]
        l3[s] += 8


def _ethernet(frames: Frames, idx: np.ndarray, l3: np.ndarray, code: np.ndarray) -> None:
    idx = idx[frames.caplen[idx] >= 14]
    l3[idx] = frames.data[idx] + 14
    code[idx] = frames.views.u16be[frames.data[idx] + 12]
    _ethertypes(frames, idx, l3, code)
    _settle(code, idx)


def _cooked(frames: Frames, idx: np.ndarray, l3: np.ndarray, code: np.ndarray, v2: bool) -> None:
    """Linux SLL (16-byte header) and SLL2 (20 bytes)."""
    size = 20 if v2 else 16
    idx = idx[frames.caplen[idx] >= size]
    d = frames.data[idx]
    views = frames.views
    protocol = views.u16be[d] if v2 else views.u16be[d + 14]
    hatype = views.u16be[d + 8] if v2 else views.u16be[d + 2]
    l3[idx] = d + size
    code[idx] = np.where(is_in(hatype, SLL_NOT_ETHERTYPE), NONE, protocol)
    _ethertypes(frames, idx, l3, code)
    _settle(code, idx)


def _null(frames: Frames, idx: np.ndarray, l3: np.ndarray, code: np.ndarray, loop: bool) -> None:
    """BSD loopback: a 4-byte address family, in the writer's byte order (NULL) or in
    network order (LOOP)."""
    idx = idx[frames.caplen[idx] >= 4]
    d = frames.data[idx]
    views = frames.views
    if loop:
        family = views.u32be[d].astype(np.int64)
        ethertype = np.zeros(len(d), dtype=bool)
    else:
        # As Wireshark: read in the reader's (little-endian) order; a value with high
        # bits set was written big-endian, or is a 16-bit family in the first two bytes.
        family = views.u32le[d].astype(np.int64)
        high = (family & 0xFFFF0000) != 0
        short = high & ((family & 0xFF000000) == 0) & ((family & 0x00FF0000) < 0x00060000)
        swapped = views.u32be[d].astype(np.int64)
        family = np.where(short, family >> 16, np.where(high, swapped, family))
        ethertype = family > ETHERNET_MAX_LENGTH
    ppp = views.u16be[d] == 0xFF03
    l3[idx] = d + 4
    code[idx] = np.select(
        [ppp, ethertype, family == AF_INET, is_in(family, AF_INET6)],
        [OTHER, family, IP, IP6],
        NONE,
    )
    _settle(code, idx)


def _settle(code: np.ndarray, idx: np.ndarray) -> None:
    """Ethertypes other than IP become OTHER (might hide a tunnel) or NONE (known not
    to carry IP, or an 802.3 frame that is not SNAP)."""
    et = code[idx]
    rest = np.flatnonzero((et != IP) & (et != IP6) & (et >= 0))
    if rest.size:
        value = et[rest]
        harmless = is_in(value, HARMLESS_ETHERTYPES) | (value <= ETHERNET_MAX_LENGTH)
        code[idx[rest]] = np.where(harmless, NONE, OTHER)


# Ethertypes of protocols that never carry IP packets: not searched for tunnels.
HARMLESS_ETHERTYPES = np.array(
    [
        0x0806,  # ARP
        0x8035,  # RARP
        0x88CC,  # LLDP
        0x888E,  # EAPOL
        0x88F7,  # PTP
        0x8809,  # slow protocols (LACP)
        0x9000,  # loopback
        0x0842,  # Wake-on-LAN
        0x88E1,  # HomePlug AV
        0x893A,  # IEEE 1905.1
        0x8899,  # Realtek
        0x88B8,  # IEC 61850 GOOSE
        0x88BA,  # IEC 61850 SV
        0x88E3,  # MRP
        0x88A4,  # EtherCAT
        0x8892,  # PROFINET
        0x22F0,  # AVTP
        0x22EA,  # SRP
        0x8902,  # CFM
        0x88E5,  # MACsec (encrypted)
        0x8906,  # FCoE
        0x8914,  # FIP
    ]
)
