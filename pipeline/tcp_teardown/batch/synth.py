"""Big synthetic captures for load tests: a small pcap replicated with shifted addresses and times.

Copy r of the source is moved r·spacing seconds later and its IPv4 addresses are XORed
with a per-copy mask (second and third octet), so copies are distinct conversations that
overlap in time like real traffic; `same_addresses` copies in a row share one mask, so a
4-tuple comes back later (port reuse, long-lived pairs across chunk edges). IPv4 and TCP
checksums are patched incrementally (RFC 1624), so Wireshark shows clean packets.

Everything is NumPy over blocks of records: no Python loop per packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PCAP_HEADER = 24
RECORD_HEADER = 16
ETHERTYPE_IPV4 = 0x0800
IP_PROTO_TCP = 6
BLOCK_RECORDS = 100_000  # records assembled at a time: bounded memory for any size


@dataclass
class Source:
    """The records of a little-endian microsecond pcap, as arrays."""

    header: bytes
    data: np.ndarray  # all packet bytes, concatenated
    offset: np.ndarray  # start of each packet in `data`
    length: np.ndarray  # captured length
    orig_length: np.ndarray
    ts: np.ndarray  # seconds, float64
    ipv4: np.ndarray  # Ethernet + IPv4 (addresses can be rewritten)
    tcp_checksum: np.ndarray  # offset of the TCP checksum in the packet, -1 if none


def read_source(path: Path) -> Source:
    raw = path.read_bytes()
    magic, _, _, _, _, _, link = struct.unpack("<IHHiIII", raw[:PCAP_HEADER])
    if magic != 0xA1B2C3D4 or link != 1:
        raise ValueError(f"{path}: replicate needs a little-endian microsecond Ethernet pcap")
    offsets, lengths, origs, stamps = [], [], [], []
    pos = PCAP_HEADER
    while pos + RECORD_HEADER <= len(raw):  # a small file: one pass to index it
        sec, usec, incl, orig = struct.unpack_from("<IIII", raw, pos)
        offsets.append(pos + RECORD_HEADER)
        lengths.append(incl)
        origs.append(orig)
        stamps.append(sec + usec / 1e6)
        pos += RECORD_HEADER + incl
    buf = np.frombuffer(raw, dtype=np.uint8)
    offset = np.asarray(offsets, np.int64)
    length = np.asarray(lengths, np.int64)
    ethertype = (buf[offset + 12].astype(np.int64) << 8) | buf[offset + 13]
    ipv4 = (length >= 34) & (ethertype == ETHERTYPE_IPV4)
    ihl = np.where(ipv4, (buf[np.minimum(offset + 14, len(buf) - 1)] & 0x0F).astype(np.int64) * 4, 0)
    proto = np.where(ipv4, buf[np.minimum(offset + 23, len(buf) - 1)], 0)
    tcp_sum = np.where(ipv4 & (proto == IP_PROTO_TCP) & (length >= 14 + ihl + 18), 14 + ihl + 16, -1)
    return Source(raw[:PCAP_HEADER], buf, offset, length, np.asarray(origs, np.int64),
                  np.asarray(stamps), ipv4, tcp_sum)


def _fold(total: np.ndarray) -> np.ndarray:
    """One's-complement fold of 32-bit sums into 16 bits."""
    for _ in range(2):
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _patch_checksum(checksum: np.ndarray, old_words: list[np.ndarray], new_words: list[np.ndarray]) -> np.ndarray:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), summed over every changed word."""
    total = (~checksum) & 0xFFFF
    for old, new in zip(old_words, new_words, strict=True):
        total = total + ((~old) & 0xFFFF) + new
    return (~_fold(total)) & 0xFFFF


def replicate(source: Path, target: Path, copies: int, spacing_s: float, same_addresses: int = 1) -> int:
    """Write `copies` shifted copies of `source` into `target`, merged in time order.

    Returns the number of packets written.
    """
    src = read_source(source)
    n = len(src.offset)
    rel = src.ts - src.ts[0]
    # Output order: every (copy, packet) by time; ties keep copy then packet order.
    copy_idx = np.repeat(np.arange(copies, dtype=np.int64), n)
    pkt_idx = np.tile(np.arange(n, dtype=np.int64), copies)
    when = rel[pkt_idx] + copy_idx * spacing_s
    order = np.lexsort((pkt_idx, copy_idx, when))
    copy_idx, pkt_idx, when = copy_idx[order], pkt_idx[order], when[order]
    base = float(src.ts[0])
    with target.open("wb") as out:
        out.write(src.header)
        for start in range(0, len(order), BLOCK_RECORDS):
            block = slice(start, start + BLOCK_RECORDS)
            out.write(_block(src, copy_idx[block], pkt_idx[block], base + when[block], same_addresses))
    return len(order)


def _block(src: Source, copy: np.ndarray, pkt: np.ndarray, ts: np.ndarray, same_addresses: int) -> bytes:
    lengths = src.length[pkt]
    record = RECORD_HEADER + lengths
    start = np.zeros(len(pkt) + 1, np.int64)
    np.cumsum(record, out=start[1:])
    buf = np.empty(int(start[-1]), np.uint8)
    # Record headers.
    sec = np.floor(ts).astype(np.int64)
    usec = np.round((ts - sec) * 1e6).astype(np.int64)
    carry = usec >= 1_000_000
    sec, usec = sec + carry, np.where(carry, usec - 1_000_000, usec)
    header = np.stack([sec, usec, lengths, src.orig_length[pkt]], axis=1).astype("<u4").view(np.uint8)
    buf[(start[:-1, None] + np.arange(RECORD_HEADER)).ravel()] = header.ravel()
    # Packet bytes: each output byte's source position.
    owner = np.repeat(np.arange(len(pkt)), lengths)
    first_byte = np.repeat(np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    within = np.arange(len(owner)) - first_byte
    dest = np.repeat(start[:-1] + RECORD_HEADER, lengths) + within
    buf[dest] = src.data[src.offset[pkt][owner] + within]
    # Addresses: XOR the second and third octets of both IPv4 addresses with the copy's mask.
    ipv4 = src.ipv4[pkt]
    rows = np.flatnonzero(ipv4)
    if len(rows):
        mask = (copy[rows] // max(same_addresses, 1)) & 0xFFFF
        at = start[rows] + RECORD_HEADER  # packet start in buf
        hi_mask, lo_mask = (mask >> 8) & 0xFF, mask & 0xFF

        def word(pos: np.ndarray) -> np.ndarray:
            return (buf[pos].astype(np.int64) << 8) | buf[pos + 1]

        old_words, new_words = [], []
        for field in (26, 30):  # IPv4 source, destination
            old_words += [word(at + field), word(at + field + 2)]
            buf[at + field + 1] ^= hi_mask.astype(np.uint8)
            buf[at + field + 2] ^= lo_mask.astype(np.uint8)
            new_words += [word(at + field), word(at + field + 2)]
        ip_sum = _patch_checksum(word(at + 24), old_words, new_words)
        buf[at + 24], buf[at + 25] = ip_sum >> 8, ip_sum & 0xFF
        tcp_at = src.tcp_checksum[pkt][rows]
        has_tcp = tcp_at >= 0
        if has_tcp.any():
            pos = at[has_tcp] + tcp_at[has_tcp]
            tcp_sum = _patch_checksum(word(pos), [w[has_tcp] for w in old_words],
                                      [w[has_tcp] for w in new_words])
            buf[pos], buf[pos + 1] = tcp_sum >> 8, tcp_sum & 0xFF
    return buf.tobytes()
