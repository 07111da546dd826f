#!/usr/bin/env python3
"""Agreement with Zeek's verdicts on Zeek's own test traces -> docs/zeek-agreement.md.

    python tools/zeek_agreement.py [--corpus DIR] [--out FILE] [--check]

The corpus (`../shared/corpus/zeek`, see its README) holds real captures from Zeek's test
suite and Zeek's conn.log rows mapped to our taxonomy (`zeek_mapped.json`). This script
runs the analyzer over every trace in one process, matches our connections to Zeek's rows
by 4-tuple (either orientation) and time, and compares `open` and `close` wherever Zeek's
output decides them. Each remaining disagreement needs an explanation from the packets in
`EXPLANATIONS` below; one without is listed as unexplained and fails `--check`.

How a Zeek row meets our connections:

- Zeek's rows of one tshark stream are laid over that stream's packets in time order
  (their packet counts per direction say where one row ends and the next begins; Zeek
  starts a new row after an inactivity timeout or for stray packets after a close, where
  we keep one connection).
- `open` is compared when the Zeek row and our connection begin at the same packet;
  `close` when the packets that make our close (both FINs; the RST and a FIN before it;
  the last packet of a connection never closed) all lie inside the Zeek row. Other rows
  are counted apart ("unit differs").
- In a one-direction capture Zeek cannot see the hidden side's FIN; where our close rests
  on that FIN (read off the visible acknowledgements), the row is listed apart, with the
  revealing ACK, not counted.
- Where Zeek guessed the roles (no SYN seen), a close is compared by who did it (which
  endpoint sent the first FIN or the RST), not by the words client/server.
- `fin_simultaneous` is accepted for a Zeek FIN close: Zeek's history cannot tell crossed
  FINs from an ordered release.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "zeek"
OUT = ROOT / "docs" / "zeek-agreement.md"
MIN_AGREEMENT = 0.97  # the floor the project holds itself to on this corpus
TS_SLACK = 1e-6  # seconds: manifest times and ours are the same tshark value, printed twice
MAX_PERMUTED_ROWS = 6  # Zeek rows of one stream whose order is searched exhaustively

FIN_CLOSES = {"fin_by_client", "fin_by_server"}
ACTOR = {"fin_by_client": ("fin", "client"), "fin_by_server": ("fin", "server"),
         "rst_by_client": ("rst", "client"), "rst_by_server": ("rst", "server")}

# Why each remaining disagreement is not a bug of ours, read from the packets.
# Key: (trace, Zeek row as "orig_h:orig_p history", field). Frame numbers as Wireshark shows them.
EXPLANATIONS: dict[tuple[str, str, str], str] = {
    ("traces/globus-url-copy.pcap", "192.168.57.103:35391 ShADad", "close"):
        "Zeek stopped looking. Its GridFTP script flags this connection as a GridFTP data channel "
        "once enough bytes have crossed and calls `skip_further_processing` (the row: service "
        "`ssl,gridftp-data`, 13 packets, 0.010760 s = frames 37–50). The close that follows is on "
        "the wire: server FIN 54, client FIN 56 acknowledging it, final ACK 57: `fin_by_server`.",
    ("traces/tcp/syn-bad.pcap", "141.142.228.5:59856 C", "open"):
        "Zeek dropped the only packet. Frame 1 is a SYN with a wrong TCP checksum; Zeek (run "
        "without `-C`) discards such packets and logs only `C`, so the mapping sees no SYN. We keep "
        "packets with bad checksums on purpose (capture points see them all the time because of "
        "checksum offload): a lone SYN nobody answered is `no_answer`.",
    ("traces/tcp/syn-bad.pcap", "141.142.228.5:59856 C", "close"):
        "Same packet: a SYN nobody answered (frame 1) never opened a connection, so its close is "
        "`never_opened`; Zeek's `not_closed` comes from discarding that SYN.",
    ("traces/tls/imap-starttls.pcap", "192.168.17.53:49640 ShAdDafFr", "close"):
        "The mapping stops at \"no R/r before the second FIN\", but the second FIN was never "
        "acknowledged. The server's data+FIN (27) is acknowledged by the client (29); the client "
        "then sends data (30) and its FIN (31); the server, whose socket is already closed, answers "
        "with RST 32 (sequence number right after its FIN) instead of an ACK. The release never "
        "completed: `rst_by_server` with `rst_after_fin`, as the mapping's own note on this row "
        "allows (\"rst_after_close if the last FIN had been ACKed, else rst_after_fin\").",
    ("traces/tcp/handshake-reorder.pcap", "141.142.228.5:59856 Hs^ADadFf", "open"):
        "The mapping reads `Hs^…` as a capture that starts at the SYN-ACK, but Zeek's history holds "
        "the SYN too (the `s` before the flip). On the wire the SYN-ACK comes first (frame 1), then "
        "the SYN it answers (frame 2, 0.26 ms later; the SYN-ACK acknowledges its ISN + 1), then the "
        "client's ACK (frame 3): the whole handshake, reordered at the capture point (the case Zeek's "
        "test `core.connection_flipped` is about). The wire says `handshake`.",
}

# Zeek FIN closes that are fin_simultaneous for us: what the packets show.
CROSSED_NOTES: dict[tuple[str, str], str] = {
    ("traces/mysql/tls-12-amazon-rds.pcap", "82.239.87.25:58132 ShAdDaFf"):
        "the server's FIN (23) acknowledges only up to the client's FIN (21), so it left before "
        "that FIN arrived; the server's ACK of the client's FIN (22, sequence number after its own "
        "FIN) was sent later but captured first",
    ("traces/pppoe-over-qinq.pcap", "1.1.1.1:20394 ShADdtaTTtFf"):
        "the server acknowledges the client's data but never its FIN (81 and every later segment "
        "ack 3618139566, the FIN's own number); its FIN 82, 235 s later and retransmitted until "
        "86, was sent without having seen the client's FIN",
}

# Where our client is not Zeek's originator, why.
ROLE_NOTES: dict[tuple[str, str], str] = {
    ("traces/vntag_vlan_sandwich_clean.pcap", "10.10.10.1:443 -"):
        "the only packet, frame 1, is a SYN-ACK from port 443: its sender is the server; Zeek "
        "logged no history for it and kept the sender as originator",
}

# Why Zeek made several rows of a tshark stream that is one connection for us.
SPLIT_NOTES: dict[tuple[str, int], str] = {
    ("traces/llc.pcap", 0):
        "1,333 lone RSTs from 128.3.140.132:2035 to 194.140.136.34:80, 58 s to 38 min apart, "
        "nothing else. Zeek flushes a connection 5 s after a RST (`tcp_reset_delay`), so each RST "
        "opens a row of its own; one 4-tuple without a new SYN is one connection for us.",
    ("traces/modbus/modbus-and-non-modbus-p502.pcap", 4):
        "SYN 62, SYN-ACK 63, client RST 64 (a half-open scan); 16 s later the client's ACK with "
        "109 bytes (65) and the server's RST (66). Zeek flushes the connection 5 s after the RST "
        "(`tcp_reset_delay`), so 65–66 open a new row; without a new SYN we keep them in the "
        "connection, whose labels are compared with Zeek's first row.",
    ("traces/ssh/ssh.client-side-half-duplex.pcap", 0):
        "Only the client's direction is on the wire, so Zeek never sees the responder and times "
        "the attempt out 5 s after the SYN (`tcp_attempt_delay`); the client's next packets open a "
        "new row. Its close is listed with the one-direction captures.",
    ("traces/tunnels/Teredo.pcap", 0):
        "Begins mid-stream with the server's FIN (2) and the client's ACK (3). Zeek flushes a "
        "partial connection 3 s after one side closes (`tcp_partial_close_delay`), so the client's "
        "RST 10 s later (18) and the server-side RST (51, TTL 255 where the server's packets have "
        "53: `rst_suspect_injected`) open rows of their own. For us: the client aborted after the "
        "server's FIN: `rst_by_client` with `rst_after_fin`.",
    ("traces/tunnels/Teredo.pcap", 1):
        "Begins mid-stream with the server's FIN (4) and the client's ACK (5); the client's FIN "
        "comes 7 s later (8), acknowledged by 10. Zeek flushes the partial connection 3 s after the "
        "first FIN (`tcp_partial_close_delay`), so 8–10 and the late RST (50, TTL 255: "
        "`rst_suspect_injected`) open new rows. For us one release the server began: "
        "`fin_by_server` with `rst_after_close`.",
    ("traces/tunnels/Teredo.pcap", 2):
        "The client's RST (20) ends the connection; the RST 78 comes 18 s later with TTL 255 (the "
        "server's packets have 53: `rst_suspect_injected`). Zeek flushes 5 s after a RST "
        "(`tcp_reset_delay`), so 78 is a row of its own.",
}
for _stream in (1, 3, 7, 12):
    SPLIT_NOTES[("traces/ssh/ssh.client-side-half-duplex.pcap", _stream)] = \
        SPLIT_NOTES[("traces/ssh/ssh.client-side-half-duplex.pcap", 0)]

# Analyzer bugs this comparison found; all fixed, so they no longer show as disagreements.
FIXED: list[str] = [
    "**GTP tunnels came out empty** (`tunnels/gtp/gtp2_different_udp_port.pcap`: 0 of 78 TCP "
    "packets). The lean tshark run disables every protocol above TCP, and GTP registers a TCP port "
    "too, so GTP-U over UDP lost its inner IP. `gtp` is now kept (`tshark.KEEP_PROTOCOLS`).",
    "**Teredo tunnels were invisible** (`tunnels/Teredo.pcap` lost its IPv6 connection, "
    "`tunnels/teredo_bubble_with_payload.pcap` came out empty): tshark ships the Teredo heuristic "
    "disabled, and Teredo has no fixed port once a host is qualified. It is now enabled "
    "(`tshark.TUNNEL_HEURISTICS`).",
    "**A SYN captured after its SYN-ACK started a second connection** (`tcp/handshake-reorder.pcap`: "
    "a midstream connection holding only the SYN-ACK of frame 1, then a new one from the SYN of frame "
    "2). A SYN that the previous SYN-ACK on the 4-tuple already acknowledges now belongs to that "
    "attempt (`connections._connection_index`).",
    "**An ACK after a RST completed the handshake** (`modbus/modbus-and-non-modbus-p502.pcap` frames "
    "62–66: SYN, SYN-ACK, client RST, a stray ACK with data 16 s later came out `handshake` / "
    "`rst_by_client`). Only an ACK before the first RST after the SYN-ACK completes it now: "
    "`syn_ack_no_ack` / `never_opened`, as Zeek says.",
    "**A FIN inferred from the acknowledgements lost a tie with the FIN that revealed it** "
    "(`tcp/one-sided-2745.pcap`, server side only: the server's FIN+ACK in frame 3 acknowledges the "
    "client's unseen FIN, yet the connection came out `fin_by_server`). An inferred FIN now sorts just "
    "before the ACK that reveals it: `fin_by_client` with `three_way_close`; `first_fin_frame` names "
    "the first FIN segment in the capture, and the closing side used by `refused_after_handshake` "
    "follows the first FIN, seen or inferred.",
    "**`one_direction_only` was set on lone packets** (`wikipedia.pcap` frame 113, a lone SYN-ACK; "
    "`mpls-in-vlan.pcap`, `vntag_vlan_sandwich_clean.pcap`): one packet says nothing about the other "
    "direction. The flag now needs the visible side to show the other side at work (its ACK moves, or "
    "it completes a handshake whose SYN-ACK is missing).",
]


@dataclass
class ZeekRow:
    """One Zeek conn.log row with its taxonomy mapping and where tshark has its packets."""

    trace: str
    orig: str  # "ip|port" of Zeek's originator (final orientation)
    resp: str
    orig_text: str
    resp_text: str
    history: str | None
    conn_state: str | None
    orig_pkts: int | None
    resp_pkts: int | None
    stream: int
    stream_first_ts: float
    stream_first_frame: int
    open: str | None
    close: str | None  # taxonomy value, qualifier such as "(one-sided)" stripped
    close_note: str | None
    roles: str
    ambiguous: list[str]

    @property
    def key(self) -> str:
        return f"{self.orig_text} {self.history or '-'}"

    @property
    def roles_guessed(self) -> bool:
        """Zeek's originator is a guess: no SYN or SYN-ACK in its history (or the mapping says so)."""
        return self.roles.startswith("guessed") or not any(ch in (self.history or "") for ch in "SsHh")


