"""Properties of the labels over generated TCP traffic (hypothesis), engine-free.

A generator writes whole connections straight into packet tables (schema.PACKETS):
handshake variants, data with retransmissions and capture losses, every kind of close,
sometimes one direction dropped, several connections interleaved and 4-tuples reused.
`analysis.analyze_packets` labels them, and then:

- each connection has one `open` and one `close` of the vocabulary and flags from it;
  for captures holding both directions they are the ones the connection was built with;
- `refused` / `no_answer` / `syn_ack_no_ack` close as `never_opened`, without FIN flags;
- `time_wait_side` follows the close; `first_fin_frame <= second_fin_frame`;
  `final_ack_frame` only for orderly closes; `key_frames` holds every `*_frame`;
- `flow_id` and labels do not move when the capture is shifted in time or preceded by
  unrelated traffic, nor when the table arrives in other Arrow chunks or slices;
- exactly one open rule and one close rule hold per connection (the chains are exclusive:
  their order never decides a label).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tcp_teardown import analysis
from tcp_teardown.analysis import analyze_packets
from tcp_teardown.connections import split_connections
from tcp_teardown.facts import Facts, Params, compute_facts
from tcp_teardown.rules import CLOSE_RULES, OPEN_RULES
from tcp_teardown.rules.apply import apply_rules
from tcp_teardown.vocab import CLOSE_VALUES, FLAG_VALUES, OPEN_VALUES
from tests.malformed.builders import ACK, FIN, PSH, RST, SEQ_SPACE, SYN, Seg, packet_table

# A few seconds in the default run; TCP_TEARDOWN_EXAMPLES=2000 for a long search.
EXAMPLES = int(os.environ.get("TCP_TEARDOWN_EXAMPLES", "0"))


def examples(default: int) -> settings:
    return settings(max_examples=EXAMPLES or default, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
PARAMS = Params()

OPENS = ("handshake", "syn_retransmitted", "syn_ack_retransmitted", "refused", "no_answer",
         "syn_ack_no_ack", "midstream")
CLOSES = ("fin_by_client", "fin_by_server", "three_way_client", "three_way_server", "fin_simultaneous",
          "rst_by_client", "rst_by_server", "half_closed_client", "half_closed_server", "not_closed",
          "fin_then_rst", "fin_retransmitted", "final_ack_lost")
# The close label each generated close must get (two-direction captures of opened connections).
CLOSE_LABEL = {
    "fin_by_client": "fin_by_client", "fin_by_server": "fin_by_server", "three_way_client": "fin_by_client",
    "three_way_server": "fin_by_server", "fin_simultaneous": "fin_simultaneous", "rst_by_client": "rst_by_client",
    "rst_by_server": "rst_by_server", "half_closed_client": "half_closed", "half_closed_server": "half_closed",
    "not_closed": "not_closed", "fin_then_rst": "rst_by_server", "fin_retransmitted": "fin_by_client",
    "final_ack_lost": "fin_by_client",
}
NEVER_OPENED = {"refused", "no_answer", "syn_ack_no_ack"}
ORDERLY = {"fin_by_client", "fin_by_server", "fin_simultaneous"}
FIN_FLAGS = {"three_way_close", "rst_after_fin", "rst_after_close", "fin_retransmitted", "final_ack_missing"}
TIME_WAIT = {"fin_by_client": "client", "fin_by_server": "server", "fin_simultaneous": "both"}
FRAME_COLUMNS = ("syn_frame", "first_fin_frame", "second_fin_frame", "rst_frame", "final_ack_frame")
FATES = ("ok", "retransmitted", "lost", "ack_lost")  # what the capture saw of a data segment


@dataclass(frozen=True)
class Plan:
    """One connection to generate."""

    open: str
    data: tuple[tuple[str, int, str], ...]  # (side "c"/"s", payload bytes, fate)
    close: str
    one_direction: str | None  # None, or the only direction the capture holds: "c" / "s"
    isn_c: int
    isn_s: int
    step: float  # seconds between packets
    reuse: bool  # same 4-tuple as the connection before it (which then must have had a SYN)


@dataclass(frozen=True)
class Built:
    segs: list[Seg]
    expected: tuple[str, str] | None  # (open, close) when the capture shows it unambiguously


def build(plan: Plan, client: tuple[str, int], server: tuple[str, int], t0: float) -> Built:
    """The segments of `plan`, in the order the capture saw them."""
    (cip, cport), (sip, sport) = client, server
    segs: list[Seg] = []
    nxt = {"c": (plan.isn_c + 1) % SEQ_SPACE, "s": (plan.isn_s + 1) % SEQ_SPACE}
    clock = [t0]

    def send(side: str, flags: int, payload: int = 0, *, seq: int | None = None, ack: int | None = None,
             seen: bool = True, advance: bool = True) -> None:
        src, dst = ((cip, cport), (sip, sport)) if side == "c" else ((sip, sport), (cip, cport))
        other = "s" if side == "c" else "c"
        this_seq = nxt[side] if seq is None else seq
        this_ack = (nxt[other] if ack is None else ack) if flags & ACK else 0
        if seen:
            segs.append(Seg(ts=clock[0], src=src[0], dst=dst[0], sport=src[1], dport=dst[1], flags=flags,
                            seq=this_seq % SEQ_SPACE, ack=this_ack % SEQ_SPACE, payload=payload))
        clock[0] += plan.step
        if advance and seq is None:
            nxt[side] = (nxt[side] + payload + (1 if flags & (SYN | FIN) else 0)) % SEQ_SPACE

    visible = plan.open != "midstream"
    send("c", SYN, seq=plan.isn_c, seen=visible)
    if plan.open == "syn_retransmitted":
        send("c", SYN, seq=plan.isn_c)
    if plan.open == "no_answer":
        send("c", SYN, seq=plan.isn_c)
        return Built(_direction(segs, plan, client), None if plan.one_direction else ("no_answer", "never_opened"))
    if plan.open == "refused":
        send("s", RST | ACK, seq=0, ack=(plan.isn_c + 1) % SEQ_SPACE)
        return Built(_direction(segs, plan, client), None if plan.one_direction else ("refused", "never_opened"))
    send("s", SYN | ACK, seq=plan.isn_s, ack=(plan.isn_c + 1) % SEQ_SPACE, seen=visible)
    if plan.open in ("syn_ack_retransmitted", "syn_ack_no_ack"):
        send("s", SYN | ACK, seq=plan.isn_s, ack=(plan.isn_c + 1) % SEQ_SPACE)
    if plan.open == "syn_ack_no_ack":
        return Built(_direction(segs, plan, client),
                     None if plan.one_direction else ("syn_ack_no_ack", "never_opened"))
    send("c", ACK, seen=visible)

    for side, size, fate in plan.data:
        other = "s" if side == "c" else "c"
        seq = nxt[side]
        send(side, PSH | ACK, size, seen=fate != "lost")
        if fate == "retransmitted":
            send(side, PSH | ACK, size, seq=seq)
        send(other, ACK, seen=fate != "ack_lost")

    close = plan.close
    if close in ("fin_by_client", "fin_by_server", "fin_retransmitted", "final_ack_lost"):
        first, second = ("s", "c") if close == "fin_by_server" else ("c", "s")
        fin_seq = nxt[first]
        send(first, FIN | ACK)
        if close == "fin_retransmitted":
            send(first, FIN | ACK, seq=fin_seq, advance=False)
        send(second, ACK)
        send(second, FIN | ACK)
        send(first, ACK, seen=close != "final_ack_lost")
    elif close in ("three_way_client", "three_way_server"):
        first, second = ("c", "s") if close == "three_way_client" else ("s", "c")
        send(first, FIN | ACK)
        send(second, FIN | ACK)
        send(first, ACK)
    elif close == "fin_simultaneous":
        c_acks, s_acks = nxt["s"], nxt["c"]
        send("c", FIN | ACK, ack=c_acks)
        send("s", FIN | ACK, ack=s_acks)  # sent before the client's FIN arrived
        send("c", ACK)
        send("s", ACK)
    elif close in ("rst_by_client", "rst_by_server"):
        send(close[-6], RST | ACK)
    elif close in ("half_closed_client", "half_closed_server"):
        first, second = ("c", "s") if close.endswith("client") else ("s", "c")
        send(first, FIN | ACK)
        send(second, ACK)
    elif close == "fin_then_rst":
        send("c", FIN | ACK)
        send("s", ACK)
        send("s", RST | ACK)
    segs = _direction(segs, plan, client)
    expected = None if plan.one_direction else (
        "midstream" if plan.open == "midstream" else "handshake", CLOSE_LABEL[close])
    return Built(segs, expected)


def _direction(segs: list[Seg], plan: Plan, client: tuple[str, int]) -> list[Seg]:
    if plan.one_direction is None:
        return segs
    from_client = plan.one_direction == "c"
    return [s for s in segs if ((s.src, s.sport) == client) == from_client]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    open_ = draw(st.sampled_from(OPENS))
    opened = open_ not in NEVER_OPENED
    data = tuple(draw(st.lists(st.tuples(st.sampled_from("cs"), st.integers(1, 1460), st.sampled_from(FATES)),
                               max_size=4))) if opened else ()
    close = draw(st.sampled_from(CLOSES)) if opened else "not_closed"
    isn = st.one_of(st.integers(0, SEQ_SPACE - 1), st.integers(SEQ_SPACE - 3000, SEQ_SPACE - 1))
    return Plan(
        open=open_, data=data, close=close,
        one_direction=draw(st.one_of(st.none(), st.sampled_from("cs"))) if draw(st.booleans()) else None,
        isn_c=draw(isn), isn_s=draw(isn),
        step=draw(st.sampled_from((0.0001, 0.01, 0.3, 7.0))),
        reuse=draw(st.booleans()),
    )


@dataclass
class Capture:
    table: pa.Table
    expected: list[tuple[str, str, str, int] | None]  # per built connection: (open, close, client ip, port)


@st.composite
def captures(draw: st.DrawFn, max_connections: int = 5) -> Capture:
    """Several connections, interleaved in time; some reuse the 4-tuple before them."""
    plan_list = draw(st.lists(plans(), min_size=1, max_size=max_connections))
    built: list[list[Seg]] = []
    expected: list[tuple[str, str, str, int] | None] = []
    previous: tuple[Plan, tuple[str, int], float] | None = None
    for i, plan in enumerate(plan_list):
        client, server = (f"10.0.{i}.1", 40000 + i), (f"10.9.{i}.2", 80 + i)
        t0 = 1_700_000_000.0 + draw(st.floats(0, 2, allow_nan=False))
        if (plan.reuse and previous is not None and previous[0].open != "midstream"
                and plan.open != "midstream" and plan.isn_c != previous[0].isn_c):
            client = previous[1]
            server = (f"10.9.{i - 1}.2", 80 + i - 1)
            t0 = previous[2] + draw(st.sampled_from((0.5, 10.0, 100.0)))
        connection = build(plan, client, server, t0)
        if not connection.segs:
            continue
        built.append(connection.segs)
        expected.append(None if connection.expected is None else (*connection.expected, *client))
        previous = (plan, client, connection.segs[-1].ts) if plan.open != "midstream" else None
    assume(built)
    # Interleave by time (stable: a connection's own order is kept).
    order = sorted((s.ts, c, k) for c, segs in enumerate(built) for k, s in enumerate(segs))
    segs = [built[c][k] for _, c, k in order]
    return Capture(packet_table(segs), expected)


def label(table: pa.Table) -> pd.DataFrame:
    return analyze_packets(table, "generated", PARAMS).connections.to_pandas()


def label_key(conns: pd.DataFrame) -> list[tuple]:
    """What must not change: flow id, roles and labels (frame numbers may shift)."""
    return sorted((r.flow_id, r.client_ip, r.client_port, str(r.open), str(r.close), tuple(r.flags),
                   None if pd.isna(r.time_wait_side) else str(r.time_wait_side)) for r in conns.itertuples())


# --- the invariants --------------------------------------------------------------------------
def check_invariants(conns: pd.DataFrame) -> None:
    for row in conns.itertuples():
        open_, close, flags = str(row.open), str(row.close), list(row.flags)
        assert open_ in OPEN_VALUES and close in CLOSE_VALUES
        assert set(flags) <= set(FLAG_VALUES) and len(flags) == len(set(flags))
        if open_ in NEVER_OPENED:
            assert close == "never_opened", row
            assert not set(flags) & FIN_FLAGS, row
        side = None if pd.isna(row.time_wait_side) else str(row.time_wait_side)
        assert side == TIME_WAIT.get(close), row
        if not pd.isna(row.first_fin_frame) and not pd.isna(row.second_fin_frame):
            assert row.first_fin_frame <= row.second_fin_frame, row
        if not pd.isna(row.final_ack_frame):
            assert close in ORDERLY, row
        keys = set(row.key_frames)
        for column in FRAME_COLUMNS:
            value = getattr(row, column)
            assert pd.isna(value) or int(value) in keys, (column, row)
        assert row.first_frame <= row.last_frame and row.duration_s >= 0


def check_expected(conns: pd.DataFrame, capture: Capture) -> None:
    """Two-direction connections get the labels they were built with."""
    by_key: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for row in conns.sort_values("first_frame").itertuples():
        by_key.setdefault((row.client_ip, row.client_port), []).append((str(row.open), str(row.close)))
    wanted: dict[tuple[str, int], list[tuple[str, str] | None]] = {}
    for exp in capture.expected:
        if exp is not None:
            wanted.setdefault((exp[2], exp[3]), []).append((exp[0], exp[1]))
    for key, labels in wanted.items():
        got = by_key.get(key, [])
        assert labels == got[:len(labels)] or labels == got[-len(labels):], (key, labels, got)


@given(captures())
@examples(40)
def test_labels_are_complete_consistent_and_as_built(capture: Capture) -> None:
    """Also: exactly one open rule and one close rule hold per connection (precedence never decides)."""
    check_exclusive(capture.table)
    conns = label(capture.table)
    assert len(conns) >= 1
    check_invariants(conns)
    if all(e is not None for e in capture.expected):
        assert len(conns) == len(capture.expected)
        check_expected(conns, capture)


@given(captures(), st.floats(-1e6, 1e6, allow_nan=False), st.integers(1, 40))
@examples(10)
def test_flow_id_ignores_time_shift_and_unrelated_traffic(capture: Capture, shift: float, noise: int) -> None:
    base = label_key(label(capture.table))
    table = capture.table
    shifted = table.set_column(1, table.schema.field(1), pa.compute.add(table.column("ts"), shift))
    assert label_key(label(shifted)) == base
    # Unrelated connections first: frame numbers move, flow ids and labels must not.
    other = [Seg(ts=1_600_000_000.0 + i * 0.01, src="192.0.2.1", dst="198.51.100.1", sport=50000 + i % 7,
                 dport=443, flags=[SYN, SYN | ACK, ACK, PSH | ACK, RST][i % 5], seq=i * 1000, ack=i * 77)
             for i in range(noise)]
    prefix = packet_table(other)
    moved = table.set_column(0, table.schema.field(0), pa.compute.add(table.column("frame_number"), noise))
    combined = label(pa.concat_tables([prefix, moved]))
    assert label_key(combined[combined["client_ip"] != "192.0.2.1"]
                     .loc[lambda d: d["server_ip"] != "192.0.2.1"]) == base


@given(captures(), st.lists(st.integers(0, 200), max_size=6), st.integers(1, 9))
@examples(10)
def test_labels_ignore_chunking_and_slicing(capture: Capture, cuts: list[int], slice_packets: int) -> None:
    table = capture.table
    whole = analyze_packets(table, "generated", PARAMS)
    bounds = sorted({0, table.num_rows, *(c % (table.num_rows + 1) for c in cuts)})
    chunked = pa.Table.from_batches([b for lo, hi in itertools.pairwise(bounds)
                                     for b in table.slice(lo, hi - lo).to_batches()], schema=table.schema)
    same_tables(analyze_packets(chunked, "generated", PARAMS).connections, whole.connections)
    with mock.patch.object(analysis, "SLICE_PACKETS", slice_packets):
        sliced = analyze_packets(table, "generated", PARAMS)
    same_tables(sliced.connections, whole.connections)
    same_tables(sliced.frames, whole.frames)


def same_tables(got: pa.Table, want: pa.Table) -> None:
    """Same schema and values (dictionary layouts may differ between chunkings)."""
    assert got.schema == want.schema
    assert got.to_pylist() == want.to_pylist()


def check_exclusive(table: pa.Table) -> None:
    """Every connection matches exactly one open rule and exactly one close rule."""
    split = split_connections(table)
    facts = compute_facts(split.segments, split.identity.pair, PARAMS)
    open_masks = _masks(OPEN_RULES, facts)
    assert (open_masks.sum(axis=1) == 1).all(), _which(OPEN_RULES, open_masks)
    close_masks = _masks(CLOSE_RULES, apply_rules(facts, PARAMS))
    assert (close_masks.sum(axis=1) == 1).all(), _which(CLOSE_RULES, close_masks)


def _masks(rules: list, facts: Facts) -> np.ndarray:
    """One column per rule: where its mask holds."""
    return np.column_stack([np.asarray(rule.fn(facts, PARAMS), dtype=bool) for rule in rules])


def _which(rules: list, masks: np.ndarray) -> list[list[str]]:
    return [[str(r.label) for r, hit in zip(rules, row, strict=True) if hit]
            for row in masks if row.sum() != 1]


def _grid(plans: list[Plan]) -> tuple[pd.DataFrame, list[Built]]:
    """Many plans as one capture (one 4-tuple each, one after the other): one labelling."""
    built = [build(plan, (f"10.{i // 250}.{i % 250}.1", 40000), ("10.250.0.2", 80), 1e9 + 100 * i)
             for i, plan in enumerate(plans)]
    table = packet_table([seg for one in built for seg in one.segs])
    check_exclusive(table)
    conns = label(table)
    return conns.sort_values("first_frame").reset_index(drop=True), built


def test_every_open_and_close_variant_gets_its_label() -> None:
    """The oracle over the whole variant grid, with each data fate, and what each reaches."""
    plans = [Plan(open_, (("c", 10, fate), ("s", 20, "ok")), close, None, 2**32 - 5 + i, 7, 0.01, False)
             for i, (open_, close, fate) in enumerate(
                 (o, c, f) for o in OPENS for c in (CLOSES if o not in NEVER_OPENED else ("not_closed",))
                 for f in FATES)]
    conns, built = _grid(plans)
    check_invariants(conns)
    got = [(str(r.open), str(r.close)) for r in conns.itertuples()]
    wrong = [(p.open, p.close, p.data[0][2], g, b.expected)
             for p, g, b in zip(plans, got, built, strict=True) if g != b.expected]
    assert not wrong, wrong
    assert set(conns["open"].astype(str)) == set(OPEN_VALUES)
    assert set(conns["close"].astype(str)) == set(CLOSE_VALUES)


def test_one_direction_variants_keep_the_invariants() -> None:
    plans = [Plan(o, (("c", 10, "ok"), ("s", 20, "ok")), c, side, 1000 + i, 9000, 0.01, False)
             for i, (o, c, side) in enumerate((o, c, side) for o in OPENS for c in CLOSES for side in "cs")]
    conns, _ = _grid(plans)
    check_invariants(conns)


def test_rst_of_a_never_opened_connection_is_a_key_frame() -> None:
    """SYN, SYN-ACK, then the server's RST (syn_ack_no_ack), or SYN then the client's RST
    (no_answer): rst_frame names the RST, so key_frames must hold it (taxonomy)."""
    client, server = ("10.0.0.1", 40000), ("10.0.0.2", 80)

    def seg(i: int, src: tuple[str, int], flags: int, seq: int, ack: int = 0) -> Seg:
        dst = server if src == client else client
        return Seg(ts=1e9 + i * 0.01, src=src[0], dst=dst[0], sport=src[1], dport=dst[1], flags=flags,
                   seq=seq, ack=ack)

    half_open = [seg(0, client, SYN, 100), seg(1, server, SYN | ACK, 500, 101), seg(2, server, RST | ACK, 501, 101)]
    given_up = [seg(0, client, SYN, 100), seg(1, client, RST, 101)]
    for segs in (half_open, given_up):
        row = label(packet_table(segs)).iloc[0]
        assert str(row.close) == "never_opened" and not pd.isna(row.rst_frame)
        assert int(row.rst_frame) in set(row.key_frames)


def test_never_opened_connection_has_no_fin_flags() -> None:
    """SYN, the client's ACK and FINs (its SYN-ACK not captured), then a server RST: the
    connection is labelled refused, and then must not carry fin_retransmitted. (The RST
    here does not even acknowledge the SYN, which a client in SYN-SENT would ignore.)"""
    client, server = ("10.0.0.1", 40000), ("10.0.0.2", 80)

    def seg(i: int, src: tuple[str, int], flags: int, seq: int, ack: int = 0) -> Seg:
        dst = server if src == client else client
        return Seg(ts=1e9 + i * 0.01, src=src[0], dst=dst[0], sport=src[1], dport=dst[1], flags=flags,
                   seq=seq, ack=ack)

    segs = [seg(0, client, SYN, 100), seg(1, client, ACK, 101, 501), seg(2, client, FIN | ACK, 101, 501),
            seg(3, client, FIN | ACK, 101, 501), seg(4, server, RST | ACK, 0, 1)]
    row = label(packet_table(segs)).iloc[0]
    assert str(row["open"]) not in NEVER_OPENED or not set(row["flags"]) & FIN_FLAGS, (row["open"], list(row["flags"]))
