"""Finding the ext_proc pieces of an EnvoyFilter: the filter, the EPP cluster and per-route overrides.

Everything is located once per document (paths included), so rules only read attributes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from policies.model import ConfigPatch, EnvoyFilter, read_config_patch
from policies.patch import escape_token
from policies.spelling import Spelling, detect_spelling, find_key

EXT_PROC_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
PER_ROUTE_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
ROUTE_TARGETS: Final = frozenset({"HTTP_ROUTE", "VIRTUAL_HOST"})
BODY_FULL_DUPLEX: Final = "FULL_DUPLEX_STREAMED"


def type_name(value: Mapping[str, Any]) -> str:
    """The `@type` of an Any-shaped mapping, without the URL prefix."""
    type_url = value.get("@type")
    return type_url.rsplit("/", 1)[-1] if isinstance(type_url, str) else ""


_IPV4: Final = re.compile(r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")


def is_ip_address(host: Any) -> bool:
    """Whether `host` is an IPv4 or IPv6 address literal (not a host name)."""
    return isinstance(host, str) and _is_ip_text(host)


@lru_cache(maxsize=1024)
def _is_ip_text(host: str) -> bool:
    if _IPV4.fullmatch(host):
        return True
    if ":" not in host:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _child(parent: Any, snake: str) -> tuple[str | None, Any]:
    """(key, value) of an Envoy field in either spelling; (None, None) when absent or parent is no dict."""
    if not isinstance(parent, dict):
        return None, None
    key = find_key(parent, snake)
    return (key, parent[key]) if key is not None else (None, None)


@dataclass(slots=True)
class ModeSite:
    """One processing_mode: the filter's own (global) or a per-route override's."""

    path: str
    """Pointer to the processing_mode mapping (it may not exist yet)."""
    parent_path: str
    """Pointer to the mapping that holds (or would hold) processing_mode."""
    parent: Mapping[str, Any]
    mode: Mapping[str, Any] | None
    is_global: bool


def _mode_site(parent: dict[str, Any], parent_path: str, *, is_global: bool) -> ModeSite:
    key, mode = _child(parent, "processing_mode")
    return ModeSite(
        path=f"{parent_path}/{key or 'processing_mode'}",
        parent_path=parent_path,
        parent=parent,
        mode=mode if isinstance(mode, dict) else None,
        is_global=is_global,
    )


@dataclass(slots=True)
class FilterPiece:
    """An HTTP_FILTER patch that installs ext_proc."""

    patch: ConfigPatch
    config: Mapping[str, Any] | None
    """The ExternalProcessor (`typed_config`, `@type` included); None if missing or not a mapping."""
    config_path: str
    cluster_name: str | None
    cluster_name_path: str
    mode_site: ModeSite | None
    uses_google_grpc: bool
    name: str | None = None
    """The patch value's own filter name (`envoy.filters.http.ext_proc`, `...ext_proc.bbr`), if set."""
    google_target: str | None = None
    """`grpc_service.google_grpc.target_uri`, when the filter reaches its server that way."""

    @property
    def role_key(self) -> str:
        return self.patch.path


@dataclass(frozen=True, slots=True)
class GrpcTarget:
    """Where a `grpc_service` points: an Envoy cluster name, or a google_grpc target URI."""

    cluster_name: str | None
    cluster_name_path: str
    uses_google_grpc: bool
    google_target: str | None


def read_grpc_target(config: dict[str, Any], config_path: str) -> GrpcTarget:
    grpc_key, grpc = _child(config, "grpc_service")
    envoy_key, envoy_grpc = _child(grpc, "envoy_grpc")
    name_key, name = _child(envoy_grpc, "cluster_name")
    google_key, google = _child(grpc, "google_grpc")
    _, target = _child(google, "target_uri")
    name_path = (
        f"{config_path}/{grpc_key or 'grpc_service'}/{envoy_key or 'envoy_grpc'}/{name_key or 'cluster_name'}"
    )
    return GrpcTarget(
        cluster_name=name if isinstance(name, str) else None,
        cluster_name_path=name_path,
        uses_google_grpc=google_key is not None,
        google_target=target if isinstance(target, str) else None,
    )


