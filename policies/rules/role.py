"""EPX016 ext-proc-role-undecided: an ext_proc filter nobody has said is, or is not, the EPP's."""

from __future__ import annotations

from collections.abc import Iterator

from policies.pieces import FilterPiece, RoutePiece
from policies.role import MARK_HINT, Role
from policies.rules.base import Rule, Violation
from policies.subject import Subject


def check_role_undecided(subject: Subject) -> Iterator[Violation]:
    pieces: list[tuple[FilterPiece | RoutePiece, str]] = [
        (piece, piece.patch.path + "/patch/value") for piece in subject.pieces.filters
    ]
    pieces += [(route, route.path) for route in subject.pieces.routes]
    for piece, path in pieces:
        decision = subject.role_of(piece)
        if decision.role is not Role.UNDECIDED:
            continue
        yield Violation(
            path=path,
            message=(
                f"cannot tell whether this ext_proc filter is the gateway's path to its Endpoint Picker "
                f"({decision.why}), so the EPP rules do not judge it and nothing is changed; {MARK_HINT}"
            ),
            fix="annotate extproc-guard.io/role: epp or other",
            fixable=False,
            role=decision,
        )


EPX016 = Rule("EPX016", "ext-proc-role-undecided", check_role_undecided)