@dataclass
class Comparison:
    """One Zeek row against our connection(s)."""

    row: ZeekRow
    frames: list[int] | None = None  # the packets of the row (None: could not be laid out)
    open_status: str = "unmatched"  # agree / disagree / undecided / unit differs / unmatched
    close_status: str = "unmatched"
    ours_open: str | None = None
    ours_close: str | None = None
    ours_open_conn: dict | None = None
    ours_close_conn: dict | None = None
    roles_status: str = "unmatched"  # agree / disagree / guessed-agree / guessed-differ


@dataclass
class TraceRun:
    """What the analyzer made of one trace."""

    trace: str
    packets: pd.DataFrame | None = None
    conns: pd.DataFrame | None = None
    frames: pd.DataFrame | None = None  # our key frames with their roles
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Evaluation:
    """Everything the report needs."""

    corpus: Path
    manifest: dict
    runs: dict[str, TraceRun]
    comparisons: list[Comparison]
    seconds: float

    @property
    def crashes(self) -> dict[str, str]:
        return {t: r.error for t, r in self.runs.items() if r.error}

    def counted(self, kind: str) -> list[Comparison]:
        return [c for c in self.comparisons if getattr(c, f"{kind}_status") in ("agree", "disagree")]

    def agreement(self, kind: str | None = None) -> tuple[int, int]:
        kinds = [kind] if kind else ["open", "close"]
        rows = [(c, k) for k in kinds for c in self.counted(k)]
        agree = sum(getattr(c, f"{k}_status") == "agree" for c, k in rows)
        return agree, len(rows)

    @property
    def one_sided_count(self) -> int:
        return sum(c.close_status == "one-sided" for c in self.comparisons)

    @property
    def disagreements(self) -> list[tuple[Comparison, str]]:
        return [(c, k) for c in self.comparisons for k in ("open", "close")
                if getattr(c, f"{k}_status") == "disagree"]

    @property
    def unexplained(self) -> list[tuple[Comparison, str]]:
        return [(c, k) for c, k in self.disagreements if (c.row.trace, c.row.key, k) not in EXPLANATIONS]

    def connections_of(self, trace_suffix: str) -> int | None:
        for trace, run in self.runs.items():
            if trace.endswith(trace_suffix) and run.conns is not None:
                return len(run.conns)
        return None