def _filter_piece(patch: ConfigPatch, value: dict[str, Any]) -> FilterPiece:
    key, config = _child(value, "typed_config")
    config_path = f"{patch.value_path}/{key or 'typed_config'}"
    own_name = value.get("name") if isinstance(value.get("name"), str) else None
    if not isinstance(config, dict):
        return FilterPiece(patch, None, config_path, None, config_path, None, False, own_name)
    target = read_grpc_target(config, config_path)
    return FilterPiece(
        patch=patch,
        config=config,
        config_path=config_path,
        cluster_name=target.cluster_name,
        cluster_name_path=target.cluster_name_path,
        mode_site=_mode_site(config, config_path, is_global=True),
        uses_google_grpc=target.uses_google_grpc,
        name=own_name,
        google_target=target.google_target,
    )


@dataclass(slots=True)
class Endpoint:
    """One `socket_address` of a cluster's load_assignment."""

    path: str
    socket: Mapping[str, Any]
    address: Any
    port: Any

    @property
    def address_path(self) -> str:
        return self.path + "/address"


def _endpoints(value: dict[str, Any], base: str) -> tuple[Endpoint, ...]:
    key, assignment = _child(value, "load_assignment")
    eps_key, localities = _child(assignment, "endpoints")
    if not isinstance(localities, list):
        return ()
    found: list[Endpoint] = []
    for i, locality in enumerate(localities):
        lb_key, lb_endpoints = _child(locality, "lb_endpoints")
        if not isinstance(lb_endpoints, list):
            continue
        for j, lb_endpoint in enumerate(lb_endpoints):
            endpoint = lb_endpoint.get("endpoint") if isinstance(lb_endpoint, dict) else None
            address = endpoint.get("address") if isinstance(endpoint, dict) else None
            sock_key, socket = _child(address, "socket_address")
            if isinstance(socket, dict):
                path = f"{base}/{key}/{eps_key}/{i}/{lb_key}/{j}/endpoint/address/{sock_key}"
                _, port = _child(socket, "port_value")
                if isinstance(port, str) and port.isdigit():
                    port = int(port)  # JSON may carry integers as strings; Envoy accepts both
                found.append(Endpoint(path, socket, socket.get("address"), port))
    return tuple(found)


@dataclass(slots=True)
class ClusterPiece:
    """A CLUSTER patch (operation ADD) and the cluster it defines."""

    patch: ConfigPatch
    value: Mapping[str, Any]
    name: str
    path: str
    endpoints: tuple[Endpoint, ...]

    @property
    def cluster_type(self) -> str:
        """The discovery type; Envoy's default (unset) is STATIC."""
        value = self.value.get("type")
        return value if isinstance(value, str) else "STATIC"


@dataclass(slots=True)
class RoutePiece:
    """An ExtProcPerRoute entry in an HTTP_ROUTE / VIRTUAL_HOST patch's `typed_per_filter_config`."""

    patch: ConfigPatch
    entry: Mapping[str, Any]
    path: str
    disabled: bool
    overrides: Mapping[str, Any] | None
    overrides_path: str
    mode_site: ModeSite | None
    """The override's processing_mode, when the override sets one."""
    filter_name: str = ""
    """The HTTP filter this entry configures (its key in `typed_per_filter_config`)."""
    target: GrpcTarget | None = None
    """The override's own `grpc_service`, when it names one (Istio's InferencePool routes do)."""

    @property
    def role_key(self) -> str:
        return self.path

    @property
    def cluster_name(self) -> str | None:
        return self.target.cluster_name if self.target is not None else None


def _route_piece(patch: ConfigPatch, entry: dict[str, Any], path: str, filter_name: str) -> RoutePiece:
    over_key, overrides = _child(entry, "overrides")
    overrides_path = f"{path}/{over_key or 'overrides'}"
    site = None
    target = None
    if isinstance(overrides, dict):
        if find_key(overrides, "processing_mode") is not None:
            site = _mode_site(overrides, overrides_path, is_global=False)
        if find_key(overrides, "grpc_service") is not None:
            target = read_grpc_target(overrides, overrides_path)
    _, disabled = _child(entry, "disabled")
    return RoutePiece(
        patch=patch,
        entry=entry,
        path=path,
        disabled=disabled is True,
        overrides=overrides if isinstance(overrides, dict) else None,
        overrides_path=overrides_path,
        mode_site=site,
        filter_name=filter_name,
        target=target,
    )


