"""The endpoint and host aggregates of a capture with many addresses: the 4-tuple keys
built from raw ports give the same tables as numbered client endpoints."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tcp_teardown import endpoints
from tcp_teardown.endpoints import aggregate_tables
from tcp_teardown.vocab import Close, Open


def _connections(count: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    addresses = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(count // 2)]
    client = rng.integers(0, len(addresses), count)
    server = rng.integers(0, 40, count)
    first = np.sort(rng.uniform(0, 100, count))
    closes = [str(c) for c in Close]
    opens = [str(o) for o in Open]
    return pa.table({
        "client_ip": pa.array([addresses[i] for i in client]),
        "client_port": pa.array(rng.integers(30000, 30010, count).astype(np.int32)),  # 4-tuples repeat
        "server_ip": pa.array([addresses[i] for i in server]),
        "server_port": pa.array(rng.choice([80, 443, 8080], count).astype(np.int32)),
        "open": pa.array([opens[i] for i in rng.integers(0, len(opens), count)]),
        "close": pa.array([closes[i] for i in rng.integers(0, len(closes), count)]),
        "flags": pa.array([[] for _ in range(count)], pa.list_(pa.string())),
        "first_ts": pa.array(first),
        "last_ts": pa.array(first + rng.uniform(0, 5, count)),
    })


@pytest.mark.parametrize("seed", [0, 1])
def test_raw_and_numbered_four_tuples_give_the_same_tables(seed: int) -> None:
    conns = _connections(3000, seed)
    direct = aggregate_tables(conns, 30.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(endpoints, "_KEY_LIMIT", 0)  # forces the numbered client endpoints
        numbered = aggregate_tables(conns, 30.0)
    for ours, theirs in zip(direct, numbered, strict=True):
        assert ours.equals(theirs)
    table = direct[0]
    keys = list(zip(table.column("server_ip").to_pylist(), table.column("server_port").to_pylist(), strict=True))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert sum(table.column("connections").to_pylist()) == conns.num_rows
    assert direct[1].column("ip").to_pylist() == sorted(direct[1].column("ip").to_pylist())
