"""Read pcap/pcapng (optionally gzip-compressed) record by record; write pcapng as a stream.

This is what lets tcp-teardown hand a capture back to Wireshark with comments on the
frames that prove each label, without Lua: the extcap and `annotate` replay every record
unchanged (bytes, timestamps, link type, pcapng interfaces) and add one `opt_comment`.

Why a hand-written reader: the replay must keep every record exactly as it was, including
the raw timestamp ticks and the interface options, and must count frames exactly as
Wireshark does, so its frame numbers line up with the analysis. A per-record loop is fine
here: it only copies bytes.

Formats (the subset tshark 4.0 reads that real captures use):

- classic pcap, both byte orders, microsecond and nanosecond magic;
- pcapng, both byte orders, several sections (interface ids are per section, the output
  has one section, so they are renumbered);
- either of them gzip-compressed (tshark reads those directly).

The output is always one little-endian pcapng section.
"""

from __future__ import annotations

import dataclasses
import gzip
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

# --- file magics -------------------------------------------------------------------------
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_MAGIC = b"\x04\x22\x4d\x18"
PCAP_MAGIC_US = 0xA1B2C3D4  # classic pcap, microsecond timestamps
PCAP_MAGIC_NS = 0xA1B23C4D  # classic pcap, nanosecond timestamps
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D

# --- pcapng block types ------------------------------------------------------------------
BT_SHB = 0x0A0D0D0A  # section header (a palindrome, so readable before the byte order is)
BT_IDB = 0x00000001  # interface description
BT_PB = 0x00000002  # obsolete packet block
BT_SPB = 0x00000003  # simple packet block
BT_NRB = 0x00000004  # name resolution
BT_ISB = 0x00000005  # interface statistics
BT_EPB = 0x00000006  # enhanced packet block
BT_SJE = 0x00000009  # systemd journal export: Wireshark counts it as a frame
BT_DSB = 0x0000000A  # decryption secrets
BT_CB_COPY = 0x00000BAD  # custom block, may be copied
# Blocks whose content is only meaningful byte-for-byte: copied as they are (same byte order).
PASSTHROUGH_BLOCKS = frozenset({BT_NRB, BT_DSB, BT_CB_COPY})

# --- pcapng option codes -----------------------------------------------------------------
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
OPT_SHB_USERAPPL = 4
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14
OPT_IF_FCSLEN = 13
OPT_CUSTOM = frozenset({2988, 2989, 19372, 19373})  # start with a 4-byte PEN
# Numeric option values by code whose byte order follows the section's (IDB and EPB).
IDB_NUMERIC_WIDTH = {8: 8, 10: 4, 14: 8, 16: 8, 17: 8}  # speed, tzone, tsoffset, tx/rxspeed
EPB_NUMERIC_WIDTH = {2: 4, 4: 8, 5: 8, 6: 4}  # flags, dropcount, packetid, queue

DEFAULT_TSRESOL = 6  # pcapng default: microseconds
LINKTYPE_MASK = 0x0000FFFF  # pcap's link-type field keeps FCS info in the upper bits
PCAP_FCS_PRESENT = 0x10000000  # "F" bit of the pcap link-type field

Option = tuple[int, bytes]  # (code, value), value already in little-endian form


class CaptureFormatError(ValueError):
    """The file is not a capture this reader understands, or it is damaged."""


@dataclasses.dataclass(frozen=True)
class Interface:
    """One capture interface (one pcapng IDB, or the single one of a classic pcap)."""

    linktype: int
    snaplen: int
    options: tuple[Option, ...] = ()  # little-endian values; if_tsresol/if_tsoffset included

    @property
    def tsresol(self) -> int:
        """The raw if_tsresol byte: bit 7 clear = 10^-n s, set = 2^-n s."""
        for code, value in self.options:
            if code == OPT_IF_TSRESOL and value:
                return value[0]
        return DEFAULT_TSRESOL

    @property
    def tsoffset(self) -> int:
        """Seconds added to every timestamp of this interface (if_tsoffset)."""
        for code, value in self.options:
            if code == OPT_IF_TSOFFSET and len(value) == 8:
                return struct.unpack("<q", value)[0]
        return 0

    def seconds(self, ticks: int) -> float:
        """Timestamp ticks of this interface as seconds since the epoch."""
        res = self.tsresol
        units = float(1 << (res & 0x7F)) if res & 0x80 else float(10 ** (res & 0x7F))
        return ticks / units + self.tsoffset


