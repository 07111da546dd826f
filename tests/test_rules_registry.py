"""The rule registry: one documented rule per label of the vocabulary, nothing else."""

from __future__ import annotations

import pytest

from tcp_teardown.rules import CLOSE_RULES, FLAG_RULES, OPEN_RULES
from tcp_teardown.rules.registry import flag_rule
from tcp_teardown.vocab import Close, Flag, Open


@pytest.mark.parametrize(("kind", "rules"), [(Open, OPEN_RULES), (Close, CLOSE_RULES), (Flag, FLAG_RULES)])
def test_every_label_has_exactly_one_documented_rule(kind, rules) -> None:
    assert sorted(str(r.label) for r in rules) == sorted(str(v) for v in kind)
    assert all(r.summary for r in rules)


def test_flags_are_in_taxonomy_order() -> None:
    assert [r.label for r in FLAG_RULES] == list(Flag)


def test_unknown_rule_name_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match="not a Flag label"):
        @flag_rule
        def dangling_fin(f, p):  # pragma: no cover - never called
            """Not in the taxonomy."""


def test_undocumented_rule_is_refused() -> None:
    with pytest.raises(TypeError, match="no docstring"):
        @flag_rule
        def idle_close(f, p):  # pragma: no cover - never called
            return None
