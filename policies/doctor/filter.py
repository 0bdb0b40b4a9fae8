"""What the doctor learns from an EnvoyFilter: the EPP cluster's name and the profile it was written for."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policies.pieces import EXT_PROC_TYPE
from policies.profile import ProfileName
from policies.spelling import get_field

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"


@dataclass(frozen=True, slots=True)
class FilterFacts:
    """The parts of an EnvoyFilter the doctor uses to read Envoy's counters."""

    name: str
    cluster_name: str | None
    request_body_mode: str | None
    failure_mode_allow: bool
    cluster_tls: bool
    profile: ProfileName


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _patch_values(document: Mapping[str, Any], apply_to: str) -> Iterable[Mapping[str, Any]]:
    patches = get_field(_mapping(document.get("spec")), "config_patches")
    for patch in patches if isinstance(patches, list) else []:
        patch = _mapping(patch)
        if get_field(patch, "apply_to") == apply_to:
            yield _mapping(_mapping(patch.get("patch")).get("value"))


def _ext_proc_config(document: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for value in _patch_values(document, "HTTP_FILTER"):
        config = _mapping(get_field(value, "typed_config"))
        if value.get("name") == EXT_PROC_FILTER or config.get("@type") == EXT_PROC_TYPE:
            return config
    return None


def read_filter_facts(document: Mapping[str, Any]) -> FilterFacts | None:
    """The facts of an EnvoyFilter with an ext_proc patch, or None when it has none."""
    if document.get("kind") != "EnvoyFilter":
        return None
    config = _ext_proc_config(document)
    if config is None:
        return None
    grpc = _mapping(get_field(config, "grpc_service"))
    cluster_name = get_field(_mapping(get_field(grpc, "envoy_grpc")), "cluster_name")
    mode = _mapping(get_field(config, "processing_mode"))
    body_mode = get_field(mode, "request_body_mode")
    cluster_tls = False
    for value in _patch_values(document, "CLUSTER"):
        if cluster_name is not None and value.get("name") == cluster_name:
            cluster_tls = bool(get_field(value, "transport_socket"))
    body = str(body_mode) if body_mode is not None else None
    profile = (
        ProfileName.GIE_EPP if cluster_tls or body == "FULL_DUPLEX_STREAMED" else ProfileName.HEADERS_EPP
    )
    return FilterFacts(
        name=str(_mapping(document.get("metadata")).get("name", "")),
        cluster_name=str(cluster_name) if isinstance(cluster_name, str) and cluster_name else None,
        request_body_mode=body,
        failure_mode_allow=get_field(config, "failure_mode_allow") is True,
        cluster_tls=cluster_tls,
        profile=profile,
    )
