"""Per-server-endpoint and per-host aggregates (the second and third tables).

`server_active_close_share` is fin_by_server over all orderly closes
(fin_by_client + fin_by_server + fin_simultaneous) of that endpoint: how often the
server, not the client, hung up first. Null when the endpoint had no orderly close.

Both tables are computed from integer codes: addresses are numbered by their sorted
text once, labels by their position in the vocabulary, so no string is compared per row.
Server endpoints are ranked once, and that ranking serves both the endpoint rows and the
4-tuples of the TIME_WAIT pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tcp_teardown.arrays import from_numpy, scalar, table, to_numpy
from tcp_teardown.codes import factorize, radix_order
from tcp_teardown.filters import value_codes
from tcp_teardown.schema import ENDPOINTS, HOSTS
from tcp_teardown.vocab import CLOSE_VALUES, OPEN_VALUES, Close, Flag, Open

if TYPE_CHECKING:  # the bulk path passes Arrow tables and never imports pandas
    import pandas as pd

# Integer keys stay below this (int64, non-negative).
_KEY_LIMIT = 1 << 63

# The connection columns the aggregates read; client_port is optional (without it,
# TIME_WAIT always lasts 2·MSL).
COLUMNS = ["client_ip", "client_port", "server_ip", "server_port", "open", "close", "flags",
           "first_ts", "last_ts"]


@dataclass(frozen=True)
class _Conns:
    """The connection columns as numpy arrays; addresses as positions in `ips`."""

    ips: pa.Array  # every client and server address, sorted, so positions order like the text
    client: np.ndarray
    server: np.ndarray
    client_port: np.ndarray | None
    server_port: np.ndarray
    open: np.ndarray  # position in OPEN_VALUES (len(OPEN_VALUES) for anything else)
    close: np.ndarray  # position in CLOSE_VALUES
    port_reuse: np.ndarray  # whether the flags hold port_reuse_time_wait
    first_ts: np.ndarray
    last_ts: np.ndarray
    server_endpoint: np.ndarray  # rank of the row's (server, server_port) among server_endpoints
    server_endpoints: np.ndarray  # the distinct _endpoint_keys of the servers, ascending


def aggregate_tables(conns: pa.Table, msl: float) -> tuple[pa.Table, pa.Table]:
    """The endpoints and hosts tables of these connections (the host pass is shared)."""
    if conns.num_rows == 0:
        return ENDPOINTS.empty_table(), HOSTS.empty_table()
    cols = _columns(conns)
    hosts, host_ips = _hosts(cols, _time_wait_end(cols, msl))
    return _endpoints(cols, hosts, host_ips), hosts


def endpoint_table(conns: pd.DataFrame | pa.Table, msl: float) -> pa.Table:
    """One row per server endpoint (ip, port), sorted by address then port."""
    return aggregate_tables(_arrow(conns), msl)[0]


def host_table(conns: pd.DataFrame | pa.Table, msl: float) -> pa.Table:
    """One row per host that closed actively, sorted by address."""
    return aggregate_tables(_arrow(conns), msl)[1]


def _arrow(conns: pd.DataFrame | pa.Table) -> pa.Table:
    if isinstance(conns, pa.Table):
        return conns
    return pa.Table.from_pandas(conns[[c for c in COLUMNS if c in conns]], preserve_index=False)


def _columns(conns: pa.Table) -> _Conns:
    ips, client, server = _address_codes(conns.column("client_ip"), conns.column("server_ip"))
    names = conns.column_names
    server_port = to_numpy(conns.column("server_port"))
    server_endpoint, server_endpoints = _ranked(_endpoint_keys(server, server_port))
    return _Conns(
        ips=ips, client=client, server=server,
        client_port=to_numpy(conns.column("client_port")) if "client_port" in names else None,
        server_port=server_port,
        open=value_codes(conns.column("open"), OPEN_VALUES),
        close=value_codes(conns.column("close"), CLOSE_VALUES),
        port_reuse=_has_flag(conns.column("flags"), Flag.PORT_REUSE_TIME_WAIT),
        first_ts=to_numpy(conns.column("first_ts")).astype(float, copy=False),
        last_ts=to_numpy(conns.column("last_ts")).astype(float, copy=False),
        server_endpoint=server_endpoint, server_endpoints=server_endpoints,
    )


def _address_codes(client: pa.ChunkedArray, server: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The sorted distinct addresses, and each client's and server's position among them.

    Both columns are hashed once, together, into one dictionary; only its (distinct)
    entries are sorted, and an entry's rank in that sort is its position."""
    rows = len(client)
    both = pc.dictionary_encode(pa.concat_arrays([_plain_text(client), _plain_text(server)]))
    by_text = to_numpy(pc.sort_indices(both.dictionary))
    position_of_entry = np.empty(len(by_text), dtype=np.int64)
    position_of_entry[by_text] = np.arange(len(by_text))
    positions = position_of_entry[to_numpy(both.indices)]
    return both.dictionary.take(from_numpy(by_text)), positions[:rows], positions[rows:]


