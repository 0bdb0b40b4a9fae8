"""What every rule is: an id, a slug, a pure `check` and a pure `fix` over a `Subject`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from policies.findings import Level
from policies.patch import OpName, PatchOp, escape_token
from policies.role import Role, RoleDecision
from policies.spelling import Spelling, choose_key
from policies.subject import Piece, Subject


@dataclass(slots=True, unsafe_hash=True, init=False)
class Violation:
    """A rule's finding before the policy gives it a level.

    `cap` lowers the policy's level (a finding that must not deny, e.g. about another user's filter);
    `role` is the role of the ext_proc piece it is about.
    """

    # `Final` fields with an explicit __init__ and __reduce__, not frozen: built by the dozen per review
    # (docs/compiled.md, "What the compiled modules may not use").

    path: Final[str]
    message: Final[str]
    fix: Final[str]
    fixable: Final[bool]
    cap: Final[Level | None]
    role: Final[RoleDecision | None]

    def __init__(
        self,
        path: str,
        message: str,
        fix: str,
        fixable: bool,
        cap: Level | None = None,
        role: RoleDecision | None = None,
    ) -> None:
        self.path = path
        self.message = message
        self.fix = fix
        self.fixable = fixable
        self.cap = cap
        self.role = role

    def __reduce__(
        self,
    ) -> tuple[type[Violation], tuple[str, str, str, bool, Level | None, RoleDecision | None]]:
        fields = (self.path, self.message, self.fix, self.fixable, self.cap, self.role)
        return (Violation, fields)


def for_role(subject: Subject, piece: Piece, violation: Violation, *, envoy_rejects: bool) -> Violation:
    """A violation about `piece`, adjusted to its role: only the EPP's pieces are fixable, and another
    user's piece is denied only for what Envoy itself rejects or cannot run (`envoy_rejects`)."""
    decision = subject.role_of(piece)
    epp = decision.role is Role.EPP
    cap = violation.cap if epp or envoy_rejects else Level.WARN
    return Violation(
        path=violation.path,
        message=violation.message,
        fix=violation.fix,
        fixable=violation.fixable and epp,
        cap=cap,
        role=decision,
    )


Check = Callable[[Subject], Iterable[Violation]]
Fix = Callable[[Subject], Iterable[PatchOp]]


def fix_nothing(subject: Subject) -> Iterable[PatchOp]:
    """The fix of a rule that only reports."""
    return ()


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    slug: str
    check: Check
    fix: Fix = fix_nothing


def set_field(
    parent_path: str, parent: Mapping[str, Any], snake: str, value: Any, spelling: Spelling
) -> PatchOp:
    """Set the Envoy field `snake` of `parent` (at `parent_path`), keeping the spelling in use."""
    key = choose_key(parent, snake, spelling)
    op: OpName = "replace" if key in parent else "add"
    return PatchOp(op, f"{parent_path}/{escape_token(key)}", value)


def set_key(parent_path: str, parent: Mapping[str, Any], key: str, value: Any) -> PatchOp:
    """Set a literal key (Istio's own fields have one spelling)."""
    op: OpName = "replace" if key in parent else "add"
    return PatchOp(op, f"{parent_path}/{escape_token(key)}", value)


def spell_tree(value: Any, spelling: Spelling) -> Any:
    """A snake_case Envoy value rewritten in `spelling` (keys with dots or `@` are names, kept as is)."""
    if spelling is Spelling.SNAKE:
        return value
    if isinstance(value, Mapping):
        return {
            (k if "." in k or k.startswith("@") else spelling.key(k)): spell_tree(v, spelling)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [spell_tree(v, spelling) for v in value]
    return value
