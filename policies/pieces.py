"""Finding the ext_proc pieces of an EnvoyFilter: the filter, the EPP cluster and per-route overrides."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from policies.model import ConfigPatch, EnvoyFilter, as_mapping
from policies.patch import pointer
from policies.spelling import Spelling, detect_spelling, find_key, get_field, get_mapping

EXT_PROC_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
PER_ROUTE_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
ROUTE_TARGETS: Final = frozenset({"HTTP_ROUTE", "VIRTUAL_HOST"})


def type_name(value: Mapping[str, Any]) -> str:
    """The `@type` of an Any-shaped mapping, without the URL prefix."""
    type_url = value.get("@type")
    return type_url.rsplit("/", 1)[-1] if isinstance(type_url, str) else ""


def is_ip_address(host: Any) -> bool:
    if not isinstance(host, str):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ModeSite:
    """One processing_mode: the filter's own (global) or a per-route override's."""

    path: str
    """Pointer to the processing_mode mapping (it may not exist yet)."""
    parent_path: str
    """Pointer to the mapping that holds (or would hold) processing_mode."""
    parent: Mapping[str, Any]
    mode: Mapping[str, Any] | None
    is_global: bool


@dataclass(frozen=True, slots=True)
class FilterPiece:
    """An HTTP_FILTER patch that installs ext_proc."""

    patch: ConfigPatch
    config: Mapping[str, Any] | None
    """The ExternalProcessor (`typed_config` without its `@type`); None if missing or not a mapping."""
    config_path: str

    @property
    def cluster_name(self) -> str | None:
        if self.config is None:
            return None
        grpc = get_mapping(self.config, "grpc_service")
        envoy_grpc = get_mapping(grpc, "envoy_grpc") if grpc is not None else None
        name = get_field(envoy_grpc, "cluster_name") if envoy_grpc is not None else None
        return name if isinstance(name, str) else None

    @property
    def cluster_name_path(self) -> str:
        config = self.config or {}
        grpc = get_mapping(config, "grpc_service") or {}
        envoy_grpc = get_mapping(grpc, "envoy_grpc") or {}
        return "/".join(
            (
                self.config_path,
                find_key(config, "grpc_service") or "grpc_service",
                find_key(grpc, "envoy_grpc") or "envoy_grpc",
                find_key(envoy_grpc, "cluster_name") or "cluster_name",
            )
        )

    @property
    def mode_site(self) -> ModeSite | None:
        if self.config is None:
            return None
        key = find_key(self.config, "processing_mode")
        mode = self.config.get(key) if key else None
        return ModeSite(
            path=f"{self.config_path}/{key or 'processing_mode'}",
            parent_path=self.config_path,
            parent=self.config,
            mode=mode if isinstance(mode, Mapping) else None,
            is_global=True,
        )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One `socket_address` of a cluster's load_assignment."""

    path: str
    socket: Mapping[str, Any]

    @property
    def address(self) -> Any:
        return self.socket.get("address")

    @property
    def address_path(self) -> str:
        return self.path + "/address"

    @property
    def port(self) -> Any:
        return get_field(self.socket, "port_value")


@dataclass(frozen=True, slots=True)
class ClusterPiece:
    """The CLUSTER patch (operation ADD) that defines a cluster ext_proc names."""

    patch: ConfigPatch
    value: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.value.get("name") or "")

    @property
    def path(self) -> str:
        return self.patch.value_path

    @property
    def cluster_type(self) -> str:
        """The discovery type; Envoy's default (unset) is STATIC."""
        value = self.value.get("type")
        return value if isinstance(value, str) else "STATIC"

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        key = find_key(self.value, "load_assignment")
        assignment = self.value.get(key) if key else None
        if not isinstance(assignment, Mapping):
            return ()
        found: list[Endpoint] = []
        base = f"{self.path}/{key}"
        eps_key = find_key(assignment, "endpoints")
        localities = assignment.get(eps_key) if eps_key else None
        if not isinstance(localities, list):
            return ()
        for i, locality in enumerate(localities):
            lb_key = find_key(as_mapping(locality), "lb_endpoints")
            lb_endpoints = as_mapping(locality).get(lb_key) if lb_key else None
            if not isinstance(lb_endpoints, list):
                continue
            for j, lb_endpoint in enumerate(lb_endpoints):
                endpoint = as_mapping(as_mapping(lb_endpoint).get("endpoint"))
                address = as_mapping(endpoint.get("address"))
                sock_key = find_key(address, "socket_address")
                socket = address.get(sock_key) if sock_key else None
                if isinstance(socket, Mapping):
                    found.append(
                        Endpoint(f"{base}/{eps_key}/{i}/{lb_key}/{j}/endpoint/address/{sock_key}", socket)
                    )
        return tuple(found)