def _plain_text(column: pa.ChunkedArray) -> pa.StringArray:
    """The column as one string array (whatever string or dictionary type pandas gave)."""
    array = column.combine_chunks()
    return array if array.type == pa.string() else array.cast(pa.string())


def _has_flag(flags: pa.ChunkedArray, flag: Flag) -> np.ndarray:
    """Per row of a flags (list) column, whether it holds `flag` — without a Python loop."""
    lists = flags.combine_chunks()
    if lists.type != pa.list_(pa.string()):  # e.g. list<null> when pandas saw only empty lists
        lists = lists.cast(pa.list_(pa.string()))
    hit = to_numpy(pc.fill_null(pc.equal(pc.list_flatten(lists), scalar(str(flag), pa.string())),
                                scalar(False, pa.bool_())))
    found = np.zeros(len(lists), dtype=bool)
    found[to_numpy(pc.list_parent_indices(lists))[hit]] = True
    return found


def _endpoints(cols: _Conns, hosts: pa.Table, host_ips: np.ndarray) -> pa.Table:
    """Counted with bincount over endpoint numbers that follow the (address, port) order
    (`host_ips`: each host row's position in cols.ips)."""
    endpoint, keys = cols.server_endpoint, cols.server_endpoints
    count = len(keys)
    server = keys >> 32
    columns = {
        "server_ip": cols.ips.take(from_numpy(server)),
        "server_port": ((keys & 0xFFFFFFFF) - 2**31).astype(np.int32),
        "connections": np.bincount(endpoint, minlength=count),
    }
    columns.update(_label_counts("open", OPEN_VALUES, cols.open, endpoint, count))
    columns.update(_label_counts("close", CLOSE_VALUES, cols.close, endpoint, count))
    by_server = columns[f"close_{Close.FIN_BY_SERVER}"]
    orderly = columns[f"close_{Close.FIN_BY_CLIENT}"] + by_server + columns[f"close_{Close.FIN_SIMULTANEOUS}"]
    share = by_server / np.where(orderly > 0, orderly, 1)
    columns["server_active_close_share"] = from_numpy(share, pa.float64(), mask=orderly == 0)
    columns["half_open_peak_per_s"] = _half_open_peak(cols, endpoint, count)
    columns["port_reuse_time_wait"] = np.bincount(endpoint[cols.port_reuse], minlength=count)
    peak_of = np.zeros(len(cols.ips), np.int64)
    peak_of[host_ips] = to_numpy(hosts.column("time_wait_peak"))
    columns["server_time_wait_peak"] = peak_of[server]
    return table(columns, ENDPOINTS)


def _endpoint_keys(address: np.ndarray, port: np.ndarray) -> np.ndarray:
    """One int64 per (address position, port) that sorts like the pair."""
    return address.astype(np.int64) << 32 | (port.astype(np.int64) + 2**31)


