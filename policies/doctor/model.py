"""The doctor's results: a verdict, the causes ranked best first, and the counters that prove them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from policies.profile import ProfileName

DEFAULT_EPP_CLUSTER = "epp-cluster"

Evidence = Mapping[str, int | str]
"""Counters (by their full Envoy names, or `cluster::host::stat` from /clusters) and their values."""


class Verdict(StrEnum):
    HEALTHY = "healthy"
    BROKEN = "broken"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DoctorSettings:
    """What the caller knows about the path: the EPP cluster's name, the profile, the gateway's HCM.

    `stat_prefix` picks the gateway's HTTP connection manager; None lets the doctor find it (the one that
    runs ext_proc, else every one that is not the admin's or the Istio proxy's own).
    """

    epp_cluster: str = DEFAULT_EPP_CLUSTER
    profile: ProfileName = ProfileName.HEADERS_EPP
    stat_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class Cause:
    """One explanation of the failure; `score` (0..1) says how well the counters fit it.

    `rule` is the id of the policy rule that prevents the cause, or None when no rule does (a cause past
    the ext_proc stream, like an EPP with no endpoint to pick).
    """

    rule: str | None
    cause: str
    evidence: Evidence
    fix: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "cause": self.cause, "evidence": dict(self.evidence), "fix": self.fix}


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The verdict on one window of counters. `evidence` backs a healthy or unknown verdict."""

    verdict: Verdict
    summary: str
    causes: tuple[Cause, ...] = ()
    evidence: Evidence = field(default_factory=lambda: MappingProxyType({}))
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "causes": [cause.to_json() for cause in self.causes]}
