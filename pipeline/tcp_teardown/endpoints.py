"""Per-server-endpoint and per-host aggregates (the second and third tables).

`server_active_close_share` is fin_by_server over all orderly closes
(fin_by_client + fin_by_server + fin_simultaneous) of that endpoint: how often the
server, not the client, hung up first. Null when the endpoint had no orderly close.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tcp_teardown.connections import pair_codes
from tcp_teardown.schema import ENDPOINTS, HOSTS, arrow_table
from tcp_teardown.vocab import CLOSE_VALUES, OPEN_VALUES, Close, Flag, Open

KEY = ["server_ip", "server_port"]


def endpoint_table(conns: pd.DataFrame, msl: float) -> pa.Table:
    """One row per server endpoint (ip, port), counted with bincount over dense endpoint ids."""
    if conns.empty:
        return ENDPOINTS.empty_table()
    ip_code, _ = pd.factorize(conns["server_ip"])
    endpoint, first_row = _dense_ids(pair_codes(ip_code, conns["server_port"].to_numpy()))
    count = len(first_row)
    out = pd.DataFrame({
        "server_ip": conns["server_ip"].to_numpy()[first_row],
        "server_port": conns["server_port"].to_numpy()[first_row],
        "connections": np.bincount(endpoint, minlength=count),
    })
    for column, values in (("open", OPEN_VALUES), ("close", CLOSE_VALUES)):
        labels = conns[column].astype(str).to_numpy()
        for value in values:
            out[f"{column}_{value}"] = np.bincount(endpoint[labels == value], minlength=count)
    orderly = (out[f"close_{Close.FIN_BY_CLIENT}"] + out[f"close_{Close.FIN_BY_SERVER}"]
               + out[f"close_{Close.FIN_SIMULTANEOUS}"])
    out["server_active_close_share"] = (out[f"close_{Close.FIN_BY_SERVER}"] / orderly).where(orderly > 0)
    out["half_open_peak_per_s"] = _half_open_peak(conns, endpoint, count)
    reuse = has_flag(conns["flags"], Flag.PORT_REUSE_TIME_WAIT)
    out["port_reuse_time_wait"] = np.bincount(endpoint[reuse], minlength=count)
    peaks = host_frame(conns, msl).set_index("ip")["time_wait_peak"]
    out["server_time_wait_peak"] = out["server_ip"].map(peaks).fillna(0).astype(np.int64)
    out = out.sort_values(KEY, kind="stable")
    return arrow_table(out[ENDPOINTS.names], ENDPOINTS)


def _dense_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..n-1 (from pair_codes) and, per code, the first row that has it."""
    first = np.full(int(codes.max()) + 1 if len(codes) else 0, -1, dtype=np.int64)
    rows = np.arange(len(codes))[::-1]
    first[codes[::-1]] = rows  # reversed: the first row of each code is written last
    return codes, first


def has_flag(flags: pd.Series, flag: Flag) -> np.ndarray:
    """Per row of a flags (list) column, whether it holds `flag` — without a Python loop."""
    lists = pa.array(flags.tolist(), pa.list_(pa.string())) if flags.dtype == object else \
        pa.array(flags.array)
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy()
    hit = pc.equal(flat, str(flag)).to_numpy(zero_copy_only=False)
    return np.bincount(parents[hit], minlength=len(lists)) > 0


def _half_open_peak(conns: pd.DataFrame, endpoint: np.ndarray, count: int) -> np.ndarray:
    """Per endpoint, the most half-open (syn_ack_no_ack) connections started within one second."""
    half = (conns["open"].astype(str) == str(Open.SYN_ACK_NO_ACK)).to_numpy()
    peak = np.zeros(count, dtype=np.int64)
    if not half.any():
        return peak
    second = np.floor(conns["first_ts"].to_numpy()[half]).astype(np.int64)
    per_second = pd.DataFrame({"e": endpoint[half], "s": second}).groupby(["e", "s"]).size()
    best = per_second.groupby(level=0).max()
    peak[best.index.to_numpy()] = best.to_numpy()
    return peak


def host_frame(conns: pd.DataFrame, msl: float) -> pd.DataFrame:
    """Per host: active closes and the most connections it held in TIME_WAIT at once.

    Each active close holds TIME_WAIT for 2·MSL from the end of the connection, or until
    a new SYN reuses its 4-tuple (the stack then ends TIME_WAIT and accepts it).
    """
    close = conns["close"].astype(str)
    until = _time_wait_end(conns, msl)
    client_tw = close.isin([str(Close.FIN_BY_CLIENT), str(Close.FIN_SIMULTANEOUS)]).to_numpy()
    server_tw = close.isin([str(Close.FIN_BY_SERVER), str(Close.FIN_SIMULTANEOUS)]).to_numpy()
    holders = pd.DataFrame({
        "ip": np.concatenate([conns["client_ip"].to_numpy()[client_tw], conns["server_ip"].to_numpy()[server_tw]]),
        "t": np.concatenate([conns["last_ts"].to_numpy()[client_tw], conns["last_ts"].to_numpy()[server_tw]]),
        "end": np.concatenate([until[client_tw], until[server_tw]]),
    })
    if holders.empty:
        return pd.DataFrame({"ip": pd.Series([], dtype=object),
                             "active_closes": pd.Series([], dtype=np.int64),
                             "time_wait_peak": pd.Series([], dtype=np.int64)})
    events = pd.concat([
        pd.DataFrame({"ip": holders["ip"], "t": holders["t"], "d": 1}),
        pd.DataFrame({"ip": holders["ip"], "t": holders["end"], "d": -1}),
    ], ignore_index=True).sort_values(["ip", "t", "d"], kind="stable")
    events["held"] = events.groupby("ip")["d"].cumsum()
    out = pd.DataFrame({
        "active_closes": holders.groupby("ip").size(),
        "time_wait_peak": events.groupby("ip")["held"].max(),
    }).reset_index()
    return out.astype({"active_closes": np.int64, "time_wait_peak": np.int64})


def _time_wait_end(conns: pd.DataFrame, msl: float) -> np.ndarray:
    """When each connection's TIME_WAIT ends: 2·MSL after it, or at the next SYN on its 4-tuple."""
    end = conns["last_ts"].to_numpy(dtype=float) + 2 * msl
    if "client_port" not in conns:
        return end
    client = pair_codes(pd.factorize(conns["client_ip"])[0], conns["client_port"].to_numpy())
    server = pair_codes(pd.factorize(conns["server_ip"])[0], conns["server_port"].to_numpy())
    four_tuple = pair_codes(client, server)
    order = np.lexsort((conns["first_ts"].to_numpy(), four_tuple))
    codes = four_tuple[order]
    next_start = np.r_[conns["first_ts"].to_numpy()[order][1:], np.inf]
    same = np.r_[codes[1:] == codes[:-1], False]
    reused = np.where(same, np.minimum(end[order], np.maximum(next_start, conns["last_ts"].to_numpy()[order])),
                      end[order])
    out = np.empty_like(end)
    out[order] = reused
    return out


def host_table(conns: pd.DataFrame, msl: float) -> pa.Table:
    if conns.empty:
        return HOSTS.empty_table()
    return arrow_table(host_frame(conns, msl)[HOSTS.names], HOSTS)