def endpoint(ip: str | None, port: int | None) -> str:
    """An endpoint as one key ("" when Zeek's row does not say: the tuple comes from tshark then)."""
    return "" if ip is None or port is None else f"{ip}|{int(port)}"


def load_rows(corpus: Path) -> tuple[dict, list[ZeekRow]]:
    """Zeek's rows (manifest) joined with their taxonomy mapping (zeek_mapped.json)."""
    manifest = json.loads((corpus / "manifest.json").read_text())
    mapped = json.loads((corpus / "zeek_mapped.json").read_text())["rows"]
    by_trace: dict[str, list[dict]] = {}
    for row in mapped:
        by_trace.setdefault(row["trace"], []).append(row)
    rows: list[ZeekRow] = []
    for trace in manifest["traces"]:
        conns, maps = trace["connections"], by_trace.get(trace["file"], [])
        if len(conns) != len(maps):
            raise SystemExit(f"{trace['file']}: manifest and zeek_mapped.json list different rows")
        for conn, m in zip(conns, maps, strict=True):
            if (conn["orig_h"], conn["orig_p"], conn["resp_h"], conn["resp_p"]) != \
                    (m["orig_h"], m["orig_p"], m["resp_h"], m["resp_p"]):
                raise SystemExit(f"{trace['file']}: manifest and zeek_mapped.json rows out of step")
            proposal = m["proposal"]
            close, _, note = (proposal.get("close") or "").partition(" ")
            rows.append(ZeekRow(
                trace=trace["file"], orig=endpoint(conn["orig_h"], conn["orig_p"]),
                resp=endpoint(conn["resp_h"], conn["resp_p"]),
                orig_text=f"{conn['orig_h']}:{conn['orig_p']}", resp_text=f"{conn['resp_h']}:{conn['resp_p']}",
                history=conn.get("history"), conn_state=conn.get("conn_state"),
                orig_pkts=conn.get("orig_pkts"), resp_pkts=conn.get("resp_pkts"),
                stream=int(conn["tshark_streams"][0]), stream_first_ts=float(conn["tshark_first_ts"]),
                stream_first_frame=int(conn["tshark_first_frame"]),
                open=proposal.get("open"), close=close or None, close_note=note.strip("()") or None,
                roles=proposal.get("roles") or "", ambiguous=list(proposal.get("ambiguous") or []),
            ))
    return manifest, rows


