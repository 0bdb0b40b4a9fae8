"""The rules, in id order. Each is a pure `check` (findings) and `fix` (JSON Patch operations)."""

from __future__ import annotations

from typing import Final

from policies.rules.base import Rule, Violation
from policies.rules.cluster import EPX003, EPX005, EPX006, EPX007, EPX010
from policies.rules.failure import EPX009
from policies.rules.modes import EPX002, EPX004, EPX011, EPX013, EPX014, EPX015
from policies.rules.operation import EPX001, EPX012
from policies.rules.role import EPX016
from policies.rules.schema import EPX008

RULES: Final[tuple[Rule, ...]] = (
    EPX001, EPX002, EPX003, EPX004, EPX005, EPX006, EPX007,
    EPX008, EPX009, EPX010, EPX011, EPX012, EPX013, EPX014, EPX015, EPX016,
)  # fmt: skip

__all__ = ["RULES", "Rule", "Violation"]
