"""Whose ext_proc filter is this? The role of every ext_proc filter and per-route override.

The EPP rules judge only the gateway's path to its Endpoint Picker. Other ext_proc users (body-based
routing, activators, semantic routers, sidecar processors, auth processors) are never mutated, and only
what Envoy itself rejects or cannot run is denied for them. A role is decided, first answer wins, from:

1. the annotation `extproc-guard.io/role: epp | other` on the EnvoyFilter;
2. the policy file: `roles.epp_services` / `roles.other_services` (NAMESPACE/NAME of the Service the
   filter's cluster reaches) and `roles.epp_filter_names` / `roles.other_filter_names`;
3. an InferencePool whose endpoint picker (`endpointPickerRef`, or v1alpha2 `extensionRef`) is that Service;
4. a Service given for this run with `--service` (or a Service the webhook was told about) that the
   filter's cluster reaches;
5. the heuristic, in this order: a sidecar context (`SIDECAR_INBOUND`, `SIDECAR_OUTBOUND`) or a
   `google_grpc` service is `other` (a gateway reaches its EPP with `envoy_grpc`); a filter, cluster,
   Service or EnvoyFilter name (the EnvoyFilter's only when it installs one ext_proc filter) with a token
   of another known ext_proc user (`bbr`, `body-based`, `activator`, `semantic-router`,
   `payload-processor`, `authz`) is `other`; one with an EPP token (`epp`,
   `endpoint-picker`, `picker`, `inference-scheduler`, `inference-scheduling`) is `epp`; a filter whose
   own name is not the policy's `filter_name` (e.g. `envoy.filters.http.ext_proc.custom`) is `other`;
6. otherwise the role is undecided: the filter is reported with a warning that says how to mark it, and
   nothing is changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Final

from policies.context import Context
from policies.model import EnvoyFilter
from policies.policy import Policy
from policies.resolver import ServiceRef

ROLE_ANNOTATION: Final = "extproc-guard.io/role"
SIDECAR_CONTEXTS: Final = frozenset({"SIDECAR_INBOUND", "SIDECAR_OUTBOUND"})
EPP_WORDS: Final = ("epp", "endpoint-picker", "picker", "inference-scheduler", "inference-scheduling")
OTHER_WORDS: Final = ("bbr", "body-based", "activator", "semantic-router", "payload-processor", "authz")
_SPLIT: Final = re.compile(r"[^a-z0-9]+")


class Role(StrEnum):
    EPP = "epp"
    OTHER = "other"
    UNDECIDED = "undecided"


@dataclass(frozen=True, slots=True)
class RoleDecision:
    """A role and the one-line reason for it (shown in findings and JSON output)."""

    role: Role
    why: str


@dataclass(frozen=True, slots=True)
class Reach:
    """Where an ext_proc filter's gRPC service goes, as far as the document and the context tell."""

    service: ServiceRef | None
    """The Service the cluster (or target URI) reaches, when known."""
    how: str
    """How that Service was found, for messages (``cluster 'epp' -> host epp.ns.svc.cluster.local``)."""
    cluster_name: str | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the role of one ext_proc filter or per-route override is decided from."""

    envoy_filter: EnvoyFilter
    filter_name: str | None
    """The filter's own name (or the per-route entry's key)."""
    match_context: str | None
    uses_google_grpc: bool
    reach: Reach
    names_document: bool = True
    """Whether the EnvoyFilter's name speaks for this piece: false when the document installs several ext_proc
    filters (its name cannot tell which of them it is about)."""


MARK_HINT: Final = (
    f"mark it with the annotation {ROLE_ANNOTATION}: epp (the gateway's path to its Endpoint Picker) or "
    f"{ROLE_ANNOTATION}: other, or list its Service under roles.epp_services in the policy"
)


def decide_role(candidate: Candidate, *, policy: Policy, context: Context) -> RoleDecision:
    """The role of one ext_proc filter or override; see the module docstring for the order."""
    marked = annotated_role(candidate.envoy_filter)
    if marked is not None:
        return marked
    by_policy = _from_policy(candidate, policy)
    if by_policy is not None:
        return by_policy
    service = candidate.reach.service
    if service is not None:
        pool = context.pool_of(service)
        if pool is not None:
            return RoleDecision(
                Role.EPP,
                f"{candidate.reach.how}: Service {service} is the endpoint picker of InferencePool {pool}",
            )
        if service in context.declared:
            return RoleDecision(Role.EPP, f"{candidate.reach.how}: Service {service} was given as the EPP's")
    return _heuristic(candidate, policy)


def annotated_role(envoy_filter: EnvoyFilter) -> RoleDecision | None:
    """The role the EnvoyFilter's annotation gives all its ext_proc pieces (an invalid value: undecided)."""
    value = envoy_filter.annotations.get(ROLE_ANNOTATION)
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in (Role.EPP, Role.OTHER):
        return RoleDecision(Role(text), f"annotation {ROLE_ANNOTATION}: {text}")
    return RoleDecision(
        Role.UNDECIDED, f"annotation {ROLE_ANNOTATION} is {value!r}, which is neither 'epp' nor 'other'"
    )