def run_analyzer(corpus: Path, traces: list[str], jobs: int = 2) -> dict[str, TraceRun]:
    """Label every trace in this process, exactly as `tcp-teardown analyze` does; a crash is recorded.

    Most of the time is tshark starting up once per capture, so `jobs` captures are read at once.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tcp_teardown.analysis import analyze_packets
    from tcp_teardown.facts import Params
    from tcp_teardown.ingest import ReadReport, read_packet_table
    from tcp_teardown.tshark import find_tshark, protocols_above_tcp

    tshark, params = find_tshark(), Params()
    protocols_above_tcp(tshark.path)  # asked of tshark once, before the threads share it

    def one(trace: str) -> TraceRun:
        run = TraceRun(trace)
        start = time.perf_counter()
        try:
            table = read_packet_table(corpus / trace, "tshark", tshark, ReadReport())
            run.packets = table.select(["frame_number", "ts", "src_ip", "src_port", "dst_ip",
                                        "dst_port"]).to_pandas()
            result = analyze_packets([table], trace, params)
            run.conns = result.connections.to_pandas()
            run.frames = result.frames.to_pandas()
        except Exception as exc:  # every trace must be read: a crash is a finding, not an abort
            run.error = f"{type(exc).__name__}: {exc}"
        run.seconds = time.perf_counter() - start
        return run

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(zip(traces, pool.map(one, traces), strict=True))


def _pair(a: pd.Series | str, b: pd.Series | str):
    """The unordered endpoint pair (either orientation) as one key."""
    if isinstance(a, str):
        return "~".join(sorted((a, b)))  # type: ignore[arg-type]
    return np.where(a < b, a + "~" + b, b + "~" + a)


def _layouts(rows: list[ZeekRow]) -> list[list[ZeekRow]]:
    """Candidate time orders of a stream's Zeek rows (conn.log lists them by removal, not start)."""
    signature = [(r.orig, r.orig_pkts, r.resp_pkts, r.history) for r in rows]
    if len(set(signature)) == 1:
        return [rows]
    if len(rows) > MAX_PERMUTED_ROWS:
        return []
    seen, out = set(), []
    for order in itertools.permutations(range(len(rows))):
        sig = tuple(signature[i] for i in order)
        if sig not in seen:
            seen.add(sig)
            out.append([rows[i] for i in order])
    return out


def _lay_out(rows: list[ZeekRow], src: np.ndarray, frames: np.ndarray) -> dict[int, list[int]] | None:
    """Frames of each Zeek row of one stream (id(row) -> frames), or None when no order fits."""
    if len(rows) == 1:
        return {id(rows[0]): frames.tolist()}
    sizes = [(r.orig_pkts or 0) + (r.resp_pkts or 0) for r in rows]
    if any(r.orig_pkts is None for r in rows) or sum(sizes) != len(frames):
        return None
    for order in _layouts(rows):
        cut, fits, out = 0, True, {}
        for row in order:
            size = (row.orig_pkts or 0) + (row.resp_pkts or 0)
            chunk = slice(cut, cut + size)
            if int((src[chunk] == row.orig).sum()) != row.orig_pkts:
                fits = False
                break
            out[id(row)] = frames[chunk].tolist()
            cut += size
        if fits:
            return out
    return None