@dataclass(slots=True, unsafe_hash=True, init=False)
class EntryPieces:
    """What one entry of `spec.configPatches` holds: its ext_proc filter, overrides and added cluster."""

    # `Final` fields with an explicit __init__ and __reduce__, not frozen: built by the dozen per review
    # (docs/compiled.md, "What the compiled modules may not use").

    patch: Final[ConfigPatch]
    filters: Final[tuple[FilterPiece, ...]]
    routes: Final[tuple[RoutePiece, ...]]
    cluster: Final[ClusterPiece | None]

    def __init__(
        self,
        patch: ConfigPatch,
        filters: tuple[FilterPiece, ...] = (),
        routes: tuple[RoutePiece, ...] = (),
        cluster: ClusterPiece | None = None,
    ) -> None:
        self.patch = patch
        self.filters = filters
        self.routes = routes
        self.cluster = cluster

    def __reduce__(
        self,
    ) -> tuple[
        type[EntryPieces],
        tuple[ConfigPatch, tuple[FilterPiece, ...], tuple[RoutePiece, ...], ClusterPiece | None],
    ]:
        return (EntryPieces, (self.patch, self.filters, self.routes, self.cluster))


@dataclass(slots=True)
class ExtProcPieces:
    """Everything in one EnvoyFilter that makes up its ext_proc path."""

    envoy_filter: EnvoyFilter
    filters: tuple[FilterPiece, ...]
    clusters: Mapping[str, ClusterPiece]
    routes: tuple[RoutePiece, ...]
    spelling: Spelling
    mode_sites: tuple[ModeSite, ...]
    """The global processing_mode of every filter, then every enabled override's."""
    epp_clusters: tuple[ClusterPiece, ...]
    """The clusters this document defines that some ext_proc filter or route override uses, each once
    (in a role-restricted view: only those the pieces of that role use)."""
    entries: tuple[EntryPieces | None, ...] = ()
    """Per entry of `spec.configPatches` (None for one that is not a mapping): what a rebuild after a fix
    reuses for the entries the fix did not touch."""

    def entries_by_index(self, changed: Collection[int] = ()) -> dict[int, EntryPieces]:
        """The entries read, by index, but those in `changed`: what reading the same document again may
        reuse (`locate_ext_proc(reuse=...)`)."""
        return {
            index: entry
            for index, entry in enumerate(self.entries)
            if entry is not None and index not in changed
        }

    def restricted(
        self,
        filters: tuple[FilterPiece, ...],
        routes: tuple[RoutePiece, ...],
        epp_clusters: tuple[ClusterPiece, ...],
    ) -> ExtProcPieces:
        """A view of these pieces with only the given filters, routes and used clusters (and the mode sites
        of those filters and enabled routes); the rest is shared."""
        sites = [f.mode_site for f in filters] + [r.mode_site for r in routes if not r.disabled]
        return ExtProcPieces(
            envoy_filter=self.envoy_filter,
            filters=filters,
            clusters=self.clusters,
            routes=routes,
            spelling=self.spelling,
            mode_sites=tuple(site for site in sites if site is not None),
            epp_clusters=epp_clusters,
            entries=self.entries,
        )


def installs_ext_proc(value: dict[str, Any], filter_name: str) -> bool:
    """Whether an HTTP_FILTER patch value is ext_proc (by filter name or by the typed_config `@type`)."""
    if value.get("name") == filter_name:
        return True
    _, config = _child(value, "typed_config")
    return isinstance(config, dict) and config.get("@type") == EXT_PROC_TYPE


def _route_entries(patch: ConfigPatch, value: dict[str, Any], filter_name: str) -> list[RoutePiece]:
    key, per_filter = _child(value, "typed_per_filter_config")
    if not isinstance(per_filter, dict):
        return []
    pieces = []
    for name, entry in per_filter.items():
        if isinstance(entry, dict) and (name == filter_name or entry.get("@type") == PER_ROUTE_TYPE):
            path = f"{patch.value_path}/{key}/{escape_token(str(name))}"
            pieces.append(_route_piece(patch, entry, path, str(name)))
    return pieces