@dataclasses.dataclass(frozen=True)
class Packet:
    """One frame, as Wireshark numbers it: `frame_number` counts from 1 across the file."""

    frame_number: int
    interface: int  # index into the reader's interfaces, in order of appearance
    linktype: int
    ts: float  # seconds since the epoch (lossy; `ts_ticks` is exact)
    ts_ticks: int | None  # raw ticks in the interface's resolution; None: block has none (SPB)
    caplen: int
    origlen: int
    data: bytes
    options: tuple[Option, ...] = ()  # EPB options other than the terminator, little-endian


@dataclasses.dataclass(frozen=True)
class RawBlock:
    """A pcapng block copied unchanged (name resolution, decryption secrets, ...)."""

    block: bytes  # the whole block, little-endian
    frame_number: int | None = None  # set when Wireshark counts it as a frame


Event = Interface | Packet | RawBlock


def open_capture(path: Path) -> BinaryIO:
    """Open a capture for reading, transparently decompressing gzip, as tshark does."""
    raw = path.open("rb")
    try:
        head = raw.read(4)
        raw.seek(0)
    except BaseException:
        raw.close()
        raise
    if head[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if head == ZSTD_MAGIC:
        # The analysis reads zstd through the optional `zstandard` package; so do we.
        try:
            import zstandard
        except ImportError as exc:
            raw.close()
            raise CaptureFormatError(f"{path}: zstd capture needs the 'zstandard' package") from exc
        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)  # type: ignore[return-value]
    if head == LZ4_MAGIC:
        raw.close()
        raise CaptureFormatError(f"{path}: lz4-compressed captures are not supported")
    return raw


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise CaptureFormatError(f"truncated {what}: wanted {n} bytes, got {len(data)}")
    return data