def _close_frames(conn: dict) -> list[int]:
    """The frames that make our close: both FINs, the RST (and a FIN before it), the last packet."""
    def frame(column: str) -> int | None:
        value = conn[column]
        return None if value is None or pd.isna(value) else int(value)

    close = str(conn["close"])
    first_fin, second_fin, rst = frame("first_fin_frame"), frame("second_fin_frame"), frame("rst_frame")
    if close.startswith("fin_"):
        wanted = [first_fin, second_fin]
    elif close.startswith("rst_"):
        wanted = [rst, first_fin if first_fin is not None and rst is not None and first_fin < rst else None]
    elif close == "half_closed":
        wanted = [first_fin]
    elif close == "never_opened":
        wanted = [int(conn["first_frame"])]
    else:  # not_closed: it runs to its last packet
        wanted = [int(conn["last_frame"])]
    return [w for w in wanted if w is not None] or [int(conn["last_frame"])]


def _inferred_fin(run: TraceRun, conn: dict) -> int | None:
    """The ACK frame that reveals a FIN the capture does not hold (one-direction captures)."""
    if run.frames is None or "one_direction_only" not in list(conn["flags"]):
        return None
    rows = run.frames[run.frames["flow_id"] == conn["flow_id"]]
    for frame, roles in zip(rows["frame_number"], rows["roles"], strict=True):
        if any(str(role).startswith("ACK revealing the unseen") for role in roles):
            return int(frame)
    return None


def _same(row: ZeekRow, kind: str, ours: str, conn: dict) -> bool:
    """Whether our label says what Zeek's does (see the module docstring for the folding)."""
    zeek = getattr(row, kind)
    if kind == "close" and zeek in FIN_CLOSES and ours == "fin_simultaneous":
        return True
    if kind == "close" and row.roles_guessed and zeek in ACTOR and ours in ACTOR:
        return ACTOR[zeek][0] == ACTOR[ours][0] and _same_actor(row, ours, conn)
    return ours == zeek


def _same_actor(row: ZeekRow, ours: str, conn: dict) -> bool:
    """Did the same endpoint send the FIN / RST, whatever each side called it?"""
    zeek_actor = row.orig if ACTOR[row.close][1] == "client" else row.resp
    side = ACTOR[ours][1]
    our_actor = endpoint(conn[f"{side}_ip"], conn[f"{side}_port"])
    return zeek_actor == our_actor


def compare_trace(run: TraceRun, rows: list[ZeekRow]) -> list[Comparison]:
    """Lay each Zeek row of one trace over our connections and compare open and close."""
    out = [Comparison(row) for row in rows]
    if run.error or run.conns is None or run.packets is None:
        return out
    pk = run.packets.sort_values("frame_number", kind="stable")
    src = (pk["src_ip"].astype(str) + "|" + pk["src_port"].astype(str)).to_numpy()
    dst = (pk["dst_ip"].astype(str) + "|" + pk["dst_port"].astype(str)).to_numpy()
    pair = _pair(src, dst)
    frames, ts = pk["frame_number"].to_numpy(np.int64), pk["ts"].to_numpy(float)

    conns = run.conns.copy()
    conns["pair"] = _pair(conns["client_ip"].astype(str) + "|" + conns["client_port"].astype(str),
                          conns["server_ip"].astype(str) + "|" + conns["server_port"].astype(str))
    # Which of our connections each packet belongs to: connections of one 4-tuple follow each
    # other in capture order, so a packet belongs to the last one that began at or before it.
    conn_of_frame: dict[int, int] = {}
    for key, group in conns.groupby("pair", sort=False):
        group = group.sort_values("first_frame")
        mine = frames[pair == key]
        at = np.searchsorted(group["first_frame"].to_numpy(), mine, side="right") - 1
        conn_of_frame.update(zip(mine.tolist(), group.index.to_numpy()[np.maximum(at, 0)].tolist(), strict=True))
    records = conns.to_dict("index")

    for comp in out:
        if not comp.row.orig:  # no 4-tuple in Zeek's output: take the stream's first packet's
            at = np.flatnonzero(frames == comp.row.stream_first_frame)
            if len(at):
                comp.row.orig, comp.row.resp = str(src[at[0]]), str(dst[at[0]])
                comp.row.orig_text, comp.row.resp_text = (e.replace("|", ":") for e in (comp.row.orig,
                                                                                        comp.row.resp))
    by_stream: dict[tuple[str, int], list[Comparison]] = {}
    for comp in out:
        by_stream.setdefault((_pair(comp.row.orig, comp.row.resp), comp.row.stream), []).append(comp)
    starts: dict[str, list[float]] = {}
    for (key, _), comps in by_stream.items():
        starts.setdefault(key, []).append(comps[0].row.stream_first_ts)
    for (key, _), comps in by_stream.items():
        first = comps[0].row.stream_first_ts
        later = [t for t in starts[key] if t > first + TS_SLACK]
        end = min(later) - TS_SLACK if later else np.inf
        sel = (pair == key) & (ts >= first - TS_SLACK) & (ts < end)
        layout = _lay_out([c.row for c in comps], src[sel], frames[sel])
        for comp in comps:
            comp.frames = None if layout is None else layout.get(id(comp.row))
            _judge(comp, run, conn_of_frame, records)
    return out


