"""Finding every record start in a window of a capture, without a Python loop per record.

Capture records are a linked list: each record's header gives its length, hence where the
next one starts. Following that list one record at a time in Python costs ~400 ns a
record, more than decoding it. Instead the window is cut into segments; in each segment
we *guess* a record start (a position whose header is plausible and whose next records
are plausible too), then follow all the chains together, one NumPy step per record of
the longest chain. Only the first chain starts at a known record; every other start is confirmed
when the chain before it lands exactly on it. A wrong guess (rare) restarts the walk from
where the last confirmed chain ended, so the result is always exactly what a sequential
reader finds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

IntArray = np.ndarray

# Below this many bytes a plain sequential loop is cheaper than setting up chains.
SMALL_WINDOW = 256 << 10
HEAD_RECORDS = 64  # records read sequentially first, to measure the average length
RECORDS_PER_CHAIN = 256  # longer chains: fewer guesses, and fewer records walked at once
GUESS_CONFIRMATIONS = 3
MAX_RESTARTS = 8
CHECK_EVERY = 4  # steps between looks at which chains are done


@dataclass(frozen=True)
class RecordLayout:
    """How to read one record format (pcap records, pcapng blocks) in a window of `n` bytes."""

    header: int  # bytes needed at a record start to read its length
    align: int  # record starts are at multiples of this from the window start
    min_length: int  # shortest well-formed record
    max_length: int  # longest well-formed record
    length: Callable[[IntArray], IntArray]  # int64 record lengths at offsets
    # offset of the next record: p + length, at least p + min_length (so walks progress);
    # must not fail for any p (reads clipped to the window; the result is then garbage)
    advance: Callable[[IntArray], IntArray]
    scalar_length: Callable[[int], int]  # the same for one offset (sequential walks)
    # record at p of length L well-formed? (checked once after the walk; reads only
    # within the record; None: the caller checks)
    sane: Callable[[IntArray, IntArray], IntArray] | None
    # Cheap first tests for guessing, (view, byte, mask, low, span) each:
    # (view[start + byte] & mask) - low <= span in the view's unsigned dtype (wrapping);
    # `view` is a stride-1 view of the window (views.Views), mask None for all bits.
    # Every real record start must pass them.
    prefilter: tuple[tuple[np.ndarray, int, int | None, int, int], ...]
    plausible: Callable[[IntArray], IntArray]  # full test for guessing (p <= n - header)
    stop: Callable[[IntArray], IntArray] | None = None  # records the walk must stop at


@dataclass
class Walk:
    """Record starts found from `start`, and why the walk ended at `end`."""

    offsets: IntArray  # int64, increasing
    end: int  # first byte not covered by a complete record
    status: str  # "more": window exhausted at a record boundary or mid-record;
    #              "bad": malformed record at `end`; "stop": stop record at `end`


def walk_records(layout: RecordLayout, n: int, start: int) -> Walk:
    """All complete, well-formed records from `start` in a window of `n` bytes."""
    if n - start < SMALL_WINDOW:
        return _sequential(layout, n, start, None)
    head = _sequential(layout, n, start, HEAD_RECORDS)
    if head.status != "more" or len(head.offsets) < HEAD_RECORDS:
        return head
    pieces = [head.offsets]
    position = head.end
    average = max((head.end - start) / len(head.offsets), layout.min_length)
    for _ in range(MAX_RESTARTS):
        if n - position < SMALL_WINDOW:
            break
        found, position, status, finished = _parallel(layout, n, position, average)
        pieces.append(found)
        if status != "more" or finished:
            return Walk(np.concatenate(pieces), position, status)
    tail = _sequential(layout, n, position, None)
    pieces.append(tail.offsets)
    return Walk(np.concatenate(pieces), tail.end, tail.status)


def _sequential(layout: RecordLayout, n: int, start: int, limit: int | None) -> Walk:
    """One record at a time: for small windows, the first records, and pathological data."""
    offsets: list[int] = []
    append = offsets.append
    position = start
    header = layout.header
    length = layout.scalar_length
    status = "more"
    while position + header <= n and (limit is None or len(offsets) < limit):
        size = length(position)
        if size < layout.min_length or size > layout.max_length:
            status = "stop" if _stops_at(layout, n, position) else "bad"
            break
        if position + size > n:
            break
        append(position)
        position += size
    found = np.asarray(offsets, dtype=np.int64)
    if status == "more" and _stops_at(layout, n, position):
        status = "stop"  # a stop record whose length field is unreadable in this order
    if found.size:
        cut = _first_problem(layout, found, position)
        if cut is not None:
            first, status = cut
            return Walk(found[:first], int(found[first]), status)
    return Walk(found, position, status)


def _prefilter_hits(layout: RecordLayout, rows: IntArray, width: int, n: int) -> IntArray:
    """Candidate record starts in [row, row + width) for each row (ascending rows), by the
    layout's prefilter: returns (row index, offset) pairs as a 2 x k array."""
    step = layout.align
    tests = layout.prefilter
    limit = n - layout.header  # last offset we may test
    for view, byte, *_ in tests:
        limit = min(limit, len(view) - 1 - byte)
    whole = rows + width - step <= limit
    r_parts: list[IntArray] = []
    p_parts: list[IntArray] = []
    index = np.flatnonzero(whole)
    if index.size:
        spacing = np.diff(rows[index])
        even = index.size > 1 and bool((spacing == spacing[0]).all())
        hit = None
        for view, byte, mask, low, span in tests:
            # A strided view when the rows are evenly spaced (no copy at all), else one
            # copy of each row out of a sliding-window view.
            item = view.strides[0]
            if even:
                grid = np.lib.stride_tricks.as_strided(
                    view[rows[index[0]] + byte :],
                    shape=(index.size, width // step),
                    strides=(int(spacing[0]) * item, step * item),
                    writeable=False,
                )
            else:
                sliding = np.lib.stride_tricks.sliding_window_view(view[byte:], width)
                grid = sliding[rows[index]][:, ::step]
            kind = view.dtype.type
            if mask is not None:
                grid = grid & kind(mask)
            test = (grid - kind(low)) <= kind(span)
            hit = test if hit is None else hit & test
        assert hit is not None
        r, c = np.nonzero(hit)
        r_parts.append(index[r])
        p_parts.append(rows[index[r]] + c * step)
    for i in np.flatnonzero(~whole).tolist():  # the last rows of the window
        hit_row = np.arange(rows[i], min(rows[i] + width, n - layout.header + 1), step)
        r_parts.append(np.full(len(hit_row), i))
        p_parts.append(hit_row)
    r = np.concatenate(r_parts) if r_parts else np.zeros(0, np.int64)
    positions = np.concatenate(p_parts) if p_parts else np.zeros(0, np.int64)
    # Rows ascend (the rows that run past the window end are the last ones), and so do
    # positions within a row.
    return np.vstack((r, positions))


def _guesses(layout: RecordLayout, n: int, nominal: IntArray, span: IntArray, average: float) -> IntArray:
    """For each nominal start, the first record start guessed in [start, start + span)
    (its next GUESS_CONFIRMATIONS records look plausible too); -1 if none."""
    step = layout.align
    found = np.full(len(nominal), -1, dtype=np.int64)
    todo = np.arange(len(nominal))
    width = max(int(average / 2) // step * step, 64 * step)
    offset = 0
    while todo.size:
        todo = todo[offset < span[todo]]
        if not todo.size:
            break
        rows = nominal[todo] + offset
        r, candidates = _prefilter_hits(layout, rows, width, n)
        inside = candidates < nominal[todo[r]] + span[todo[r]]
        r, candidates = r[inside], candidates[inside]
        if candidates.size:
            good = layout.plausible(candidates)
            r, candidates = r[good], candidates[good]
            good = _confirmed(layout, n, candidates)
            r, candidates = r[good], candidates[good]
            first = np.unique(r, return_index=True)[1]  # candidates ascend within a row
            found[todo[r[first]]] = candidates[first]
        todo = todo[found[todo] < 0]
        offset += width
    return found


def _confirmed(layout: RecordLayout, n: int, candidates: IntArray) -> IntArray:
    """Candidates whose following records are plausible too (and inside the window)."""
    ok = np.ones(len(candidates), dtype=bool)
    position = candidates.copy()
    for _ in range(GUESS_CONFIRMATIONS):
        idx = np.flatnonzero(ok)
        if not idx.size:
            break
        size = layout.length(position[idx])
        nxt = position[idx] + size
        good = (size >= layout.min_length) & (nxt + layout.header <= n)
        if good.any():
            good[good] = layout.plausible(nxt[good])
        ok[idx[~good]] = False
        position[idx[good]] = nxt[good]
    return ok


def _parallel(layout: RecordLayout, n: int, start: int, average: float) -> tuple[IntArray, int, str, bool]:
    """Walk chains from `start` (a known record) and from guessed starts further on.

    Returns the confirmed records, where the confirmed part ends, the status there, and
    whether the window is finished (False: call again from the returned end).
    """
    span = int(average * RECORDS_PER_CHAIN)
    span = max(span - span % layout.align, layout.align * 64)
    nominal = np.arange(start + span, n - layout.header, span, dtype=np.int64)
    guessed = _guesses(layout, n, nominal, np.full(len(nominal), span), average)
    starts = np.concatenate(([start], guessed[guessed >= 0])).astype(np.int64)
    ends = np.append(starts[1:], n)

    # Every position each chain visits, chain by chain. Chains run CHECK_EVERY steps
    # between looks at whether they passed their end or the window's; positions visited
    # past those are sorted out afterwards, so a step is only a gather and two adds.
    visited: list[IntArray] = []
    owner: list[IntArray] = []
    step_of: list[int] = []  # the step (record index within its chain) of each visit
    ids = np.arange(len(starts))
    position = starts.copy()
    end = ends.copy()
    last_header = n - layout.header
    advance = layout.advance
    step = 0
    while ids.size:
        for _ in range(CHECK_EVERY):
            visited.append(position)
            owner.append(ids)
            step_of.append(step)
            position = advance(position)
            step += 1
        going = (position < end) & (position <= last_header)
        if not going.all():
            # A chain's last visit: past its end, or past the window.
            visited.append(position[~going])
            owner.append(ids[~going])
            step_of.append(step)
            ids, position, end = ids[going], position[going], end[going]

    # Lay the visits out chain by chain (no sort needed: a chain's visits are its steps).
    chain = np.concatenate(owner)
    count = np.bincount(chain, minlength=len(starts))
    first = np.concatenate(([0], np.cumsum(count)[:-1]))
    steps = np.repeat(np.array(step_of), [len(v) for v in visited])
    pos = np.empty(len(chain), dtype=np.int64)
    pos[first[chain] + steps] = np.concatenate(visited)
    chain = np.repeat(np.arange(len(starts)), count)
    # A visit is a complete record if its header fits and the next visit (where the
    # record ends) is inside the window; a chain's last visit never is one.
    last_of_chain = np.zeros(len(pos), dtype=bool)
    last_of_chain[first + count - 1] = True
    complete = (pos <= last_header) & ~last_of_chain
    complete[:-1] &= pos[1:] <= n
    # Where each chain stopped: its first visit at or past its end, or that is not a
    # complete record, whichever comes first.
    stops = np.flatnonzero(~complete | (pos >= ends[chain]))
    stop_index = stops[np.searchsorted(stops, first)]
    first_stop = pos[stop_index]
    incomplete = first_stop < ends

    # Chains are confirmed in order: each must start where the previous one stopped,
    # and the window's confirmed part ends at the first chain that ran out of window.
    follows = np.append(True, starts[1:] == first_stop[:-1])
    cut = int(np.argmin(follows)) if not follows.all() else len(starts)
    if incomplete[:cut].any():
        cut = int(np.argmax(incomplete[:cut])) + 1
    finished = cut == len(starts) or bool(incomplete[cut - 1])
    # the records of the confirmed chains: [first, stop_index) of each (ranges disjoint)
    edges = np.zeros(len(pos) + 1, dtype=np.int64)
    np.add.at(edges, first[:cut], 1)
    np.add.at(edges, stop_index[:cut], -1)
    found = pos[np.cumsum(edges[:-1]) > 0]  # ascending: chain by chain
    end_at = int(first_stop[cut - 1])
    # Malformed and stop records are looked for once, on the confirmed records only.
    if found.size:
        problem = _first_problem(layout, found, end_at)
        if problem is not None:
            first, status = problem
            return found[:first], int(found[first]), status, True
    if _stops_at(layout, n, end_at):
        return found, end_at, "stop", True
    return found, end_at, "more", finished


def _first_problem(layout: RecordLayout, found: IntArray, end: int) -> tuple[int, str] | None:
    """Index and kind ("bad"/"stop") of the first malformed or stop record, if any.
    (`end`: where the last record ends; lengths are the gaps between records.)"""
    lengths = np.diff(found, append=end)  # records are back to back
    problem = lengths > layout.max_length
    if layout.sane is not None:
        problem |= ~layout.sane(found, lengths)
    stop = layout.stop(found) if layout.stop is not None else None
    if stop is not None:
        problem |= stop
    if not problem.any():
        return None
    first = int(np.argmax(problem))
    return first, "stop" if stop is not None and stop[first] else "bad"


def _stops_at(layout: RecordLayout, n: int, position: int) -> bool:
    if layout.stop is None or position + layout.header > n:
        return False
    return bool(layout.stop(np.array([position]))[0])
