"""Findings: what a rule says about one document."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Level(StrEnum):
    """How a rule's finding is treated: `enforce` denies, `warn` reports, `off` is silent."""

    ENFORCE = "enforce"
    WARN = "warn"
    OFF = "off"


@dataclass(slots=True, unsafe_hash=True, init=False)
class Finding:
    """One problem in one document.

    `path` is an RFC 6901 JSON Pointer into the document (``/spec/configPatches/1/patch/value/type``);
    adapters turn it into a file line or an admission message.
    """

    # `Final` fields with an explicit __init__ and __reduce__, not frozen: built by the dozen per review
    # (docs/compiled.md, "What the compiled modules may not use").

    rule: Final[str]
    slug: Final[str]
    level: Final[Level]
    path: Final[str]
    message: Final[str]
    fix: Final[str]
    fixable: Final[bool]
    role: Final[str]
    """The role of the ext_proc filter the finding is about (`epp`, `other`, `undecided`), when it is one."""
    role_why: Final[str]

    def __init__(
        self,
        rule: str,
        slug: str,
        level: Level,
        path: str,
        message: str,
        fix: str,
        fixable: bool,
        role: str = "",
        role_why: str = "",
    ) -> None:
        self.rule = rule
        self.slug = slug
        self.level = level
        self.path = path
        self.message = message
        self.fix = fix
        self.fixable = fixable
        self.role = role
        self.role_why = role_why

    def __reduce__(self) -> tuple[type[Finding], tuple[str, str, Level, str, str, str, bool, str, str]]:
        fields = (self.rule, self.slug, self.level, self.path, self.message, self.fix, self.fixable)
        return (Finding, (*fields, self.role, self.role_why))

    @property
    def enforced(self) -> bool:
        return self.level is Level.ENFORCE