@dataclass(frozen=True, slots=True)
class RoutePiece:
    """An ExtProcPerRoute entry in an HTTP_ROUTE / VIRTUAL_HOST patch's `typed_per_filter_config`."""

    patch: ConfigPatch
    entry: Mapping[str, Any]
    path: str

    @property
    def disabled(self) -> bool:
        return get_field(self.entry, "disabled") is True

    @property
    def overrides(self) -> Mapping[str, Any] | None:
        return get_mapping(self.entry, "overrides")

    @property
    def mode_site(self) -> ModeSite | None:
        overrides = self.overrides
        if overrides is None:
            return None
        over_key = find_key(self.entry, "overrides")
        key = find_key(overrides, "processing_mode")
        if key is None:
            return None
        mode = overrides.get(key)
        return ModeSite(
            path=f"{self.path}/{over_key}/{key}",
            parent_path=f"{self.path}/{over_key}",
            parent=overrides,
            mode=mode if isinstance(mode, Mapping) else None,
            is_global=False,
        )


@dataclass(frozen=True, slots=True)
class ExtProcPieces:
    """Everything in one EnvoyFilter that makes up its ext_proc path."""

    envoy_filter: EnvoyFilter
    filters: tuple[FilterPiece, ...]
    clusters: Mapping[str, ClusterPiece]
    routes: tuple[RoutePiece, ...]
    spelling: Spelling

    @property
    def mode_sites(self) -> tuple[ModeSite, ...]:
        sites = [f.mode_site for f in self.filters] + [r.mode_site for r in self.routes if not r.disabled]
        return tuple(site for site in sites if site is not None)

    def cluster_for(self, piece: FilterPiece) -> ClusterPiece | None:
        name = piece.cluster_name
        return self.clusters.get(name) if name is not None else None

    @property
    def epp_clusters(self) -> tuple[ClusterPiece, ...]:
        """The defined clusters some ext_proc filter names, each once."""
        seen: dict[str, ClusterPiece] = {}
        for piece in self.filters:
            cluster = self.cluster_for(piece)
            if cluster is not None:
                seen.setdefault(cluster.name, cluster)
        return tuple(seen.values())


def _typed_config(value: Mapping[str, Any]) -> tuple[str | None, Any]:
    key = find_key(value, "typed_config")
    return key, (value.get(key) if key else None)


def installs_ext_proc(patch: ConfigPatch, filter_name: str) -> bool:
    """Whether an HTTP_FILTER patch puts ext_proc into the chain (by filter name or by `@type`)."""
    if patch.apply_to != "HTTP_FILTER":
        return False
    value = patch.value
    if value is None:
        return False
    if value.get("name") == filter_name:
        return True
    _, config = _typed_config(value)
    return isinstance(config, Mapping) and config.get("@type") == EXT_PROC_TYPE


def _route_entries(patch: ConfigPatch, filter_name: str) -> list[RoutePiece]:
    value = patch.value
    if value is None:
        return []
    key = find_key(value, "typed_per_filter_config")
    per_filter = value.get(key) if key else None
    if not isinstance(per_filter, Mapping):
        return []
    pieces = []
    for name, entry in per_filter.items():
        if not isinstance(entry, Mapping):
            continue
        if name == filter_name or entry.get("@type") == PER_ROUTE_TYPE:
            path = f"{patch.value_path}/{key}/{pointer(str(name))[1:]}"
            pieces.append(RoutePiece(patch, entry, path))
    return pieces


def locate_ext_proc(envoy_filter: EnvoyFilter, filter_name: str) -> ExtProcPieces | None:
    """The ext_proc pieces of a filter, or None when it has no ext_proc content."""
    filters: list[FilterPiece] = []
    routes: list[RoutePiece] = []
    cluster_patches: list[ConfigPatch] = []
    for patch in envoy_filter.config_patches:
        if patch.apply_to == "HTTP_FILTER":
            if patch.operation != "REMOVE" and installs_ext_proc(patch, filter_name):
                value = patch.value or {}
                key, config = _typed_config(value)
                filters.append(
                    FilterPiece(
                        patch=patch,
                        config=config if isinstance(config, Mapping) else None,
                        config_path=f"{patch.value_path}/{key or 'typed_config'}",
                    )
                )
        elif patch.apply_to in ROUTE_TARGETS:
            routes.extend(_route_entries(patch, filter_name))
        elif patch.apply_to == "CLUSTER" and patch.operation == "ADD" and patch.value is not None:
            cluster_patches.append(patch)
    if not filters and not routes:
        return None
    clusters: dict[str, ClusterPiece] = {}
    for patch in cluster_patches:
        piece = ClusterPiece(patch, patch.value or {})
        clusters.setdefault(piece.name, piece)
    values: list[Any] = [f.patch.value for f in filters] + [r.entry for r in routes]
    values += [c.value for c in clusters.values()]
    return ExtProcPieces(
        envoy_filter=envoy_filter,
        filters=tuple(filters),
        clusters=clusters,
        routes=tuple(routes),
        spelling=detect_spelling(values),
    )
