"""What the doctor learns from an EnvoyFilter: the EPP cluster's name and the profile it was written for.

The EPP cluster is where Envoy sends the ext_proc streams: the cluster a per-route `ExtProcPerRoute`
override names (`overrides.grpc_service`), when there is one, else the filter's own `grpc_service`. Istio's
InferencePool support works that way: its listener-level filter names a placeholder, and each route to a
pool names the EPP Service's `outbound|PORT||FQDN` cluster in its override.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies.pieces import EXT_PROC_TYPE, PER_ROUTE_TYPE
from policies.profile import ProfileName
from policies.spelling import get_field

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
_ROUTE_PATCHES = ("HTTP_ROUTE", "VIRTUAL_HOST")


@dataclass(frozen=True, slots=True)
class FilterFacts:
    """The parts of an ext_proc configuration the doctor uses to read Envoy's counters."""

    name: str
    cluster_name: str | None
    request_body_mode: str | None
    failure_mode_allow: bool
    cluster_tls: bool
    profile: ProfileName
    route_override: bool = False  # the cluster was named by a per-route override, not by the filter
    other_clusters: tuple[str, ...] = ()  # further EPP clusters other routes' overrides name


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _patch_values(document: Mapping[str, Any], *apply_to: str) -> Iterable[Mapping[str, Any]]:
    patches = get_field(_mapping(document.get("spec")), "config_patches")
    for patch in patches if isinstance(patches, list) else []:
        patch = _mapping(patch)
        if get_field(patch, "apply_to") in apply_to:
            yield _mapping(_mapping(patch.get("patch")).get("value"))


def _ext_proc_config(document: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for value in _patch_values(document, "HTTP_FILTER"):
        config = _mapping(get_field(value, "typed_config"))
        if value.get("name") == EXT_PROC_FILTER or config.get("@type") == EXT_PROC_TYPE:
            return config
    return None


def per_route_overrides(typed_per_filter_config: Any, filter_names: Iterable[str]) -> list[Mapping[str, Any]]:
    """The `overrides` of the ext_proc per-route configs in one `typed_per_filter_config` mapping."""
    found = []
    names = set(filter_names)
    for key, entry in _mapping(typed_per_filter_config).items():
        entry = _mapping(entry)
        if key in names or entry.get("@type") == PER_ROUTE_TYPE:
            overrides = _mapping(entry.get("overrides"))
            if overrides:
                found.append(overrides)
    return found


def grpc_cluster(config: Mapping[str, Any]) -> str | None:
    """`grpc_service.envoy_grpc.cluster_name` of a filter config or an override, if set."""
    grpc = _mapping(get_field(config, "grpc_service"))
    name = get_field(_mapping(get_field(grpc, "envoy_grpc")), "cluster_name")
    return name if isinstance(name, str) and name else None


def combine_facts(
    *,
    name: str,
    filter_config: Mapping[str, Any] | None,
    overrides: Sequence[Mapping[str, Any]],
    cluster_tls: Mapping[str, bool],
) -> FilterFacts:
    """Facts from the filter's config and the route overrides that apply to it (overrides win)."""
    config = filter_config or {}
    named = [cluster for cluster in (grpc_cluster(o) for o in overrides) if cluster]
    ranked = [cluster for cluster, _ in Counter(named).most_common()]
    cluster_name = ranked[0] if ranked else grpc_cluster(config)
    chosen = next(
        (o for o in overrides if grpc_cluster(o) == cluster_name), overrides[0] if overrides else {}
    )
    mode = _mapping(get_field(chosen, "processing_mode")) or _mapping(get_field(config, "processing_mode"))
    body_mode = get_field(mode, "request_body_mode")
    allow = get_field(chosen, "failure_mode_allow")
    if allow is None:
        allow = get_field(config, "failure_mode_allow")
    tls = bool(cluster_name and cluster_tls.get(cluster_name))
    body = str(body_mode) if body_mode is not None else None
    profile = ProfileName.GIE_EPP if tls or body == "FULL_DUPLEX_STREAMED" else ProfileName.HEADERS_EPP
    return FilterFacts(
        name=name,
        cluster_name=cluster_name,
        request_body_mode=body,
        failure_mode_allow=allow is True,
        cluster_tls=tls,
        profile=profile,
        route_override=bool(ranked),
        other_clusters=tuple(ranked[1:]),
    )


def read_filter_facts(document: Mapping[str, Any]) -> FilterFacts | None:
    """The facts of an EnvoyFilter with an ext_proc filter or per-route override patch, else None."""
    if document.get("kind") != "EnvoyFilter":
        return None
    config = _ext_proc_config(document)
    overrides = [
        override
        for value in _patch_values(document, *_ROUTE_PATCHES)
        for override in per_route_overrides(get_field(value, "typed_per_filter_config"), [EXT_PROC_FILTER])
    ]
    if config is None and not overrides:
        return None
    cluster_tls = {
        str(value.get("name")): bool(get_field(value, "transport_socket"))
        for value in _patch_values(document, "CLUSTER")
    }
    return combine_facts(
        name=str(_mapping(document.get("metadata")).get("name", "")),
        filter_config=config,
        overrides=overrides,
        cluster_tls=cluster_tls,
    )