def _ranked(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the rank of its key among the distinct keys; and the distinct keys, ascending."""
    if len(keys) == 0:
        return np.zeros(0, np.int64), keys
    order = np.argsort(keys)  # equal keys get one rank whatever their order: no stable sort
    ordered = keys[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.cumsum(first) - 1
    return rank, ordered[first]


def _label_counts(column: str, values: tuple[str, ...], codes: np.ndarray, endpoint: np.ndarray,
                  count: int) -> dict[str, np.ndarray]:
    """`{column}_{value}` counts per endpoint, all values in one bincount."""
    width = len(values) + 1  # the last code counts labels outside the vocabulary
    # Laid out value-major, each value's counts are one contiguous row: no strided copies.
    table = np.bincount(codes * count + endpoint, minlength=width * count).reshape(width, count)
    return {f"{column}_{value}": table[i] for i, value in enumerate(values)}


def _half_open_peak(cols: _Conns, endpoint: np.ndarray, count: int) -> np.ndarray:
    """Per endpoint, the most half-open (syn_ack_no_ack) connections started within one second."""
    half = cols.open == OPEN_VALUES.index(Open.SYN_ACK_NO_ACK)
    peak = np.zeros(count, dtype=np.int64)
    if not half.any():
        return peak
    second = np.floor(cols.first_ts[half]).astype(np.int64)
    order = radix_order(endpoint[half], count, np.argsort(second, kind="stable"))
    ends, second = endpoint[half][order], second[order]
    starts = np.flatnonzero(np.r_[True, (ends[1:] != ends[:-1]) | (second[1:] != second[:-1])])
    np.maximum.at(peak, ends[starts], np.diff(np.r_[starts, len(ends)]))
    return peak


def _hosts(cols: _Conns, until: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """Per host: active closes and the most connections it held in TIME_WAIT at once; and
    each host row's position in cols.ips.

    Each active close holds TIME_WAIT for 2·MSL from the end of the connection, or until
    a new SYN reuses its 4-tuple (the stack then ends TIME_WAIT and accepts it).
    """
    both = CLOSE_VALUES.index(Close.FIN_SIMULTANEOUS)
    client_tw = (cols.close == CLOSE_VALUES.index(Close.FIN_BY_CLIENT)) | (cols.close == both)
    server_tw = (cols.close == CLOSE_VALUES.index(Close.FIN_BY_SERVER)) | (cols.close == both)
    holder = np.concatenate([cols.client[client_tw], cols.server[server_tw]])
    if len(holder) == 0:
        return HOSTS.empty_table(), np.zeros(0, np.int64)
    start = np.concatenate([cols.last_ts[client_tw], cols.last_ts[server_tw]])
    end = np.concatenate([until[client_tw], until[server_tw]])
    # Ends are listed before starts, so the stable sort by (host, time) releases a TIME_WAIT
    # before taking one at the same instant.
    host, held = np.r_[holder, holder], np.r_[np.full(len(holder), -1), np.ones(len(holder), np.int64)]
    order = radix_order(host, len(cols.ips), np.argsort(np.r_[end, start], kind="stable"))
    host = host[order]
    held = np.cumsum(held[order])  # each host's events sum to zero: one running sum serves all
    starts = np.flatnonzero(np.r_[True, host[1:] != host[:-1]])
    ips = host[starts]
    return table({"ip": cols.ips.take(from_numpy(ips)),
                  "active_closes": np.bincount(holder)[ips],
                  "time_wait_peak": np.maximum.reduceat(held, starts)}, HOSTS), ips


def _time_wait_end(cols: _Conns, msl: float) -> np.ndarray:
    """When each connection's TIME_WAIT ends: 2·MSL after it, or at the next SYN on its 4-tuple."""
    end = cols.last_ts + 2 * msl
    if cols.client_port is None:
        return end
    four_tuple, tuples = _four_tuples(cols, cols.client_port)
    order = radix_order(four_tuple, tuples, np.argsort(cols.first_ts, kind="stable"))
    codes = four_tuple[order]
    next_start = np.r_[cols.first_ts[order][1:], np.inf]
    same = np.r_[codes[1:] == codes[:-1], False]
    reused = np.where(same, np.minimum(end[order], np.maximum(next_start, cols.last_ts[order])), end[order])
    out = np.empty_like(end)
    out[order] = reused
    return out


def _four_tuples(cols: _Conns, client_port: np.ndarray) -> tuple[np.ndarray, int]:
    """One integer per (client, client_port, server endpoint) below the returned limit.

    Client address and port are combined as they are when the key fits 63 bits (no hash
    pass; a few more radix passes are cheaper), else the client endpoints are numbered."""
    servers = len(cols.server_endpoints)
    port_low = int(client_port.min())
    port_span = int(client_port.max()) - port_low + 1
    if len(cols.ips) * port_span * servers < _KEY_LIMIT:
        client = cols.client * port_span
        client += client_port.astype(np.int64) - port_low
        clients = len(cols.ips) * port_span
    else:
        client, distinct = factorize(_endpoint_keys(cols.client, client_port))
        clients = len(distinct)
    client *= servers
    client += cols.server_endpoint
    return client, clients * servers
