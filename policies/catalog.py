"""The rule catalogue: stable ids, slugs and default levels (the implementations live in `policies.rules`)."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from policies.findings import Level


@dataclass(frozen=True, slots=True)
class RuleInfo:
    id: str
    slug: str
    default_level: Level
    summary: str


CATALOG: Final = (
    RuleInfo("EPX001", "ext-proc-operation", Level.ENFORCE, "ext_proc is inserted instead of REPLACEd"),
    RuleInfo("EPX002", "body-mode-streamed", Level.ENFORCE, "a body mode outside the allowed set"),
    RuleInfo("EPX003", "epp-cluster-dns", Level.ENFORCE, "the EPP cluster resolves DNS"),
    RuleInfo("EPX004", "header-mode-global", Level.ENFORCE, "request headers sent globally, not per route"),
    RuleInfo("EPX005", "epp-cluster-http2", Level.ENFORCE, "the EPP cluster does not speak HTTP/2"),
    RuleInfo("EPX006", "epp-clusterip-stale", Level.ENFORCE, "the pinned ClusterIP is not the live one"),
    RuleInfo("EPX007", "grpc-cluster-ref", Level.ENFORCE, "grpc_service names no defined cluster or port"),
    RuleInfo("EPX008", "envoy-schema", Level.ENFORCE, "a value does not parse as its Envoy proto"),
    RuleInfo("EPX009", "failure-mode-allow", Level.WARN, "failure_mode_allow hides a broken EPP"),
    RuleInfo("EPX010", "epp-cluster-tls", Level.ENFORCE, "the EPP cluster's TLS does not match the profile"),
    RuleInfo("EPX011", "processing-mode-partial", Level.ENFORCE, "a processing_mode leaves fields unset"),
    RuleInfo("EPX012", "replace-target-missing", Level.WARN, "REPLACE with no sign the filter exists"),
    RuleInfo("EPX013", "body-mode-profile", Level.ENFORCE, "the body mode does not suit the profile's EPP"),
    RuleInfo("EPX014", "full-duplex-trailers", Level.ENFORCE, "FULL_DUPLEX without trailer mode SEND"),
    RuleInfo("EPX015", "mode-override-ignored", Level.WARN, "allow_mode_override ignored in FULL_DUPLEX"),
    RuleInfo("EPX016", "ext-proc-role-undecided", Level.WARN, "nothing says whether a filter is the EPP's"),
)

RULE_IDS: Final = tuple(info.id for info in CATALOG)
SLUG_TO_ID: Final = MappingProxyType({info.slug: info.id for info in CATALOG})
