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

from tcp_teardown.native.views import blocks

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
        # The first test (a one-byte one if there is one: cheapest) on every offset of
        # the rows, the others only where it passed.
        tests = sorted(layout.prefilter, key=lambda test: test[0].itemsize)
        view, byte, mask, low, span = tests[0]
        r, c = np.nonzero(_passes(_grid(view, byte, rows[index], width, step), mask, low, span))
        r = index[r]
        positions = rows[r] + c * step
        for view, byte, mask, low, span in tests[1:]:
            ok = _passes(view[positions + byte], mask, low, span)
            r, positions = r[ok], positions[ok]
        r_parts.append(r)
        p_parts.append(positions)
    for i in np.flatnonzero(~whole).tolist():  # the last rows of the window
        hit_row = np.arange(rows[i], min(rows[i] + width, n - layout.header + 1), step)
        r_parts.append(np.full(len(hit_row), i))
        p_parts.append(hit_row)
    r = np.concatenate(r_parts) if r_parts else np.zeros(0, np.int64)
    positions = np.concatenate(p_parts) if p_parts else np.zeros(0, np.int64)
    # Rows ascend (the rows that run past the window end are the last ones), and so do
    # positions within a row.
    return np.vstack((r, positions))


def _grid(view: np.ndarray, byte: int, rows: IntArray, width: int, step: int) -> np.ndarray:
    """view[row + byte + k * step] for k < width // step, one row per row start."""
    item = view.strides[0]
    spacing = np.diff(rows)
    if len(rows) > 1 and not (spacing == spacing[0]).all():
        # one copy of each row out of a sliding-window view
        sliding = np.lib.stride_tricks.sliding_window_view(view[byte:], width)
        return sliding[rows][:, ::step]
    # evenly spaced rows: a strided view, no copy at all
    return np.lib.stride_tricks.as_strided(
        view[rows[0] + byte :],
        shape=(len(rows), width // step),
        strides=(int(spacing[0]) * item if len(rows) > 1 else 0, step * item),
        writeable=False,
    )


def _passes(values: np.ndarray, mask: int | None, low: int, span: int) -> np.ndarray:
    """(values & mask) - low <= span, wrapping in the values' unsigned type."""
    kind = values.dtype.type
    if mask is not None:
        values = values & kind(mask)
    return (values - kind(low)) <= kind(span)


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
    chains = _follow(layout, n, starts, ends)
    first_stop = chains.stop
    incomplete = first_stop < ends

    # Chains are confirmed in order: each must start where the previous one stopped,
    # and the window's confirmed part ends at the first chain that ran out of window.
    follows = np.append(True, starts[1:] == first_stop[:-1])
    cut = int(np.argmin(follows)) if not follows.all() else len(starts)
    if incomplete[:cut].any():
        cut = int(np.argmax(incomplete[:cut])) + 1
    finished = cut == len(starts) or bool(incomplete[cut - 1])
    found = chains.records_of_first(cut)  # ascending: chain by chain
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


@dataclass
class _Run:
    """Consecutive steps during which the same chains were walking."""

    chains: IntArray  # the chains (ascending)
    first_step: int
    positions: list[IntArray]  # each step's positions of those chains


@dataclass
class _Chains:
    """What a set of chains visited, and where each stopped."""

    runs: list[_Run]
    visits: IntArray  # how many positions each chain visited (step 0 on, one a step)
    records: IntArray  # how many of those (the first ones) are complete records before its end
    stop: IntArray  # the visit after those: where the chain stopped

    def records_of_first(self, count: int) -> IntArray:
        """The records of chains [0, count), chain by chain (a transpose of the steps)."""
        width = int(self.visits[:count].max())
        if count * width > 2 * int(self.visits[:count].sum()):
            return self._scattered(count)  # chains of very unequal lengths
        # One row per chain, one column per step: each run is one transposing copy.
        grid = np.empty((count, width), dtype=np.int64)
        for run in self.runs:
            walking = int(np.searchsorted(run.chains, count))  # chains are ascending
            if walking and run.positions:
                steps = slice(run.first_step, run.first_step + len(run.positions))
                grid[run.chains[:walking], steps] = np.stack(run.positions)[:, :walking].T
        return grid[np.arange(width) < self.records[:count, None]]

    def _scattered(self, count: int) -> IntArray:
        """`records_of_first` for chains of any lengths: each visit to its own slot."""
        slot = np.zeros(len(self.visits) + 1, dtype=np.int64)
        np.cumsum(self.visits, out=slot[1:])  # first slot of each chain's visits
        laid_out = np.empty(int(slot[-1]), dtype=np.int64)
        for run in self.runs:
            if run.positions:
                at = slot[run.chains] + run.first_step
                steps = np.arange(len(run.positions))[:, None]
                laid_out[(at + steps).ravel()] = np.stack(run.positions).ravel()
        # Drop each chain's visits from where it stopped (a few per chain).
        extra = self.visits - self.records
        tail = np.repeat(slot[:-1] + self.records - np.cumsum(extra) + extra, extra)
        tail += np.arange(len(tail))
        keep = np.ones(len(laid_out), dtype=bool)
        keep[tail] = False
        limit = int(slot[count])
        return laid_out[:limit][keep[:limit]]


def _follow(layout: RecordLayout, n: int, starts: IntArray, ends: IntArray) -> _Chains:
    """Walk a chain from each start until it passes its end or the window's.

    Chains run CHECK_EVERY steps between looks at which are done, so a step is only a
    gather and two adds; a chain's last few visits are sorted out when it is done."""
    count = len(starts)
    visits = np.empty(count, dtype=np.int64)
    records = np.empty(count, dtype=np.int64)
    stop = np.empty(count, dtype=np.int64)
    last_header = n - layout.header
    advance = layout.advance
    runs: list[_Run] = []
    run = _Run(np.arange(count), 0, [starts])
    position, end = starts, ends
    checked = starts  # the positions at the last look
    step = 0
    while run.chains.size:
        for _ in range(CHECK_EVERY):
            position = advance(position)
            run.positions.append(position)
        step += CHECK_EVERY
        going = (position < end) & (position <= last_header)
        if not going.all():
            done = ~going
            # Before the last look every visit of a done chain was a complete record
            # before its end; its stop is among the visits since.
            recent = np.stack([checked[done]] + [p[done] for p in run.positions[-CHECK_EVERY:]])
            stops = (recent >= end[done]) | (recent > last_header)
            stops[:-1] |= recent[1:] > n  # the record runs past the window
            stops[-1] = True  # where the chain ended up (its length is not known)
            first = np.argmax(stops, axis=0)
            ids = run.chains[done]
            records[ids] = step - CHECK_EVERY + first
            stop[ids] = recent[first, np.arange(len(ids))]
            visits[ids] = step + 1
            runs.append(run)
            position, end = position[going], end[going]
            run = _Run(run.chains[going], step + 1, [])
        checked = position
    return _Chains(runs, visits, records, stop)


def _first_problem(layout: RecordLayout, found: IntArray, end: int) -> tuple[int, str] | None:
    """Index and kind ("bad"/"stop") of the first malformed or stop record, if any.
    (`end`: where the last record ends; lengths are the gaps between records.)"""
    if layout.sane is None and layout.stop is None and _longest(found, end) <= layout.max_length:
        return None  # (the common case, without window-sized temporaries)
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


def _longest(found: IntArray, end: int) -> int:
    """The longest of the records at `found` (back to back, the last ending at `end`)."""
    longest = end - int(found[-1])
    for part in blocks(len(found) - 1):
        longest = max(longest, int(np.subtract(found[part.start + 1 : part.stop + 1], found[part]).max()))
    return longest


def _stops_at(layout: RecordLayout, n: int, position: int) -> bool:
    if layout.stop is None or position + layout.header > n:
        return False
    return bool(layout.stop(np.array([position]))[0])
