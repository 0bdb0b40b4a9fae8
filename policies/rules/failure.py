"""EPX009 failure-mode-allow: a setting that hides a broken EPP."""

from __future__ import annotations

from collections.abc import Iterator

from policies.rules.base import Rule, Violation, for_role
from policies.spelling import find_key
from policies.subject import Subject


def check_failure_mode(subject: Subject) -> Iterator[Violation]:
    for piece in subject.epp.filters:
        if piece.config is None:
            continue
        key = find_key(piece.config, "failure_mode_allow")
        if key is None or piece.config[key] is not True:
            continue
        yield for_role(
            subject,
            piece,
            Violation(
                path=f"{piece.config_path}/{key}",
                message=(
                    "failure_mode_allow is true: when the EPP is down or unreachable traffic still flows but "
                    "nobody picks an endpoint, so the breakage hides; set it false unless that is intended"
                ),
                fix="set failure_mode_allow false (or accept the risk)",
                fixable=False,
            ),
            envoy_rejects=False,
        )


EPX009 = Rule("EPX009", "failure-mode-allow", check_failure_mode)
