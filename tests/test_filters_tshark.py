"""Every filter we write parses in the installed tshark and selects exactly what it names."""

from __future__ import annotations

import json
from pathlib import Path

from tcp_teardown.filters import MAX_SET_MEMBERS, set_filters
from tests.conftest import needs_tshark, tshark_fields


@needs_tshark
def test_every_written_filter_selects_exactly_its_frames(seed_run: Path) -> None:
    # seed_all_in_one holds every seed connection: its filters cover every label once.
    records = [r for r in json.loads((seed_run / "filters.json").read_text()) if "all_in_one" in r["file"]]
    assert len({r["label"] for r in records}) >= 20
    checked = 0
    streams_of: dict[Path, list[list[str]]] = {}
    for record in records:
        capture = Path(record["file"])
        if capture not in streams_of:
            streams_of[capture] = tshark_fields(capture, "tcp.stream", display_filter="tcp")
        for text in record["frame_filters"]:
            named = {int(x) for x in text.split("{", 1)[1].rstrip("}").split(",")}
            got = {int(r[0]) for r in tshark_fields(capture, "frame.number", display_filter=text)}
            assert got == named, (capture.name, record["label"], text)
            checked += 1
        for text in record["stream_filters"]:
            named = {int(x) for x in text.split("{", 1)[1].rstrip("}").split(",")}
            got = tshark_fields(capture, "tcp.stream", display_filter=text)
            all_rows = streams_of[capture]
            assert {int(r[0]) for r in got} == named
            assert len(got) == sum(1 for r in all_rows if int(r[0]) in named)
            checked += 1
    assert checked >= 38  # two filters (connections, key frames) per label present


def test_long_sets_are_split() -> None:
    parts = set_filters("frame.number", list(range(1, 2 * MAX_SET_MEMBERS + 2)))
    assert len(parts) == 3
    assert all(p.count(",") < MAX_SET_MEMBERS for p in parts)
    assert parts[-1] == f"frame.number in {{{2 * MAX_SET_MEMBERS + 1}}}"


def test_filters_text_names_every_file(seed_run: Path) -> None:
    text = (seed_run / "filters.txt").read_text()
    assert "seed000_simultaneous_close.pcap" in text
    assert "### fin_simultaneous (1 connection)" in text


def test_huge_sets_point_to_the_comment_filter() -> None:
    from tcp_teardown.filters import MAX_TOTAL_MEMBERS, LabelFilter, render_text

    assert set_filters("tcp.stream", list(range(MAX_TOTAL_MEMBERS + 1))) == ()
    text = render_text([LabelFilter("big.pcap", "idle_close", MAX_TOTAL_MEMBERS + 1, (), ())])
    assert 'frame.comment contains "tcp-teardown: idle_close ("' in text
    assert "tcp-teardown annotate big.pcap" in text