def _judge(comp: Comparison, run: TraceRun, conn_of_frame: dict[int, int], records: dict[int, dict]) -> None:
    row, frames = comp.row, comp.frames
    if not frames or frames[0] not in conn_of_frame:
        return
    opener, closer = records[conn_of_frame[frames[0]]], records[conn_of_frame[frames[-1]]]
    comp.ours_open, comp.ours_close = str(opener["open"]), str(closer["close"])
    comp.ours_open_conn, comp.ours_close_conn = opener, closer
    inside = set(frames)
    begins_here = int(opener["first_frame"]) == frames[0]
    closes_here = all(f in inside for f in _close_frames(closer))
    for kind, compared, conn in (("open", begins_here, opener), ("close", closes_here, closer)):
        if not compared:
            status = "unit differs"
        elif getattr(row, kind) is None:
            status = "undecided"
        elif _same(row, kind, str(conn[kind]), conn):
            status = "agree"
        elif kind == "close" and _one_sided(row) and _inferred_fin(run, conn) is not None:
            status = "one-sided"  # we read a FIN off the visible ACKs that Zeek cannot see
        else:
            status = "disagree"
        setattr(comp, f"{kind}_status", status)
    client = endpoint(opener["client_ip"], opener["client_port"])
    if row.roles_guessed:
        comp.roles_status = "guessed-agree" if client == row.orig else "guessed-differ"
    else:
        comp.roles_status = "agree" if client == row.orig else "disagree"


def _one_sided(row: ZeekRow) -> bool:
    """Zeek's history holds one direction only: it cannot see the other side's FIN."""
    return row.close_note == "one-sided" or any(a.startswith("one-sided") for a in row.ambiguous)


