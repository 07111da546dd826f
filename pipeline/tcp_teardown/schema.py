"""The pyarrow schemas of every table tcp-teardown produces or writes.

`PACKETS` is the contract between capture engines (tshark EK today, the native
reader) and the connection logic: one row per TCP segment, raw header facts only.
The other schemas are the public output tables (docs/teardown-taxonomy.md).
"""

from __future__ import annotations

import pyarrow as pa

from tcp_teardown.vocab import CLOSE_VALUES, OPEN_VALUES

LABEL = pa.dictionary(pa.int8(), pa.string())
# A capture holds few distinct addresses: engines hand them over numbered, each text once.
ADDRESS = pa.dictionary(pa.int32(), pa.string())

# One row per TCP segment, in capture order. Every engine must produce exactly these
# columns, with these types, from the raw headers (innermost IP/TCP of encapsulations).
PACKETS = pa.schema(
    [
        pa.field("frame_number", pa.int64(), nullable=False),  # 1-based, as Wireshark counts
        pa.field("ts", pa.float64(), nullable=False),  # seconds since the epoch
        pa.field("ip_version", pa.int8(), nullable=False),  # 4 or 6
        pa.field("src_ip", ADDRESS, nullable=False),  # text form as tshark prints it
        pa.field("dst_ip", ADDRESS, nullable=False),
        pa.field("src_port", pa.int32(), nullable=False),
        pa.field("dst_port", pa.int32(), nullable=False),
        pa.field("tcp_flags", pa.int16(), nullable=False),  # the 12 flag bits (FIN=0x001 ...)
        pa.field("seq_raw", pa.int64(), nullable=False),  # absolute sequence number
        pa.field("ack_raw", pa.int64(), nullable=False),  # the raw ack field (read only with the ACK flag)
        pa.field("payload_len", pa.int32(), nullable=False),  # TCP payload bytes
        pa.field("window", pa.int32(), nullable=False),  # raw window field, unscaled
        pa.field("ttl", pa.int16(), nullable=False),  # IPv4 TTL or IPv6 hop limit
        pa.field("ip_id", pa.int32()),  # IPv4 identification; null for IPv6
        pa.field("tcp_stream", pa.int64()),  # tshark's tcp.stream (native engine mimics it)
    ]
)

FLOW_ID = pa.string()  # 16 hex digits

CONNECTIONS = pa.schema(
    [
        pa.field("flow_id", FLOW_ID, nullable=False),
        pa.field("file", pa.string(), nullable=False),
        pa.field("tcp_stream", pa.int64()),
        pa.field("client_ip", pa.string(), nullable=False),
        pa.field("client_port", pa.int32(), nullable=False),
        pa.field("server_ip", pa.string(), nullable=False),
        pa.field("server_port", pa.int32(), nullable=False),
        pa.field("ip_version", pa.int8(), nullable=False),
        pa.field("roles_guessed", pa.bool_(), nullable=False),
        pa.field("open", LABEL, nullable=False),
        pa.field("close", LABEL, nullable=False),
        pa.field("flags", pa.list_(pa.string()), nullable=False),
        pa.field("time_wait_side", LABEL),
        pa.field("first_ts", pa.float64(), nullable=False),
        pa.field("last_ts", pa.float64(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("close_duration_s", pa.float64()),
        pa.field("idle_before_close_s", pa.float64()),
        pa.field("packets_c2s", pa.int64(), nullable=False),
        pa.field("packets_s2c", pa.int64(), nullable=False),
        pa.field("bytes_c2s", pa.int64(), nullable=False),
        pa.field("bytes_s2c", pa.int64(), nullable=False),
        pa.field("syn_ack_intervals", pa.list_(pa.float64()), nullable=False),
        pa.field("syn_frame", pa.int64()),
        pa.field("first_fin_frame", pa.int64()),
        pa.field("second_fin_frame", pa.int64()),
        pa.field("rst_frame", pa.int64()),
        pa.field("final_ack_frame", pa.int64()),
        pa.field("first_frame", pa.int64(), nullable=False),
        pa.field("last_frame", pa.int64(), nullable=False),
        pa.field("key_frames", pa.list_(pa.int64()), nullable=False),
    ]
)

# One row per key frame: the frame, the connection, what the frame is in that
# connection (`roles`, e.g. "second FIN") and which labels it proves.
FRAMES = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),
        pa.field("frame_number", pa.int64(), nullable=False),
        pa.field("flow_id", FLOW_ID, nullable=False),
        pa.field("tcp_stream", pa.int64()),
        pa.field("roles", pa.list_(pa.string()), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
    ]
)

ENDPOINT_FIXED = [
    pa.field("server_ip", pa.string(), nullable=False),
    pa.field("server_port", pa.int32(), nullable=False),
    pa.field("connections", pa.int64(), nullable=False),
    pa.field("server_active_close_share", pa.float64()),
    pa.field("half_open_peak_per_s", pa.int64(), nullable=False),
    pa.field("port_reuse_time_wait", pa.int64(), nullable=False),
    pa.field("server_time_wait_peak", pa.int64(), nullable=False),
]
ENDPOINTS = pa.schema(
    ENDPOINT_FIXED
    + [pa.field(f"open_{v}", pa.int64(), nullable=False) for v in OPEN_VALUES]
    + [pa.field(f"close_{v}", pa.int64(), nullable=False) for v in CLOSE_VALUES]
)

HOSTS = pa.schema(
    [
        pa.field("ip", pa.string(), nullable=False),
        pa.field("active_closes", pa.int64(), nullable=False),
        pa.field("time_wait_peak", pa.int64(), nullable=False),
    ]
)
