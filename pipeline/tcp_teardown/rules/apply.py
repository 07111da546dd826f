"""Run the registered rules over the facts: one open, one close, the flags, TIME_WAIT side."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from tcp_teardown.facts import Params
from tcp_teardown.lists import as_series, grouped_list
from tcp_teardown.rules.registry import CLOSE_RULES, FLAG_RULES, OPEN_RULES, Rule
from tcp_teardown.vocab import Close, TimeWaitSide

TIME_WAIT_OF = {
    str(Close.FIN_BY_CLIENT): str(TimeWaitSide.CLIENT),
    str(Close.FIN_BY_SERVER): str(TimeWaitSide.SERVER),
    str(Close.FIN_SIMULTANEOUS): str(TimeWaitSide.BOTH),
}


def _first_match(rules: list[Rule], facts: pd.DataFrame, params: Params) -> np.ndarray:
    """The label of the first rule that holds, per connection (the chain's precedence)."""
    masks = [np.asarray(rule.fn(facts, params), dtype=bool) for rule in rules]
    labels = [str(rule.label) for rule in rules]
    decided = np.select(masks, labels, default="")
    if len(decided) and (decided == "").any():
        kind = rules[0].label.__class__.__name__
        raise AssertionError(f"{int((decided == '').sum())} connections matched no {kind} rule")
    return decided.astype(object)


def apply_rules(facts: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Facts plus the label columns `open`, `close`, `flags` (list) and `time_wait_side`."""
    out = facts.copy()
    out["open"] = _first_match(OPEN_RULES, out, params)
    out["close"] = _first_match(CLOSE_RULES, out, params)
    flag_masks = {str(rule.label): np.asarray(rule.fn(out, params), dtype=bool) for rule in FLAG_RULES}
    out["flags"] = _flag_lists(flag_masks, len(out))
    for name, mask in flag_masks.items():
        out[f"flag_{name}"] = mask
    out["time_wait_side"] = out["close"].map(TIME_WAIT_OF)
    return out


def _flag_lists(masks: dict[str, np.ndarray], count: int) -> pd.Series:
    """Per connection, its flags in taxonomy order."""
    names = np.array(list(masks), dtype=object)
    matrix = np.column_stack(list(masks.values())) if masks and count else np.zeros((count, 0), bool)
    rows, cols = np.nonzero(matrix)  # row-major: grouped by connection, flags in order
    return as_series(grouped_list(rows, pa.array(names[cols].tolist(), pa.string()), count))
