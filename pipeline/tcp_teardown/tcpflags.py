"""TCP header facts declared once: flag bits and sequence-space arithmetic."""

from __future__ import annotations

import struct

import numpy as np

# Flag bits of the TCP header's flags field (RFC 9293, 3.1; ECE/CWR RFC 3168).
FIN = 0x001
SYN = 0x002
RST = 0x004
PSH = 0x008
ACK = 0x010
URG = 0x020
ECE = 0x040
CWR = 0x080

SEQ_SPACE = 1 << 32


def is_fin(flags: np.ndarray) -> np.ndarray:
    return (flags & FIN) != 0


def is_syn(flags: np.ndarray) -> np.ndarray:
    """Any SYN, with or without ACK."""
    return (flags & SYN) != 0


def is_rst(flags: np.ndarray) -> np.ndarray:
    return (flags & RST) != 0


def has_ack(flags: np.ndarray) -> np.ndarray:
    return (flags & ACK) != 0


def is_pure_syn(flags: np.ndarray) -> np.ndarray:
    """A connection request: SYN without ACK (and without RST)."""
    return ((flags & (SYN | ACK | RST)) == SYN)


def is_syn_ack(flags: np.ndarray) -> np.ndarray:
    return ((flags & (SYN | ACK | RST)) == (SYN | ACK))


def seq_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b in 32-bit sequence space, as a signed number (RFC 1982 serial arithmetic)."""
    # Truncating to 32 bits two's complement is exactly "mod 2**32, upper half negative".
    return (np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64)).astype(np.int32)


def seq_mod(values: np.ndarray) -> np.ndarray:
    """Values reduced into sequence space (0 .. 2**32-1)."""
    return np.asarray(values, dtype=np.int64) & (SEQ_SPACE - 1)


def covers(ack: np.ndarray, seq_end: np.ndarray) -> np.ndarray:
    """True where the acknowledgement number `ack` acknowledges everything before `seq_end`."""
    return seq_diff(ack, seq_end) >= 0


def internet_checksum(data: bytes) -> int:
    """The 16-bit ones' complement checksum of IP and TCP headers (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