def _from_policy(candidate: Candidate, policy: Policy) -> RoleDecision | None:
    roles = policy.roles
    service = candidate.reach.service
    if service is not None:
        if str(service) in roles.epp_services:
            return RoleDecision(
                Role.EPP, f"{candidate.reach.how}: Service {service} is in roles.epp_services"
            )
        if str(service) in roles.other_services:
            return RoleDecision(
                Role.OTHER, f"{candidate.reach.how}: Service {service} is in roles.other_services"
            )
    name = candidate.filter_name
    if name is not None and name in roles.epp_filter_names:
        return RoleDecision(Role.EPP, f"filter name {name} is in roles.epp_filter_names")
    if name is not None and name in roles.other_filter_names:
        return RoleDecision(Role.OTHER, f"filter name {name} is in roles.other_filter_names")
    return None


@lru_cache(maxsize=1024)
def _dashed(name: str) -> str:
    """`name` lower-cased as `-word-word-`, so a word matches only whole (names repeat across documents)."""
    return "-" + "-".join(part for part in _SPLIT.split(name.lower()) if part) + "-"


def _has_word(names: list[str], words: tuple[str, ...]) -> str | None:
    for name in names:
        dashed = _dashed(name)
        for word in words:
            if f"-{word}-" in dashed:
                return name
    return None


def _heuristic(candidate: Candidate, policy: Policy) -> RoleDecision:
    context = candidate.match_context
    if context in SIDECAR_CONTEXTS:
        return RoleDecision(
            Role.OTHER, f"heuristic: context {context} (a sidecar's ext_proc, not a gateway's)"
        )
    if candidate.uses_google_grpc:
        return RoleDecision(
            Role.OTHER, "heuristic: google_grpc service (a gateway reaches its EPP through envoy_grpc)"
        )
    reach = candidate.reach
    name = candidate.filter_name
    names = [n for n in (name, reach.cluster_name, reach.service.name if reach.service else None) if n]
    if candidate.names_document:
        names.append(candidate.envoy_filter.name)
    other = _has_word(names, OTHER_WORDS)
    if other is not None:
        return RoleDecision(Role.OTHER, f"heuristic: {other!r} names another ext_proc user")
    epp = _has_word(names, EPP_WORDS)
    if epp is not None:
        return RoleDecision(Role.EPP, f"heuristic: {epp!r} names an endpoint picker")
    if name is not None and name != policy.filter_name:
        return RoleDecision(
            Role.OTHER, f"heuristic: the filter is named {name}, not the EPP's {policy.filter_name}"
        )
    return RoleDecision(Role.UNDECIDED, "nothing says whose ext_proc filter this is")
