"""EK -> packet table, on recorded tshark output (fast, no tshark needed)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pj

from tcp_teardown.analysis import analyze_packets
from tcp_teardown.facts import Params
from tcp_teardown.ingest import EK_SCHEMA, ek_to_packets
from tcp_teardown.schema import PACKETS

RECORDED = Path(__file__).parent / "data" / "seed004.ek.json"


def _packets(text: bytes) -> pa.Table:
    reader = pj.open_json(io.BytesIO(text), read_options=pj.ReadOptions(block_size=4096),
                          parse_options=pj.ParseOptions(explicit_schema=EK_SCHEMA,
                                                        unexpected_field_behavior="ignore"))
    return pa.Table.from_batches([ek_to_packets(b) for b in reader], schema=PACKETS)


def test_recorded_ek_becomes_typed_packets() -> None:
    table = _packets(RECORDED.read_bytes())
    assert table.schema == PACKETS
    assert table.num_rows == 20
    first = table.slice(0, 1).to_pylist()[0]
    assert first["src_ip"] == "192.168.221.1" and first["src_port"] == 82
    assert first["tcp_flags"] == 0x18 and first["payload_len"] == 617
    assert first["ip_id"] == 0x8E11 and first["ttl"] == 63
    assert table.column("frame_number").to_pylist() == list(range(1, 21))


def test_small_blocks_give_the_same_labels() -> None:
    """Chunk boundaries inside the EK stream must not change anything."""
    table = _packets(RECORDED.read_bytes())
    conns = analyze_packets(table, "seed004", Params()).connections.to_pandas()
    assert conns["open"].astype(str).tolist() == ["midstream", "handshake"]
    assert conns["close"].astype(str).tolist() == ["fin_by_server", "fin_by_server"]
    assert conns["rst_frame"].tolist()[1] == 9


def test_innermost_header_wins_in_tunnels() -> None:
    """Repeated fields (IP in IP): the last occurrence is the header right above TCP."""
    line = (b'{"layers":{"frame_number":["1"],"frame_time_epoch":["1.5"],'
            b'"ip_proto":["17"],'
            b'"ip_src":["198.18.0.1"],"ip_dst":["198.18.0.2"],"ip_ttl":["60"],"ip_id":["0x0001"],'
            b'"ipv6_src":["fd00::1"],"ipv6_dst":["fd00::2"],"ipv6_hlim":["33"],'
            b'"tcp_srcport":["40000"],"tcp_dstport":["80"],"tcp_flags":["0x0002"],'
            b'"tcp_seq_raw":["7"],"tcp_ack_raw":["0"],"tcp_len":["0"],'
            b'"tcp_window_size_value":["100"],"tcp_stream":["0"]}}\n')
    row = _packets(line).to_pylist()[0]
    assert (row["ip_version"], row["src_ip"], row["ttl"], row["ip_id"]) == (6, "fd00::1", 33, None)
