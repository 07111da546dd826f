"""Per-server-endpoint and per-host aggregates (the second and third tables).

`server_active_close_share` is fin_by_server over all orderly closes
(fin_by_client + fin_by_server + fin_simultaneous) of that endpoint: how often the
server, not the client, hung up first. Null when the endpoint had no orderly close.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from tcp_teardown.schema import ENDPOINTS, HOSTS, arrow_table
from tcp_teardown.vocab import CLOSE_VALUES, OPEN_VALUES, Close, Flag, Open

KEY = ["server_ip", "server_port"]


def endpoint_table(conns: pd.DataFrame, msl: float) -> pa.Table:
    """One row per server endpoint (ip, port)."""
    if conns.empty:
        return ENDPOINTS.empty_table()
    conns = conns.assign(open=conns["open"].astype(str), close=conns["close"].astype(str))
    grouped = conns.groupby(KEY, sort=True)
    out = grouped.size().rename("connections").to_frame()
    for column, values in (("open", OPEN_VALUES), ("close", CLOSE_VALUES)):
        counts = pd.crosstab([conns[k] for k in KEY], conns[column])
        for value in values:
            out[f"{column}_{value}"] = counts.get(value, 0)
    out = out.fillna(0)
    orderly = (out[f"close_{Close.FIN_BY_CLIENT}"] + out[f"close_{Close.FIN_BY_SERVER}"]
               + out[f"close_{Close.FIN_SIMULTANEOUS}"])
    out["server_active_close_share"] = (out[f"close_{Close.FIN_BY_SERVER}"] / orderly).where(orderly > 0)
    out["half_open_peak_per_s"] = _half_open_peak(conns).reindex(out.index, fill_value=0)
    reuse = conns["flags"].map(lambda flags: str(Flag.PORT_REUSE_TIME_WAIT) in list(flags))
    out["port_reuse_time_wait"] = reuse.groupby([conns[k] for k in KEY]).sum().reindex(out.index, fill_value=0)
    hosts = host_frame(conns, msl)
    peaks = hosts.set_index("ip")["time_wait_peak"]
    out = out.reset_index()
    out["server_time_wait_peak"] = out["server_ip"].map(peaks).fillna(0).astype(np.int64)
    return arrow_table(out[ENDPOINTS.names], ENDPOINTS)


def _half_open_peak(conns: pd.DataFrame) -> pd.Series:
    """Most connections left in SYN_RCVD (syn_ack_no_ack) that started within one second."""
    half = conns[conns["open"] == str(Open.SYN_ACK_NO_ACK)]
    if half.empty:
        return pd.Series(dtype=np.int64)
    second = np.floor(half["first_ts"]).astype(np.int64)
    per_second = half.groupby([half[k] for k in KEY] + [second]).size()
    return per_second.groupby(level=[0, 1]).max()


def host_frame(conns: pd.DataFrame, msl: float) -> pd.DataFrame:
    """Per host: active closes and the most connections it held in TIME_WAIT at once.

    Each active close holds TIME_WAIT for 2·MSL from the end of the connection.
    """
    close = conns["close"].astype(str)
    client_tw = close.isin([str(Close.FIN_BY_CLIENT), str(Close.FIN_SIMULTANEOUS)])
    server_tw = close.isin([str(Close.FIN_BY_SERVER), str(Close.FIN_SIMULTANEOUS)])
    holders = pd.concat([
        pd.DataFrame({"ip": conns.loc[client_tw, "client_ip"], "t": conns.loc[client_tw, "last_ts"]}),
        pd.DataFrame({"ip": conns.loc[server_tw, "server_ip"], "t": conns.loc[server_tw, "last_ts"]}),
    ], ignore_index=True)
    if holders.empty:
        return pd.DataFrame({"ip": pd.Series([], dtype=object),
                             "active_closes": pd.Series([], dtype=np.int64),
                             "time_wait_peak": pd.Series([], dtype=np.int64)})
    events = pd.concat([
        pd.DataFrame({"ip": holders["ip"], "t": holders["t"], "d": 1}),
        pd.DataFrame({"ip": holders["ip"], "t": holders["t"] + 2 * msl, "d": -1}),
    ], ignore_index=True).sort_values(["ip", "t", "d"], kind="stable")
    events["held"] = events.groupby("ip")["d"].cumsum()
    out = pd.DataFrame({
        "active_closes": holders.groupby("ip").size(),
        "time_wait_peak": events.groupby("ip")["held"].max(),
    }).reset_index()
    return out.astype({"active_closes": np.int64, "time_wait_peak": np.int64})


def host_table(conns: pd.DataFrame, msl: float) -> pa.Table:
    if conns.empty:
        return HOSTS.empty_table()
    return arrow_table(host_frame(conns, msl)[HOSTS.names], HOSTS)