class CaptureReader:
    """Iterate a capture as `Interface`, `Packet` and `RawBlock` events, in file order.

    An `Interface` event always comes before the first packet that uses it. Use as a
    context manager, or call `close()`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.interfaces: list[Interface] = []  # in order of appearance, over all sections
        self._stream: BinaryIO | None = open_capture(path)

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __iter__(self) -> Iterator[Event]:
        stream = self._stream
        if stream is None:
            raise ValueError("reader is closed")
        head = stream.read(4)
        if len(head) < 4:
            raise CaptureFormatError(f"{self.path}: empty or truncated capture file")
        if struct.unpack("<I", head)[0] == BT_SHB:
            yield from self._pcapng(stream, head)
        else:
            yield from self._pcap(stream, head)

    # --- classic pcap ----------------------------------------------------------------------
    def _pcap(self, stream: BinaryIO, head: bytes) -> Iterator[Event]:
        for order in ("<", ">"):
            magic = struct.unpack(order + "I", head)[0]
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                break
        else:
            raise CaptureFormatError(f"{self.path}: not a pcap or pcapng file")
        nanos = magic == PCAP_MAGIC_NS
        rest = _read_exact(stream, 20, "pcap file header")
        _major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack(order + "HHiIII", rest)
        options: list[Option] = [(OPT_IF_TSRESOL, bytes([9 if nanos else 6]))]
        if network & PCAP_FCS_PRESENT:
            # Bits 29-31 count 16-bit words of FCS; if_fcslen is in bits.
            options.append((OPT_IF_FCSLEN, bytes([((network >> 29) & 7) * 16])))
        iface = Interface(network & LINKTYPE_MASK, snaplen, tuple(options))
        self.interfaces.append(iface)
        yield iface
        units = 1_000_000_000 if nanos else 1_000_000
        record = struct.Struct(order + "IIII")
        frame = 0
        while True:
            hdr = stream.read(16)
            if not hdr:
                return
            if len(hdr) < 16:
                raise CaptureFormatError(
                    f"{self.path}: truncated record header after frame {frame}"
                )
            sec, frac, caplen, origlen = record.unpack(hdr)
            data = _read_exact(stream, caplen, f"frame {frame + 1}")
            frame += 1
            ticks = sec * units + frac
            ts = iface.seconds(ticks)
            yield Packet(frame, 0, iface.linktype, ts, ticks, caplen, origlen, data)

    # --- pcapng ----------------------------------------------------------------------------
    def _pcapng(self, stream: BinaryIO, head: bytes) -> Iterator[Event]:
        frame = 0
        order = "<"
        section: list[int] = []  # section-local interface id -> index in self.interfaces
        block_type = BT_SHB
        while True:
            if block_type == BT_SHB:
                # The byte order is only known after the byte-order magic.
                length_raw = _read_exact(stream, 4, "section header")
                magic_raw = _read_exact(stream, 4, "section header")
                if struct.unpack("<I", magic_raw)[0] == PCAPNG_BYTE_ORDER_MAGIC:
                    order = "<"
                elif struct.unpack(">I", magic_raw)[0] == PCAPNG_BYTE_ORDER_MAGIC:
                    order = ">"
                else:
                    raise CaptureFormatError(f"{self.path}: bad pcapng byte-order magic")
                length = struct.unpack(order + "I", length_raw)[0]
                if length < 28 or length % 4:
                    raise CaptureFormatError(f"{self.path}: bad section header length {length}")
                _read_exact(stream, length - 12, "section header")  # rest incl. trailer
                section = []
            else:
                length_raw = _read_exact(stream, 4, "block length")
                length = struct.unpack(order + "I", length_raw)[0]
                if length < 12 or length % 4:
                    raise CaptureFormatError(f"{self.path}: bad block length {length}")
                body = _read_exact(stream, length - 12, "block body")
                _read_exact(stream, 4, "block trailer")
                event = self._block(block_type, body, order, section, frame)
                if event is not None:
                    if isinstance(event, Packet) or (
                        isinstance(event, RawBlock) and event.frame_number is not None
                    ):
                        frame += 1
                    yield event
            raw_type = stream.read(4)
            if not raw_type:
                return
            if len(raw_type) < 4:
                raise CaptureFormatError(f"{self.path}: truncated block header after frame {frame}")
            block_type = struct.unpack(order + "I", raw_type)[0]

    def _block(
        self, block_type: int, body: bytes, order: str, section: list[int], frame: int
    ) -> Event | None:
        if block_type == BT_IDB:
            linktype, _reserved, snaplen = struct.unpack(order + "HHI", body[:8])
            iface = Interface(linktype, snaplen, _options(body[8:], order, IDB_NUMERIC_WIDTH))
            section.append(len(self.interfaces))
            self.interfaces.append(iface)
            return iface
        if block_type in (BT_EPB, BT_PB):
            if block_type == BT_EPB:
                local_id, ts_hi, ts_lo, caplen, origlen = struct.unpack(order + "IIIII", body[:20])
            else:
                local_id, _drops, ts_hi, ts_lo, caplen, origlen = struct.unpack(
                    order + "HHIIII", body[:20]
                )
            index = self._interface(section, local_id, frame)
            data = body[20 : 20 + caplen]
            if len(data) != caplen:
                raise CaptureFormatError(f"{self.path}: frame {frame + 1} is truncated")
            opts = _options(body[20 + _pad4(caplen) :], order, EPB_NUMERIC_WIDTH)
            if block_type == BT_PB:
                opts = tuple(o for o in opts if o[0] == OPT_COMMENT)  # PB option codes differ
            iface = self.interfaces[index]
            ticks = (ts_hi << 32) | ts_lo
            ts = iface.seconds(ticks)
            return Packet(frame + 1, index, iface.linktype, ts, ticks, caplen, origlen, data, opts)
        if block_type == BT_SPB:
            index = self._interface(section, 0, frame)
            iface = self.interfaces[index]
            (origlen,) = struct.unpack(order + "I", body[:4])
            caplen = min(origlen, iface.snaplen) if iface.snaplen else origlen
            data = body[4 : 4 + caplen]
            # No timestamp in a simple packet block: written back as 0 (Wireshark shows none).
            return Packet(frame + 1, index, iface.linktype, 0.0, None, caplen, origlen, data)
        if block_type == BT_SJE:
            return RawBlock(_block(BT_SJE, body), frame + 1)
        if block_type in PASSTHROUGH_BLOCKS and order == "<":
            # Their inner fields follow the section's byte order: only copy when it is ours.
            return RawBlock(_block(block_type, body))
        return None  # statistics, unknown or local-only blocks: not part of the replay

    def _interface(self, section: list[int], local_id: int, frame: int) -> int:
        if local_id >= len(section):
            raise CaptureFormatError(
                f"{self.path}: frame {frame + 1} uses interface {local_id}, which is not declared"
            )
        return section[local_id]


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def _options(raw: bytes, order: str, numeric: dict[int, int]) -> tuple[Option, ...]:
    """Parse an options area; numeric values are converted to little-endian."""
    out: list[Option] = []
    pos = 0
    while pos + 4 <= len(raw):
        code, length = struct.unpack(order + "HH", raw[pos : pos + 4])
        if code == OPT_ENDOFOPT:
            break
        value = raw[pos + 4 : pos + 4 + length]
        pos += 4 + _pad4(length)
        if order == ">":
            if numeric.get(code) == length:
                value = value[::-1]
            elif code in OPT_CUSTOM and length >= 4:
                value = value[3::-1] + value[4:]
        out.append((code, value))
    return tuple(out)


def _encode_options(options: Iterable[Option]) -> bytes:
    parts: list[bytes] = []
    for code, value in options:
        if len(value) > 0xFFFF:
            raise ValueError(f"pcapng option {code} is too long ({len(value)} bytes)")
        padding = b"\0" * (_pad4(len(value)) - len(value))
        parts.append(struct.pack("<HH", code, len(value)) + value + padding)
    if not parts:
        return b""
    parts.append(b"\0\0\0\0")  # opt_endofopt
    return b"".join(parts)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def section_header(userappl: str | None = None) -> bytes:
    """A little-endian section header block with unknown section length."""
    opts = [(OPT_SHB_USERAPPL, userappl.encode())] if userappl else []
    body = struct.pack("<IHHq", PCAPNG_BYTE_ORDER_MAGIC, 1, 0, -1) + _encode_options(opts)
    return _block(BT_SHB, body)


class PcapngWriter:
    """Write one little-endian pcapng section to a binary stream, block by block.

    Nothing is buffered beyond the stream's own buffer, so a reader at the other end of a
    fifo sees each packet as soon as `flush()` is called.
    """

    def __init__(self, stream: BinaryIO, userappl: str | None = None) -> None:
        self._stream = stream
        self.interfaces = 0
        stream.write(section_header(userappl))

    def add_interface(self, iface: Interface) -> int:
        """Write an interface description block; returns its id in this section."""
        head = struct.pack("<HHI", iface.linktype, 0, iface.snaplen)
        body = head + _encode_options(iface.options)
        self._stream.write(_block(BT_IDB, body))
        self.interfaces += 1
        return self.interfaces - 1

    def write_packet(self, interface_id: int, packet: Packet, comments: Iterable[str] = ()) -> None:
        """Write `packet` unchanged as an enhanced packet block, plus one opt_comment each."""
        ticks = packet.ts_ticks if packet.ts_ticks is not None else 0
        opts = [*packet.options, *((OPT_COMMENT, c.encode()) for c in comments)]
        body = (
            struct.pack("<III", interface_id, ticks >> 32, ticks & 0xFFFFFFFF)
            + struct.pack("<II", packet.caplen, packet.origlen)
            + packet.data
            + b"\0" * (_pad4(packet.caplen) - packet.caplen)
            + _encode_options(opts)
        )
        self._stream.write(_block(BT_EPB, body))

    def write_raw(self, block: RawBlock) -> None:
        self._stream.write(block.block)

    def flush(self) -> None:
        self._stream.flush()


def read_records(path: Path) -> Iterator[tuple[int, float, int, int, bytes]]:
    """Yield `(linktype, ts, caplen, origlen, data)` for every packet of a capture."""
    with CaptureReader(path) as reader:
        for event in reader:
            if isinstance(event, Packet):
                yield event.linktype, event.ts, event.caplen, event.origlen, event.data


def first_linktype(path: Path) -> int | None:
    """The link type of the capture's first interface, or None if it declares none."""
    with CaptureReader(path) as reader:
        for event in reader:
            if isinstance(event, Interface):
                return event.linktype
            if isinstance(event, Packet):
                return event.linktype
    return None


def replay(
    reader: CaptureReader,
    writer: PcapngWriter,
    comments_for: Callable[[Packet], Sequence[str]],
    drop_comment_prefix: str | None = None,
) -> int:
    """Copy every event of `reader` to `writer`, adding `comments_for(packet)` to each packet.

    Existing comments are kept, except those starting with `drop_comment_prefix`: a
    capture annotated before gets fresh annotations instead of duplicates. Returns the
    number of frames written.
    """
    out_id: dict[int, int] = {}
    frames = 0
    for event in reader:
        if isinstance(event, Interface):
            out_id[len(out_id)] = writer.add_interface(event)
        elif isinstance(event, Packet):
            packet = event
            if drop_comment_prefix is not None and packet.options:
                kept = tuple(o for o in packet.options if not _is_comment(o, drop_comment_prefix))
                if kept != packet.options:
                    packet = dataclasses.replace(packet, options=kept)
            writer.write_packet(out_id[packet.interface], packet, comments_for(packet))
            frames += 1
        else:
            writer.write_raw(event)
            if event.frame_number is not None:
                frames += 1
    return frames


def _is_comment(option: Option, prefix: str) -> bool:
    code, value = option
    return code == OPT_COMMENT and value.decode("utf-8", "replace").startswith(prefix)
