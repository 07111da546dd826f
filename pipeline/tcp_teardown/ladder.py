"""The ladder of one connection: a compact sequence diagram of its SYN/FIN/RST, as text or a figure.

Built from our own packet table (schema.PACKETS) and the connection's row, never from
tshark's analysis fields, so it shows exactly the evidence the rules saw. What is drawn:

- every segment with SYN, FIN or RST, every key frame, the ACK that completes the
  handshake and the first ACK of each FIN (the segments that decide open and close);
- everything else (data, window updates, duplicate ACKs) folded into one summary line
  per run, and silences of at least the idle threshold as their own line ("silent for").

Sequence and acknowledgement numbers are relative to each side's ISN, as Wireshark
shows them: the SYN is seq 0, the first data byte seq 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tcp_teardown import tcpflags as tf

if TYPE_CHECKING:  # matplotlib is an optional extra: only the figure needs it
    from matplotlib.figure import Figure

# Flag bits in the order Wireshark lists them ("FIN, PSH, ACK").
FLAG_NAMES: tuple[tuple[int, str], ...] = (
    (tf.FIN, "FIN"), (tf.SYN, "SYN"), (tf.RST, "RST"), (tf.PSH, "PSH"),
    (tf.ACK, "ACK"), (tf.URG, "URG"), (tf.ECE, "ECE"), (tf.CWR, "CWR"),
)
ARROW_WIDTH = 52  # characters between the two lifelines in the text ladder
KEY_COLOR = "tab:red"
PLAIN_COLOR = "tab:blue"


def flag_text(flags: int) -> str:
    """`0x011` -> "FIN,ACK" (Wireshark's order)."""
    return ",".join(name for bit, name in FLAG_NAMES if flags & bit) or "none"


def endpoint_text(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True)
class Step:
    """One line of the ladder: a segment, a folded run of segments, or a silence."""

    kind: str  # "segment", "folded" or "idle"
    t_s: float  # seconds since the connection's first packet (start of the run for "folded")
    text: str  # what the arrow or the line says
    frame: int | None = None  # the segment's frame (None for "folded" and "idle")
    c2s: bool | None = None  # direction of a segment
    key: bool = False  # a key frame: it proves a label
    roles: str = ""  # what the key frame is ("first FIN", ...)


class Ladder:
    """The ladder of one connection. `str(ladder)` is the text; `.figure()` draws it.

    `rows`: the connection's packets (schema.PACKETS columns) plus `c2s`, `t_s`, `flags`
    (text), relative `seq` and `ack` (-1 without the ACK bit), `key`, `roles` and `shown`.
    `steps`: the lines drawn. `notes`: the sentences under the ladder. `isn`: each side's
    initial sequence number (raw), what `seq` and `ack` are relative to.
    """

    def __init__(self, conn: dict[str, Any], packets: pd.DataFrame, roles: dict[int, list[str]],
                 idle_threshold: float = 5.0) -> None:
        self.conn = conn
        self.idle_threshold = idle_threshold
        self.rows, self.isn = _annotate(conn, packets, roles)
        self.steps = _steps(self.rows, idle_threshold)
        self.notes = _notes(conn, self.rows)

    # -- text -----------------------------------------------------------------------------
    @property
    def client(self) -> str:
        return endpoint_text(self.conn["client_ip"], int(self.conn["client_port"]))

    @property
    def server(self) -> str:
        return endpoint_text(self.conn["server_ip"], int(self.conn["server_port"]))

    @property
    def title(self) -> str:
        return f"connection {self.conn['flow_id']}: open {self.conn['open']}, close {self.conn['close']}"

    def header(self) -> list[str]:
        c = self.conn
        stream = "" if _missing(c.get("tcp_stream")) else f"tcp.stream {int(c['tcp_stream'])}, "
        flags = ", ".join(c.get("flags") or []) or "none"
        tw = c.get("time_wait_side")
        return [
            f"connection {c['flow_id']} in {c['file']} ({stream}frames {int(c['first_frame'])}-{int(c['last_frame'])})",
            f"client {self.client} <-> server {self.server}" + (" (roles guessed)" if c.get("roles_guessed") else ""),
            f"open: {c['open']}  close: {c['close']}  flags: {flags}"
            + ("" if _missing(tw) else f"  TIME_WAIT: {tw}"),
            f"seq/ack relative to each side's ISN (client {self.isn['client']}, server {self.isn['server']});"
            " * marks a key frame",
        ]

    def lines(self) -> list[str]:
        out = [*self.header(), ""]
        left = f"client {self.client}"
        right = f"server {self.server}"
        out.append(f"  {'frame':>6} {'time_s':>10}  {left}{right:>{max(ARROW_WIDTH - len(left), len(right) + 1)}}")
        for step in self.steps:
            if step.kind == "segment":
                mark = "*" if step.key else " "
                out.append(f"{mark} {step.frame:>6} {step.t_s:>10.6f}  {_arrow(step.text, bool(step.c2s))}"
                           + (f"  {step.roles}" if step.roles else ""))
            elif step.kind == "folded":
                out.append(f"  {'':>6} {step.t_s:>10.6f}  {'':>3}... {step.text}")
            else:
                out.append(f"  {'':>6} {'':>10}  {'':>3}~~~ {step.text} ~~~")
        if self.notes:
            out += ["", *self.notes]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def __repr__(self) -> str:  # a notebook cell ending in a Ladder shows the ladder itself
        return str(self)

    # -- figure ---------------------------------------------------------------------------
    def figure(self) -> Figure:
        """The ladder as a matplotlib figure: client and server lifelines, one row per step."""
        from matplotlib.figure import Figure

        steps = self.steps
        height = 1.6 + 0.42 * max(len(steps), 1)
        fig = Figure(figsize=(9.5, height), layout="constrained")
        ax = fig.add_subplot()
        n = len(steps)
        ax.vlines([0.0, 1.0], -0.8, n - 0.2, colors="0.35", linewidth=1.5)
        for y, step in enumerate(steps):
            if step.kind == "segment":
                color = KEY_COLOR if step.key else PLAIN_COLOR
                x0, x1 = (0.0, 1.0) if step.c2s else (1.0, 0.0)
                ax.annotate("", xy=(x1, y + 0.3), xytext=(x0, y - 0.3),
                            arrowprops={"arrowstyle": "-|>", "color": color,
                                        "linewidth": 2.0 if step.key else 1.2})
                ax.text(0.5, y - 0.12, step.text, ha="center", va="bottom", fontsize=8,
                        color=color, fontweight="bold" if step.key else "normal",
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"})
                if step.roles:
                    ax.text(1.04, y, step.roles, ha="left", va="center", fontsize=8, color=KEY_COLOR)
            else:
                ax.text(0.5, y, step.text, ha="center", va="center", fontsize=7.5, color="0.4", style="italic",
                        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "0.8"})
        ax.set_ylim(n - 0.2, -0.8)  # time runs downwards, as in a textbook ladder
        ax.set_xlim(-0.12, 1.55)
        ax.set_yticks(range(n))
        ax.set_yticklabels([_tick(s) for s in steps], fontsize=7.5)
        ax.set_xticks([0.0, 1.0])
        ax.set_xticklabels([f"client\n{self.client}", f"server\n{self.server}"], fontsize=8.5)
        ax.set_xlabel("endpoint (arrows: segments as captured; red: key frames)")
        ax.set_ylabel("frame number · time since the first packet (s)")
        crossing = [n for n in self.notes if n.startswith("second FIN")]
        ax.set_title(self.title + (f"\n{crossing[0]}" if crossing else ""), fontsize=10)
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
        return fig


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _tick(step: Step) -> str:
    if step.kind == "segment":
        return f"#{step.frame} · {step.t_s:.6f}"
    return f"{step.t_s:.6f}" if step.kind == "folded" else ""


def _arrow(text: str, c2s: bool) -> str:
    dashes = "-" * max(ARROW_WIDTH - len(text) - 2, 3)
    return f"{text} {dashes}>" if c2s else f"<{dashes} {text}"


def _bases(p: pd.DataFrame) -> tuple[int, int]:
    """Each side's ISN: its SYN's seq; else its first seq - 1; else the peer's first ack - 1."""
    def base(sent: pd.DataFrame, received: pd.DataFrame, syn_mask: np.ndarray) -> int:
        syns = sent[syn_mask]
        if len(syns):
            return int(syns["seq_raw"].iloc[0])
        if len(sent):
            return int(sent["seq_raw"].iloc[0]) - 1
        acks = received[tf.has_ack(received["tcp_flags"].to_numpy())]
        return int(acks["ack_raw"].iloc[0]) - 1 if len(acks) else 0

    c2s, s2c = p[p["c2s"]], p[~p["c2s"]]
    return (base(c2s, s2c, tf.is_pure_syn(c2s["tcp_flags"].to_numpy())),
            base(s2c, c2s, tf.is_syn_ack(s2c["tcp_flags"].to_numpy())))


def _annotate(conn: dict[str, Any], packets: pd.DataFrame,
              roles: dict[int, list[str]]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The connection's packets with direction, relative seq/ack, flag text and key marks."""
    p = packets.sort_values("frame_number", kind="stable").reset_index(drop=True).copy()
    p["c2s"] = (p["src_ip"] == conn["client_ip"]) & (p["src_port"] == int(conn["client_port"]))
    client_isn, server_isn = _bases(p)
    own = np.where(p["c2s"], client_isn, server_isn)
    peer = np.where(p["c2s"], server_isn, client_isn)
    flags = p["tcp_flags"].to_numpy().astype(np.int64)
    p["seq"] = (p["seq_raw"].to_numpy() - own) % tf.SEQ_SPACE
    p["ack"] = np.where(tf.has_ack(flags), (p["ack_raw"].to_numpy() - peer) % tf.SEQ_SPACE, -1)
    p["t_s"] = p["ts"] - (p["ts"].iloc[0] if len(p) else 0.0)
    p["flags"] = [flag_text(int(f)) for f in flags]
    keys = {int(f) for f in (conn.get("key_frames") or [])} | set(roles)
    p["key"] = p["frame_number"].isin(keys)
    p["roles"] = [", ".join(roles.get(int(f), [])) for f in p["frame_number"]]
    p["shown"] = _shown(p, flags)
    return p, {"client": client_isn % tf.SEQ_SPACE, "server": server_isn % tf.SEQ_SPACE}


def _shown(p: pd.DataFrame, flags: np.ndarray) -> np.ndarray:
    """Which segments get their own line (the others are folded into summaries)."""
    control = (flags & (tf.SYN | tf.FIN | tf.RST)) != 0
    shown = control | p["key"].to_numpy()
    c2s = p["c2s"].to_numpy()
    # The client's ACK that completes the handshake: its first ACK after the SYN-ACK.
    syn_ack = np.flatnonzero(tf.is_syn_ack(flags) & ~c2s)
    if len(syn_ack):
        after = np.flatnonzero(c2s & tf.has_ack(flags) & (np.arange(len(p)) > syn_ack[0]))
        if len(after):
            shown[after[0]] = True
    # The first ACK of each side's FIN (what makes a close orderly, or shows FINs crossing).
    seq_end = p["seq_raw"].to_numpy() + p["payload_len"].to_numpy() + 1  # a FIN takes one seq
    for fin_dir in (True, False):
        fins = np.flatnonzero(tf.is_fin(flags) & (c2s == fin_dir))
        if not len(fins):
            continue
        first = fins[0]
        later = np.arange(len(p)) > first
        acks = np.flatnonzero(later & (c2s != fin_dir) & tf.has_ack(flags)
                              & tf.covers(p["ack_raw"].to_numpy(), np.full(len(p), seq_end[first])))
        if len(acks):
            shown[acks[0]] = True
    return shown


def _segment_text(row: Any) -> str:
    text = f"{row.flags} seq={row.seq}" + (f" ack={row.ack}" if row.ack >= 0 else "")
    return text + (f" len={row.payload_len}" if row.payload_len else "")


def _steps(p: pd.DataFrame, idle_threshold: float) -> list[Step]:
    steps: list[Step] = []
    run: list[Any] = []

    def flush() -> None:
        if run:
            steps.append(Step("folded", float(run[0].t_s), _fold_text(run)))
            run.clear()

    previous_t: float | None = None
    for row in p.itertuples(index=False):
        gap = None if previous_t is None else float(row.t_s) - previous_t
        previous_t = float(row.t_s)
        if gap is not None and gap >= idle_threshold:
            flush()
            steps.append(Step("idle", float(row.t_s) - gap, f"silent for {gap:.3f} s"))
        if row.shown:
            flush()
            steps.append(Step("segment", float(row.t_s), _segment_text(row), int(row.frame_number),
                              bool(row.c2s), bool(row.key), row.roles))
        else:
            run.append(row)
    flush()
    return steps


def _fold_text(run: list[Any]) -> str:
    """'frames 24-26: client->server 1 segment (143 B), server->client 1 segment (137 B), 1 ACK'."""
    parts = []
    for c2s, name in ((True, "client->server"), (False, "server->client")):
        data = [r for r in run if r.c2s == c2s and r.payload_len]
        if data:
            nbytes = sum(int(r.payload_len) for r in data)
            parts.append(f"{name} {len(data)} segment{'s' if len(data) != 1 else ''} ({nbytes} B)")
    acks = sum(1 for r in run if not r.payload_len)
    if acks:
        parts.append(f"{acks} ACK{'s' if acks != 1 else ''} without data")
    first, last = int(run[0].frame_number), int(run[-1].frame_number)
    where = f"frame {first}" if first == last else f"frames {first}-{last}"
    return f"{where}: " + ", ".join(parts)


def _notes(conn: dict[str, Any], p: pd.DataFrame) -> list[str]:
    """The sentences that tie the drawn frames to the labels (the FIN test, the final ACK, ...)."""
    notes: list[str] = []
    by_frame = p.set_index("frame_number")

    def frame(column: str) -> int | None:
        value = conn.get(column)
        return None if _missing(value) or int(value) not in by_frame.index else int(value)

    def side(f: int) -> str:
        return "client" if bool(by_frame.at[f, "c2s"]) else "server"

    first, second = frame("first_fin_frame"), frame("second_fin_frame")
    if first is not None and second is not None:
        fin = by_frame.loc[first]
        fin_covered_at = (int(fin["seq"]) + int(fin["payload_len"]) + 1) % tf.SEQ_SPACE
        other = by_frame.loc[second]
        raw_end = int(fin["seq_raw"]) + int(fin["payload_len"]) + 1
        covered = int(other["ack"]) >= 0 and bool(tf.covers(np.array([int(other["ack_raw"])]),
                                                            np.array([raw_end]))[0])
        ack = "no ACK" if int(other["ack"]) < 0 else f"ack={int(other['ack'])}"
        verdict = ("covers it: the other side had seen the first FIN" if covered
                   else "does not cover it: the FINs crossed")
        notes.append(f"first FIN: frame {first} ({side(first)}, seq={int(fin['seq'])}; "
                     f"acknowledged by ack>={fin_covered_at})")
        notes.append(f"second FIN: frame {second} ({side(second)}, {ack}) {verdict}")
    elif first is not None and "one_direction_only" in (conn.get("flags") or []):
        notes.append(f"FIN seen: frame {first} ({side(first)}); the other direction is not in the capture, "
                     "its FIN shows only in the acknowledgements")
    elif first is not None:
        notes.append(f"only FIN: frame {first} ({side(first)}); the other side never sent one")
    final = frame("final_ack_frame")
    if final is not None:
        notes.append(f"final ACK: frame {final} ({side(final)}): both FINs acknowledged")
    rst = frame("rst_frame")
    if rst is not None:
        notes.append(f"first RST: frame {rst} ({side(rst)})")
    idle = conn.get("idle_before_close_s")
    if not _missing(idle) and "idle_close" in (conn.get("flags") or []):
        notes.append(f"idle {float(idle):.3f} s before the close")
    intervals = conn.get("syn_ack_intervals") or []
    if len(intervals):
        notes.append("SYN-ACK sent again after " + ", ".join(f"{float(i):.3f}" for i in intervals) + " s")
    return notes
