"""Fight detection: an object written back to the bad form after the reconciler fixed it.

Pure bookkeeping with the clock passed in. The reconciler tells `FightTracker` when it found an object
bad (`observe_bad`), when it fixed one (`record_fix`) and when one was clean (`observe_clean`). A bad object
whose resourceVersion differs from the one the fix produced was rewritten by someone: a revert, counted once
per fix (more rewrites while the reconciler waits undo nothing new, so they neither add Events nor lengthen
the back-off). From
`threshold` reverts on, the object is in a fight: each further fix waits an exponentially growing back-off,
so the reconciler and the other writer do not trade patches in a hot loop.

`find_writer` names that other writer from `metadata.managedFields`: the manager owning the fields the fix
changes (the deepest owner of each patched path; the newest entry breaks ties).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from policies import split_pointer

UNKNOWN_WRITER = "unknown"


class Verdict(StrEnum):
    FIX = "fix"
    FIGHT = "fight"  # a new revert made this a fight: report it, then wait
    WAIT = "wait"  # in back-off: leave the object alone for now


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reverts: int
    retry_at: float | None = None
    backoff_seconds: float = 0.0


@dataclass(slots=True)
class _State:
    fixed_version: str = ""
    reverts: int = 0
    counted_version: str = ""
    counted_fix: str = ""
    retry_at: float = 0.0
    backoff_seconds: float = 0.0


@dataclass(slots=True)
class FightTracker:
    threshold: int = 2
    backoff_initial_seconds: float = 30.0
    backoff_max_seconds: float = 3600.0
    _states: dict[str, _State] = field(default_factory=dict)

    def observe_bad(self, key: str, version: str, *, now: float) -> Decision:
        """The object needs a fix; may the reconciler write it now?"""
        state = self._states.get(key)
        if state is None:
            return Decision(Verdict.FIX, 0)
        new_revert = (
            bool(state.fixed_version)
            and state.counted_fix != state.fixed_version
            and version not in (state.fixed_version, state.counted_version)
        )
        if new_revert:
            state.reverts += 1
            state.counted_version = version
            state.counted_fix = state.fixed_version
            if state.reverts >= self.threshold:
                step = state.reverts - self.threshold
                state.backoff_seconds = min(
                    self.backoff_initial_seconds * (2**step), self.backoff_max_seconds
                )
                state.retry_at = now + state.backoff_seconds
                return Decision(Verdict.FIGHT, state.reverts, state.retry_at, state.backoff_seconds)
        if state.reverts >= self.threshold and now < state.retry_at:
            return Decision(Verdict.WAIT, state.reverts, state.retry_at, state.backoff_seconds)
        return Decision(Verdict.FIX, state.reverts)

    def record_fix(self, key: str, version: str) -> None:
        """The reconciler's patch produced `version`."""
        state = self._states.setdefault(key, _State())
        state.fixed_version = version

    def observe_clean(self, key: str, version: str) -> None:
        """Clean again; if someone else wrote it clean (the writer was fixed), the fight is over."""
        state = self._states.get(key)
        if state is not None and version != state.fixed_version:
            del self._states[key]

    def forget(self, key: str) -> None:
        """The object is gone."""
        self._states.pop(key, None)

    def in_backoff(self, *, now: float) -> int:
        return sum(1 for s in self._states.values() if s.reverts >= self.threshold and now < s.retry_at)

    def tracked(self) -> list[str]:
        """The objects with fight state (there is none for an object that was never fixed)."""
        return list(self._states)


@dataclass(frozen=True, slots=True)
class Writer:
    """A field manager of the object, as `managedFields` names it."""

    manager: str
    operation: str
    time: str

    def __str__(self) -> str:
        return f"{self.manager} ({self.operation})" if self.operation else self.manager


def _depth_owned(fields: Any, tokens: Sequence[str]) -> int:
    """How deep the manager's fieldsV1 owns the path: the full length when it owns the leaf or an
    atomic ancestor (an empty set, e.g. an atomic list), else 0."""
    node = fields
    for depth, token in enumerate(tokens):
        if not isinstance(node, Mapping):
            return 0
        if not node or set(node) == {"."}:
            return depth  # an atomic value at this level owns everything below
        child = node.get(f"f:{token}")
        if child is None:
            return 0
        node = child
    return len(tokens)


def find_writer(
    managed_fields: Iterable[Mapping[str, Any]], paths: Iterable[str], *, own_manager: str
) -> Writer | None:
    """The manager that owns the fields the fix changes, other than the reconciler itself."""
    token_lists = [split_pointer(path) for path in paths]
    best: tuple[int, str, Writer] | None = None
    fallback: tuple[str, Writer] | None = None
    for entry in managed_fields:
        manager = entry.get("manager")
        if not isinstance(manager, str) or not manager or manager == own_manager:
            continue
        if entry.get("subresource"):
            continue
        writer = Writer(manager, str(entry.get("operation") or ""), str(entry.get("time") or ""))
        if fallback is None or writer.time >= fallback[0]:
            fallback = (writer.time, writer)
        fields = entry.get("fieldsV1")
        score = sum(_depth_owned(fields, tokens) for tokens in token_lists)
        if score and (best is None or (score, writer.time) > (best[0], best[1])):
            best = (score, writer.time, writer)
    if best is not None:
        return best[2]
    return fallback[1] if fallback is not None else None
