"""Run the registered rules over the facts: one open, one close, the flags, TIME_WAIT side.

Labels are vocabulary codes (`vocab.code`) here; `label_names` turns them into the
written dictionary columns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tcp_teardown.arrays import from_numpy, strings
from tcp_teardown.facts import Facts, Params
from tcp_teardown.lists import Grouped
from tcp_teardown.rules.registry import CLOSE_RULES, FLAG_RULES, OPEN_RULES, Rule
from tcp_teardown.vocab import FLAG_VALUES, Close, Flag, TimeWaitSide, code

NO_LABEL = -1

# TIME_WAIT side by close code (-1: no TIME_WAIT).
TIME_WAIT_OF = np.full(len(Close), NO_LABEL, dtype=np.int8)
TIME_WAIT_OF[code(Close.FIN_BY_CLIENT)] = code(TimeWaitSide.CLIENT)
TIME_WAIT_OF[code(Close.FIN_BY_SERVER)] = code(TimeWaitSide.SERVER)
TIME_WAIT_OF[code(Close.FIN_SIMULTANEOUS)] = code(TimeWaitSide.BOTH)


def _first_match(rules: list[Rule], facts: Facts, params: Params) -> np.ndarray:
    """The code of the first rule that holds, per connection (the chain's precedence)."""
    masks = [np.asarray(rule.fn(facts, params), dtype=bool) for rule in rules]
    decided = np.select(masks, [code(rule.label) for rule in rules], default=NO_LABEL).astype(np.int8)
    if (decided == NO_LABEL).any():
        kind = rules[0].label.__class__.__name__
        raise AssertionError(f"{int((decided == NO_LABEL).sum())} connections matched no {kind} rule")
    return decided


def apply_rules(facts: Facts, params: Params) -> Facts:
    """Facts plus the label columns `open`, `close` (codes), `flag_<name>` (masks) and
    `time_wait_side` (code, -1 for none)."""
    out = facts.copy()
    out["open"] = _first_match(OPEN_RULES, out, params)
    out["close"] = _first_match(CLOSE_RULES, out, params)
    for rule in FLAG_RULES:
        out[f"flag_{rule.label}"] = np.asarray(rule.fn(out, params), dtype=bool)
    out["time_wait_side"] = TIME_WAIT_OF[out["close"]]
    return out


def flag_matrix(facts: Facts) -> np.ndarray:
    """One row per connection, one column per flag (taxonomy order): where the flag holds."""
    masks = [facts[f"flag_{flag}"] for flag in Flag]
    return np.column_stack(masks) if facts.count else np.zeros((0, len(masks)), bool)


def flag_lists(matrix: np.ndarray) -> pa.ListArray:
    """Per connection, its flags in taxonomy order."""
    rows, cols = np.nonzero(matrix)  # row-major: grouped by connection, flags in order
    return Grouped(rows, cols).named(len(matrix), FLAG_VALUES)


def label_names(codes: np.ndarray, values: tuple[str, ...]) -> pa.DictionaryArray:
    """Label codes as the written dictionary column (the whole vocabulary as dictionary)."""
    return pa.DictionaryArray.from_arrays(from_numpy(codes.astype(np.int8), mask=codes < 0), strings(values))