def _added_cluster(patch: ConfigPatch) -> ClusterPiece | None:
    """The cluster a CLUSTER patch with operation ADD defines (None for any other patch)."""
    value = patch.value
    if patch.apply_to != "CLUSTER" or patch.operation != "ADD" or not isinstance(value, dict):
        return None
    path = patch.value_path
    return ClusterPiece(patch, value, str(value.get("name") or ""), path, _endpoints(value, path))


def read_clusters(envoy_filter: EnvoyFilter) -> dict[str, ClusterPiece]:
    """The clusters an EnvoyFilter adds (CLUSTER patches with operation ADD), by name, first one wins."""
    clusters: dict[str, ClusterPiece] = {}
    for patch in envoy_filter.config_patches:
        cluster = _added_cluster(patch)
        if cluster is not None and cluster.name not in clusters:
            clusters[cluster.name] = cluster
    return clusters


def read_entry(patch: ConfigPatch, filter_name: str) -> EntryPieces:
    """The ext_proc pieces and the added cluster of one config patch."""
    value = patch.value
    if not isinstance(value, dict):
        return EntryPieces(patch)
    apply_to = patch.apply_to
    if apply_to == "HTTP_FILTER":
        if patch.operation != "REMOVE" and installs_ext_proc(value, filter_name):
            return EntryPieces(patch, filters=(_filter_piece(patch, value),))
    elif apply_to in ROUTE_TARGETS:
        routes = _route_entries(patch, value, filter_name)
        if routes:
            return EntryPieces(patch, routes=tuple(routes))
    elif apply_to == "CLUSTER":
        return EntryPieces(patch, cluster=_added_cluster(patch))
    return EntryPieces(patch)


def locate_ext_proc(
    envoy_filter: EnvoyFilter,
    filter_name: str,
    *,
    used_clusters: Collection[str] = (),
    reuse: Mapping[int, EntryPieces] | None = None,
) -> ExtProcPieces | None:
    """The ext_proc pieces of a filter, or None when it has none.

    `used_clusters` are cluster names that ext_proc filters of *other* EnvoyFilters use: a document that
    only adds such a cluster is part of an ext_proc path too. `reuse` holds entries read before, by index,
    that are known to be unchanged since (an entry is reused only while it is the same object).
    """
    items = envoy_filter.spec.get("configPatches")
    entries: list[EntryPieces | None] = []
    filters: list[FilterPiece] = []
    routes: list[RoutePiece] = []
    clusters: dict[str, ClusterPiece] = {}
    for index, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            entries.append(None)
            continue
        entry = reuse.get(index) if reuse else None
        if entry is None or entry.patch.raw is not item:
            entry = read_entry(read_config_patch(index, item), filter_name)
        entries.append(entry)
        filters.extend(entry.filters)
        routes.extend(entry.routes)
        cluster = entry.cluster
        if cluster is not None and cluster.name not in clusters:
            clusters[cluster.name] = cluster
    used = [f.cluster_name for f in filters] + [r.cluster_name for r in routes]
    used += [name for name in used_clusters if name in clusters]
    if not filters and not routes and not any(name in clusters for name in used_clusters):
        return None
    epp: dict[str, ClusterPiece] = {}
    for name in used:
        cluster = clusters.get(name) if name is not None else None
        if cluster is not None:
            epp.setdefault(cluster.name, cluster)
    sites = [f.mode_site for f in filters] + [r.mode_site for r in routes if not r.disabled]
    values: list[Any] = [f.patch.value for f in filters] + [r.entry for r in routes]
    values += [c.value for c in clusters.values()]
    return ExtProcPieces(
        envoy_filter=envoy_filter,
        filters=tuple(filters),
        clusters=clusters,
        routes=tuple(routes),
        spelling=detect_spelling(values),
        mode_sites=tuple(site for site in sites if site is not None),
        epp_clusters=tuple(epp.values()),
        entries=tuple(entries),
    )


def used_cluster_names(pieces: ExtProcPieces) -> set[str]:
    """The cluster names this document's ext_proc filters and route overrides point at."""
    names = {f.cluster_name for f in pieces.filters} | {r.cluster_name for r in pieces.routes}
    return {name for name in names if name}
