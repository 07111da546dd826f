"""The label registry: one documented function per label, checked against the vocabulary.

A rule takes the per-connection facts (and, for closes and flags, the decided `open` /
`close` columns) and returns a boolean mask over connections. Its name is the label;
the first line of its docstring is the taxonomy's sentence, shown by `tcp-teardown labels`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from tcp_teardown.facts import Facts, Params
from tcp_teardown.vocab import Close, Flag, Open

RuleFn = Callable[[Facts, Params], np.ndarray]


@dataclass(frozen=True)
class Rule:
    label: StrEnum
    fn: RuleFn

    @property
    def summary(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0]


OPEN_RULES: list[Rule] = []
CLOSE_RULES: list[Rule] = []
FLAG_RULES: list[Rule] = []


def _register(kind: type[StrEnum], into: list[Rule]) -> Callable[[RuleFn], RuleFn]:
    def decorate(fn: RuleFn) -> RuleFn:
        try:
            label = kind(fn.__name__)
        except ValueError:
            raise TypeError(f"rule {fn.__name__!r} is not a {kind.__name__} label of the taxonomy") from None
        if not (fn.__doc__ or "").strip():
            raise TypeError(f"rule {fn.__name__!r} has no docstring (its taxonomy sentence)")
        if any(r.label == label for r in into):
            raise TypeError(f"rule {fn.__name__!r} registered twice")
        into.append(Rule(label, fn))
        return fn

    return decorate


open_rule = _register(Open, OPEN_RULES)
close_rule = _register(Close, CLOSE_RULES)
flag_rule = _register(Flag, FLAG_RULES)


def any_of(values: np.ndarray, codes: list[int] | tuple[int, ...]) -> np.ndarray:
    """Where `values` is one of a few label `codes` (np.isin, but one comparison per code:
    np.isin sorts, which costs more than a handful of comparisons)."""
    found = np.zeros(np.shape(values), dtype=bool)
    for c in codes:
        found |= values == c
    return found


def check_complete() -> None:
    """Every label of the vocabulary has exactly one rule (called once all rules are imported)."""
    for kind, rules in ((Open, OPEN_RULES), (Close, CLOSE_RULES), (Flag, FLAG_RULES)):
        missing = set(kind) - {r.label for r in rules}
        if missing:
            raise TypeError(f"labels without a rule: {sorted(missing)}")
    FLAG_RULES.sort(key=lambda r: list(Flag).index(r.label))
