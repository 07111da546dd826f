"""Label rules: `open_rules`, `close_rules`, `flag_rules`, one small function per label."""

from tcp_teardown.rules import close_rules, flag_rules, open_rules  # noqa: F401  (registration)
from tcp_teardown.rules.apply import apply_rules
from tcp_teardown.rules.registry import CLOSE_RULES, FLAG_RULES, OPEN_RULES, check_complete

check_complete()

__all__ = ["CLOSE_RULES", "FLAG_RULES", "OPEN_RULES", "apply_rules"]
