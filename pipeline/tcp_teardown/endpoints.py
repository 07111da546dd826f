"""Per-server-endpoint and per-host aggregates (the second and third tables).

`server_active_close_share` is fin_by_server over all orderly closes
(fin_by_client + fin_by_server + fin_simultaneous) of that endpoint: how often the
server, not the client, hung up first. Null when the endpoint had no orderly close.

Both tables are computed from integer codes: addresses are numbered by their sorted
text once, labels by their position in the vocabulary, so no string is compared per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tcp_teardown.arrays import from_numpy, scalar, table, to_numpy
from tcp_teardown.codes import factorize
from tcp_teardown.filters import radix_order, value_codes
from tcp_teardown.schema import ENDPOINTS, HOSTS
from tcp_teardown.vocab import CLOSE_VALUES, OPEN_VALUES, Close, Flag, Open

if TYPE_CHECKING:  # the bulk path passes Arrow tables and never imports pandas
    import pandas as pd

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


def aggregate_tables(conns: pa.Table, msl: float) -> tuple[pa.Table, pa.Table]:
    """The endpoints and hosts tables of these connections (the host pass is shared)."""
    if conns.num_rows == 0:
        return ENDPOINTS.empty_table(), HOSTS.empty_table()
    cols = _columns(conns)
    hosts = _hosts(cols, _time_wait_end(cols, msl))
    return _endpoints(cols, hosts), hosts


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
    return _Conns(
        ips=ips, client=client, server=server,
        client_port=to_numpy(conns.column("client_port")) if "client_port" in names else None,
        server_port=to_numpy(conns.column("server_port")),
        open=value_codes(conns.column("open"), OPEN_VALUES),
        close=value_codes(conns.column("close"), CLOSE_VALUES),
        port_reuse=_has_flag(conns.column("flags"), Flag.PORT_REUSE_TIME_WAIT),
        first_ts=to_numpy(conns.column("first_ts")).astype(float, copy=False),
        last_ts=to_numpy(conns.column("last_ts")).astype(float, copy=False),
    )


def _address_codes(client: pa.ChunkedArray, server: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The sorted distinct addresses, and each client's and server's position among them.

    Only the distinct addresses are sorted: each column is hashed once into a dictionary."""
    client_enc = pc.dictionary_encode(client.combine_chunks())
    server_enc = pc.dictionary_encode(server.combine_chunks())
    ips = pc.unique(pa.concat_arrays([client_enc.dictionary, server_enc.dictionary]))
    ips = ips.take(pc.sort_indices(ips))

    def positions(encoded: pa.DictionaryArray) -> np.ndarray:
        of_entry = to_numpy(pc.index_in(encoded.dictionary, value_set=ips)).astype(np.int64)
        return of_entry[to_numpy(encoded.indices)]

    return ips, positions(client_enc), positions(server_enc)


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


def _endpoints(cols: _Conns, hosts: pa.Table) -> pa.Table:
    """Counted with bincount over endpoint numbers that follow the (address, port) order."""
    endpoint, keys = _ranked(_endpoint_keys(cols.server, cols.server_port))
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
    peak_of[to_numpy(pc.index_in(hosts.column("ip"), value_set=cols.ips))] = to_numpy(hosts.column("time_wait_peak"))
    columns["server_time_wait_peak"] = peak_of[server]
    return table(columns, ENDPOINTS)


def _endpoint_keys(address: np.ndarray, port: np.ndarray) -> np.ndarray:
    """One int64 per (address position, port) that sorts like the pair."""
    return address.astype(np.int64) << 32 | (port.astype(np.int64) + 2**31)


def _dense(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes 0..n-1 for the distinct keys (in first-seen order), and n."""
    codes, distinct = factorize(keys)
    return codes, len(distinct)


def _ranked(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the rank of its key among the distinct keys; and the distinct keys, ascending."""
    distinct, inverse = np.unique(keys, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64, copy=False), distinct


def _label_counts(column: str, values: tuple[str, ...], codes: np.ndarray, endpoint: np.ndarray,
                  count: int) -> dict[str, np.ndarray]:
    """`{column}_{value}` counts per endpoint, all values in one bincount."""
    width = len(values) + 1  # the last code counts labels outside the vocabulary
    table = np.bincount(endpoint * width + codes, minlength=count * width).reshape(count, width)
    return {f"{column}_{value}": np.ascontiguousarray(table[:, i]) for i, value in enumerate(values)}


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


def _hosts(cols: _Conns, until: np.ndarray) -> pa.Table:
    """Per host: active closes and the most connections it held in TIME_WAIT at once.

    Each active close holds TIME_WAIT for 2·MSL from the end of the connection, or until
    a new SYN reuses its 4-tuple (the stack then ends TIME_WAIT and accepts it).
    """
    both = CLOSE_VALUES.index(Close.FIN_SIMULTANEOUS)
    client_tw = (cols.close == CLOSE_VALUES.index(Close.FIN_BY_CLIENT)) | (cols.close == both)
    server_tw = (cols.close == CLOSE_VALUES.index(Close.FIN_BY_SERVER)) | (cols.close == both)
    holder = np.concatenate([cols.client[client_tw], cols.server[server_tw]])
    if len(holder) == 0:
        return HOSTS.empty_table()
    start = np.concatenate([cols.last_ts[client_tw], cols.last_ts[server_tw]])
    end = np.concatenate([until[client_tw], until[server_tw]])
    # Ends are listed before starts, so the stable sort by (host, time) releases a TIME_WAIT
    # before taking one at the same instant.
    host, held = np.r_[holder, holder], np.r_[np.full(len(holder), -1), np.ones(len(holder), np.int64)]
    order = radix_order(host, len(cols.ips), np.argsort(np.r_[end, start], kind="stable"))
    host = host[order]
    held = np.cumsum(held[order])  # each host's events sum to zero: one running sum serves all
    starts = np.flatnonzero(np.r_[True, host[1:] != host[:-1]])
    return table({"ip": cols.ips.take(from_numpy(host[starts])),
                  "active_closes": np.bincount(holder)[host[starts]],
                  "time_wait_peak": np.maximum.reduceat(held, starts)}, HOSTS)


def _time_wait_end(cols: _Conns, msl: float) -> np.ndarray:
    """When each connection's TIME_WAIT ends: 2·MSL after it, or at the next SYN on its 4-tuple."""
    end = cols.last_ts + 2 * msl
    if cols.client_port is None:
        return end
    client, _ = _dense(_endpoint_keys(cols.client, cols.client_port))
    server, servers = _dense(_endpoint_keys(cols.server, cols.server_port))
    four_tuple, tuples = _dense(client * servers + server)
    order = radix_order(four_tuple, tuples, np.argsort(cols.first_ts, kind="stable"))
    codes = four_tuple[order]
    next_start = np.r_[cols.first_ts[order][1:], np.inf]
    same = np.r_[codes[1:] == codes[:-1], False]
    reused = np.where(same, np.minimum(end[order], np.maximum(next_start, cols.last_ts[order])), end[order])
    out = np.empty_like(end)
    out[order] = reused
    return out