def evaluate(corpus: Path = CORPUS, jobs: int = 2) -> Evaluation:
    """Run the analyzer over the whole corpus and compare with Zeek's rows."""
    start = time.perf_counter()
    manifest, rows = load_rows(corpus)
    traces = [t["file"] for t in manifest["traces"]]
    runs = run_analyzer(corpus, traces, jobs)
    by_trace: dict[str, list[ZeekRow]] = {}
    for row in rows:
        by_trace.setdefault(row.trace, []).append(row)
    comparisons = [c for trace in traces for c in compare_trace(runs[trace], by_trace.get(trace, []))]
    return Evaluation(corpus, manifest, runs, comparisons, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------
# The report


def _pct(agree: int, total: int) -> str:
    return f"{100 * agree / total:.1f}%" if total else "n/a"


def _frames_of(conn: dict | None) -> str:
    if conn is None:
        return ""
    parts = []
    for column, name in (("syn_frame", "SYN"), ("first_fin_frame", "first FIN"),
                         ("second_fin_frame", "second FIN"), ("rst_frame", "RST"),
                         ("final_ack_frame", "final ACK")):
        value = conn.get(column)
        if value is not None and not pd.isna(value):
            parts.append(f"{name} {int(value)}")
    parts.append(f"frames {int(conn['first_frame'])}–{int(conn['last_frame'])}")
    return ", ".join(parts)


def _value_table(ev: Evaluation, kind: str) -> list[str]:
    tally: dict[str, list[int]] = {}
    for comp in ev.counted(kind):
        cell = tally.setdefault(getattr(comp.row, kind), [0, 0])
        cell[0] += getattr(comp, f"{kind}_status") == "agree"
        cell[1] += 1
    lines = [f"| Zeek's `{kind}` | compared | agree | agreement |", "|---|---:|---:|---:|"]
    for value, (agree, total) in sorted(tally.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| `{value}` | {total} | {agree} | {_pct(agree, total)} |")
    agree, total = ev.agreement(kind)
    lines.append(f"| **all** | **{total}** | **{agree}** | **{_pct(agree, total)}** |")
    return lines


def render(ev: Evaluation) -> str:
    agree, total = ev.agreement()
    n_traces = len(ev.runs)
    read = n_traces - len(ev.crashes)
    ours = sum(len(r.conns) for r in ev.runs.values() if r.conns is not None)
    packets = sum(len(r.packets) for r in ev.runs.values() if r.packets is not None)
    llc = ev.connections_of("llc.pcap")
    llc_rows = sum(c.row.trace.endswith("llc.pcap") for c in ev.comparisons)
    out = [
        "# Agreement with Zeek on Zeek's own test traces",
        "",
        "Generated by `tools/zeek_agreement.py` (`make zeek`); do not edit by hand. The corpus is",
        f"`shared/corpus/zeek` ({n_traces} real captures from Zeek's test suite, Zeek commit",
        f"`{ev.manifest.get('zeek_commit', '?')[:12]}`), each with the `conn.log` Zeek's tests expect,",
        "mapped to our taxonomy in `zeek_mapped.json`. Nobody on this project wrote these traces or",
        "those verdicts.",
        "",
        "## Summary",
        "",
        f"- **{read} of {n_traces} captures read without a crash** "
        f"({packets:,} TCP packets, {ours} connections of ours, {len(ev.comparisons):,} Zeek rows).",
        f"- **Agreement on `open` and `close` where Zeek decides them: {agree}/{total} = {_pct(agree, total)}**"
        f" (open {'/'.join(map(str, ev.agreement('open')))}, close {'/'.join(map(str, ev.agreement('close')))}).",
        f"- Counting the one-direction rows (below) as disagreements too: "
        f"{agree}/{total + ev.one_sided_count} = {_pct(agree, total + ev.one_sided_count)}.",
        f"- {len(ev.disagreements)} disagreement(s) remain, each explained below"
        + (f"; **{len(ev.unexplained)} unexplained**." if ev.unexplained else "."),
        f"- `llc.pcap`: Zeek's {llc_rows:,} rows (one per lone RST) are **{llc} connection** of ours.",
        "",
        "## How rows are compared",
        "",
        "- Our connections are matched to Zeek's rows by 4-tuple (either orientation) and time: a",
        "  Zeek row's packets are the tshark stream it was matched to (`tshark_first_ts` up to the",
        "  next stream on the same 4-tuple). Where Zeek split one stream into several rows, the rows",
        "  are laid over the stream's packets in the one time order their per-direction packet",
        "  counts allow.",
        "- `open` is compared when the Zeek row and our connection begin at the same packet; `close`",
        "  when the packets that make our close (both FINs; the RST and a FIN before it; the last",
        "  packet of a connection never closed) all lie inside the Zeek row. Zeek rows that do",
        "  neither are counted apart (\"unit differs\", below).",
        "- In a one-direction capture Zeek's history cannot show the hidden side's FIN. Where our",
        "  close rests on such a FIN, read off the visible side's acknowledgements, the row is",
        "  listed with the revealing ACK and not counted either way.",
        "- Where Zeek guessed the roles (no SYN seen; `-b` runs keep the first packet's sender as",
        "  originator), a close is compared by which endpoint sent the FIN or RST, not by the words",
        "  client/server. Where Zeek saw the SYN, client/server are compared as they are.",
        "- `fin_simultaneous` is accepted for a Zeek FIN close (the history cannot tell crossed FINs",
        "  apart). Qualifiers such as \"(one-sided)\" in the mapping are dropped for the comparison.",
        "- Zeek rows whose `open` or `close` the mapping leaves undecided are not counted.",
        "",
        "## Agreement per value",
        "",
        *_value_table(ev, "open"),
        "",
        *_value_table(ev, "close"),
        "",
        *_simultaneous_note(ev),
    ]
    out += _roles_section(ev)
    out += _disagreement_section(ev)
    out += _one_sided_section(ev)
    out += _not_compared_section(ev)
    if FIXED:
        out += ["## Analyzer bugs this comparison found (fixed)", ""]
        out += [f"- {text}" for text in FIXED] + [""]
    out += _trace_table(ev)
    return "\n".join(out) + "\n"


def _simultaneous_note(ev: Evaluation) -> list[str]:
    crossed = [c for c in ev.counted("close") if c.ours_close == "fin_simultaneous"]
    if not crossed:
        return []
    out = ["Zeek FIN closes that are `fin_simultaneous` for us (the second FIN's ack does not cover "
           "the first FIN), counted as agreement:", ""]
    for comp in crossed:
        note = CROSSED_NOTES.get((comp.row.trace, comp.row.key))
        out.append(f"- `{comp.row.trace.removeprefix('traces/')}` {comp.row.orig_text} → {comp.row.resp_text} "
                   f"`{comp.row.history}`: {_frames_of(comp.ours_close_conn)}" + (f"; {note}." if note else "."))
    return [*out, ""]


def _roles_section(ev: Evaluation) -> list[str]:
    tally = Counter(c.roles_status for c in ev.comparisons if c.roles_status != "unmatched")
    out = [
        "## Roles",
        "",
        f"- Where Zeek saw the opening (S or H in its history), our client is Zeek's originator in "
        f"{tally['agree']} of {tally['agree'] + tally['disagree']} rows.",
        "- Where Zeek guessed (runs with `-b` keep the first packet's sender as originator), our",
        f"  guess names the same client in {tally['guessed-agree']} of "
        f"{tally['guessed-agree'] + tally['guessed-differ']} rows; closes are then compared by endpoint.",
    ]
    for comp in ev.comparisons:
        if comp.roles_status in ("disagree", "guessed-differ") and comp.ours_open_conn is not None:
            conn = comp.ours_open_conn
            out.append(f"  - `{comp.row.trace.removeprefix('traces/')}` {comp.row.orig_text} → "
                       f"{comp.row.resp_text} `{comp.row.history or '-'}`: our client is "
                       f"{conn['client_ip']}:{conn['client_port']}"
                       + (f" ({ROLE_NOTES[(comp.row.trace, comp.row.key)]})"
                          if (comp.row.trace, comp.row.key) in ROLE_NOTES else ""))
    return [*out, ""]


def _disagreement_section(ev: Evaluation) -> list[str]:
    out = ["## Disagreements", ""]
    if not ev.disagreements:
        return [*out, "None.", ""]
    out += ["| trace | Zeek row (orig → resp, history) | | Zeek | ours | our evidence (frames) | why |",
            "|---|---|---|---|---|---|---|"]
    for comp, kind in ev.disagreements:
        row = comp.row
        conn = comp.ours_open_conn if kind == "open" else comp.ours_close_conn
        why = EXPLANATIONS.get((row.trace, row.key, kind), "**UNEXPLAINED**")
        out.append(f"| `{row.trace.removeprefix('traces/')}` | {row.orig_text} → {row.resp_text} "
                   f"`{row.history or '-'}` | {kind} | `{getattr(row, kind)}` | "
                   f"`{getattr(comp, f'ours_{kind}')}` | {_frames_of(conn)} | {why} |")
    return [*out, ""]


def _one_sided_section(ev: Evaluation) -> list[str]:
    rows = [c for c in ev.comparisons if c.close_status == "one-sided"]
    if not rows:
        return []
    out = ["## One-direction captures: the FIN only the acknowledgements show", "",
           "Only one direction of these connections is on the wire, so Zeek's history shows one FIN",
           "and Zeek logs a half-close. The visible side's acknowledgement then moves on by exactly",
           "one sequence number with no data from the peer in between: the unseen peer's FIN",
           "(taxonomy: `one_direction_only`, \"what the other side did is inferred from the",
           "acknowledgements that are visible\"). These rows are listed here and not counted as",
           "agreement or disagreement.", "",
           "| trace | Zeek row (orig → resp, history) | Zeek | ours | ACK revealing the unseen FIN | our evidence |",
           "|---|---|---|---|---:|---|"]
    for comp in rows:
        row, conn = comp.row, comp.ours_close_conn
        run = ev.runs[row.trace]
        out.append(f"| `{row.trace.removeprefix('traces/')}` | {row.orig_text} → {row.resp_text} "
                   f"`{row.history or '-'}` | `{row.close}` | `{comp.ours_close}` | "
                   f"{_inferred_fin(run, conn) if conn else ''} | {_frames_of(conn)} |")
    return [*out, ""]


def _not_compared_section(ev: Evaluation) -> list[str]:
    out = ["## Rows not counted", ""]
    reasons: Counter[str] = Counter()
    for comp in ev.comparisons:
        for kind in ("open", "close"):
            status = getattr(comp, f"{kind}_status")
            if status not in ("agree", "disagree"):
                reasons[(kind, status)] += 1
    out += ["| field | why | Zeek rows |", "|---|---|---:|"]
    words = {"undecided": "Zeek's output does not decide it (mapping left it open)",
             "unit differs": "Zeek split the stream (timeouts, stray packets after a close): the row "
                             "does not begin our connection (open) or does not hold all of its close "
                             "(close); see below",
             "unmatched": "no connection of ours holds the row's packets",
             "one-sided": "one-direction capture: our close rests on a FIN only the visible side's "
                          "ACKs show, which Zeek's history cannot see (listed below)"}
    for (kind, status), n in sorted(reasons.items()):
        out.append(f"| {kind} | {words[status]} | {n:,} |")
    out += ["", "Where Zeek split a stream that is one connection for us:", ""]
    split: dict[tuple[str, int], list[Comparison]] = {}
    for comp in ev.comparisons:
        split.setdefault((comp.row.trace, comp.row.stream), []).append(comp)
    for (trace, stream), comps in split.items():
        if len(comps) < 2:
            continue
        conn = comps[0].ours_open_conn
        ours = {id(c.ours_open_conn) for c in comps if c.ours_open_conn is not None}
        histories = Counter(c.row.history or "-" for c in comps)
        shown = ", ".join(f"`{h}`×{n}" if n > 1 else f"`{h}`" for h, n in histories.items())
        note = SPLIT_NOTES.get((trace, stream), "**no explanation recorded**")
        out.append(f"- `{trace.removeprefix('traces/')}` stream {stream}: {len(comps):,} Zeek rows ({shown}) → "
                   f"{len(ours)} connection(s) of ours"
                   + (f" (`{conn['open']}`, `{conn['close']}`)" if conn is not None and len(ours) == 1 else "")
                   + f". {note}")
    return [*out, ""]


def _trace_table(ev: Evaluation) -> list[str]:
    out = ["## Per trace", "",
           "| trace | TCP packets | our connections | Zeek rows | open agree | close agree | read |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for trace, run in ev.runs.items():
        comps = [c for c in ev.comparisons if c.row.trace == trace]
        cells = []
        for kind in ("open", "close"):
            counted = [c for c in comps if getattr(c, f"{kind}_status") in ("agree", "disagree")]
            agree = sum(getattr(c, f"{kind}_status") == "agree" for c in counted)
            cells.append(f"{agree}/{len(counted)}")
        status = "ok" if not run.error else f"**crash**: {run.error[:120]}"
        n_pk = len(run.packets) if run.packets is not None else 0
        n_conn = len(run.conns) if run.conns is not None else 0
        out.append(f"| `{trace.removeprefix('traces/')}` | {n_pk:,} | {n_conn} | {len(comps):,} | "
                   f"{cells[0]} | {cells[1]} | {status} |")
    return [*out, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="the Zeek corpus folder")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the Markdown report")
    parser.add_argument("--jobs", type=int, default=2, help="captures read at once (tshark runs)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 on a crash, an unexplained disagreement or agreement below the floor")
    args = parser.parse_args(argv)
    if not (args.corpus / "manifest.json").is_file():
        print(f"zeek_agreement: no Zeek corpus at {args.corpus}", file=sys.stderr)
        return 2
    ev = evaluate(args.corpus, args.jobs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(ev))
    agree, total = ev.agreement()
    print(f"{args.out}: agreement {agree}/{total} = {_pct(agree, total)}, "
          f"{len(ev.disagreements)} disagreement(s), {len(ev.unexplained)} unexplained, "
          f"{len(ev.crashes)} crash(es), {ev.seconds:.1f} s")
    failed = ev.crashes or ev.unexplained or (total and agree / total < MIN_AGREEMENT)
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
