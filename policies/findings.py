"""Findings: what a rule says about one document."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    """How a rule's finding is treated: `enforce` denies, `warn` reports, `off` is silent."""

    ENFORCE = "enforce"
    WARN = "warn"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem in one document.

    `path` is an RFC 6901 JSON Pointer into the document (``/spec/configPatches/1/patch/value/type``);
    adapters turn it into a file line or an admission message.
    """

    rule: str
    slug: str
    level: Level
    path: str
    message: str
    fix: str
    fixable: bool
    role: str = ""
    """The role of the ext_proc filter the finding is about (`epp`, `other`, `undecided`), when it is one."""
    role_why: str = ""

    @property
    def enforced(self) -> bool:
        return self.level is Level.ENFORCE
