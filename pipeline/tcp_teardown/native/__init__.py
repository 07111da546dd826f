"""The native capture reader: pcap/pcapng (plain, gzip, zstd) to PACKETS record batches
with NumPy, tens of times faster than tshark.

    from tcp_teardown.native import NativeUnsupported, TruncatedCapture, read_packets

    for batch in read_packets(path):  # pyarrow.RecordBatch, schema tcp_teardown.schema.PACKETS
        ...

Rows are the TCP segments of the file in capture order, with the values the tshark engine
gets from tshark: frame numbers counting every frame, frame.time_epoch, address text,
raw header fields (ack_raw as in the header, ACK flag or not) and tcp.stream numbers.
Files it cannot read exactly raise NativeUnsupported (fall back to tshark); a file cut
short mid-record, or with a damaged record, yields everything complete before, then
raises TruncatedCapture (tshark, too, prints those frames and then complains).

Understood: classic pcap (micro/nanosecond, either byte order) and pcapng (sections of
either byte order, interfaces with their own link type, timestamp resolution and offset;
EPB, SPB, the obsolete PB; custom and systemd-journal blocks count as frames without a
packet, as in Wireshark; other blocks skipped); link types Ethernet (802.1Q/802.1ad/QinQ
tags, LLC/SNAP), Linux SLL and SLL2, raw IP (101, 12, 14, 228, 229), BSD NULL and LOOP;
IPv4 with options, IPv6 with extension headers, AH.

Declined: other link types; TCP inside tunnels (GRE, IP-in-IP, MPLS, PPPoE, VXLAN, Geneve,
GTP, Teredo, ...), which tshark decodes to the innermost headers; pcapng sysdig blocks;
xz/bzip2/lz4 compression; the extended-header ("modified") pcap variant.

Like the tshark engine (which turns IP reassembly off): a first IP fragment gives a row
from the headers it carries, with payload_len 0 (tshark has no tcp.len for it); later
fragments give none. A TCP header shorter than 16 captured bytes, or with a header
length field below 20 (tshark prints no flags), gives no row. Simple packet blocks have
no timestamp: ts 0.0.
"""

from tcp_teardown.native.errors import NativeUnsupported, TruncatedCapture
from tcp_teardown.native.reader import read_packets

__all__ = ["NativeUnsupported", "TruncatedCapture", "read_packets"]
