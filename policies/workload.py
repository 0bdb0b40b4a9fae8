"""The other EnvoyFilters that apply to the same workload as a judged one, indexed for the rules.

Istio applies every EnvoyFilter of a workload's namespace and of its root namespace to the workload's
proxy. Which of them really select the same pods (workloadSelector, targetRefs) is not decided here: any
EnvoyFilter of the two namespaces can define a cluster or a per-route override the judged one relies on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from policies.context import Context
from policies.model import EnvoyFilter, as_mapping
from policies.pieces import (
    EXT_PROC_TYPE,
    PER_ROUTE_TYPE,
    ROUTE_TARGETS,
    ClusterPiece,
    ExtProcPieces,
    FilterPiece,
    RoutePiece,
    installs_ext_proc,
    locate_ext_proc,
    read_clusters,
)


@dataclass(frozen=True, slots=True)
class Neighbour:
    """One EnvoyFilter of the workload: its ext_proc pieces (if any) and the clusters it adds."""

    envoy_filter: EnvoyFilter
    pieces: ExtProcPieces | None
    clusters: dict[str, ClusterPiece]

    @property
    def key(self) -> tuple[str, str]:
        return self.envoy_filter.namespace, self.envoy_filter.name


def _neighbours(context: Context, namespace: str, filter_name: str) -> tuple[Neighbour, ...]:
    found: list[Neighbour] = []
    for document in context.filters_for(namespace):
        envoy_filter = EnvoyFilter.of(document)
        clusters = read_clusters(envoy_filter)
        pieces = locate_ext_proc(envoy_filter, filter_name)
        if pieces is not None or clusters:
            found.append(Neighbour(envoy_filter, pieces, clusters))
    return tuple(found)


def neighbours_of(context: Context, namespace: str, filter_name: str) -> tuple[Neighbour, ...]:
    """The EnvoyFilters with ext_proc pieces or clusters that apply to `namespace` (cached per context)."""
    key = (namespace, filter_name)
    cached: tuple[Neighbour, ...] | None = context.cache.get(key)
    if cached is None:
        cached = _neighbours(context, namespace, filter_name)
        context.cache[key] = cached
    return cached


@dataclass(frozen=True, slots=True)
class Workload:
    """The neighbours of one judged EnvoyFilter (itself excluded)."""

    neighbours: tuple[Neighbour, ...]

    def cluster(self, name: str) -> tuple[ClusterPiece, EnvoyFilter] | None:
        for neighbour in self.neighbours:
            cluster = neighbour.clusters.get(name)
            if cluster is not None:
                return cluster, neighbour.envoy_filter
        return None

    def pieces_of(self, envoy_filter: EnvoyFilter) -> ExtProcPieces | None:
        """The ext_proc pieces of one of the neighbours (as `filters()` and `routes()` name it)."""
        for neighbour in self.neighbours:
            if neighbour.envoy_filter is envoy_filter:
                return neighbour.pieces
        return None

    def filters(self) -> Iterator[tuple[EnvoyFilter, FilterPiece]]:
        for neighbour in self.neighbours:
            if neighbour.pieces is not None:
                for piece in neighbour.pieces.filters:
                    yield neighbour.envoy_filter, piece

    def routes(self) -> Iterator[tuple[EnvoyFilter, RoutePiece]]:
        for neighbour in self.neighbours:
            if neighbour.pieces is not None:
                for route in neighbour.pieces.routes:
                    yield neighbour.envoy_filter, route

    def used_cluster_names(self) -> set[str]:
        names = {piece.cluster_name for _, piece in self.filters()}
        names |= {route.cluster_name for _, route in self.routes()}
        return {name for name in names if name}


EMPTY_WORKLOAD = Workload(())
OWN_ANNOTATION_PREFIX: Final = "extproc-guard.io/"


def _relevant_patch(patch: Any, filter_name: str) -> bool:
    """Whether a config patch can matter to another filter's ext_proc path: a cluster it adds, an ext_proc
    filter, or a route entry of ext_proc."""
    entry = as_mapping(patch)
    value = as_mapping(as_mapping(entry.get("patch")).get("value"))
    apply_to = entry.get("applyTo")
    if apply_to == "CLUSTER":
        return as_mapping(entry.get("patch")).get("operation") == "ADD"
    if apply_to == "HTTP_FILTER":
        return isinstance(value, dict) and installs_ext_proc(value, filter_name)
    if apply_to in ROUTE_TARGETS:
        for key in ("typed_per_filter_config", "typedPerFilterConfig"):
            for name, config in as_mapping(value.get(key)).items():
                if name == filter_name or as_mapping(config).get("@type") in (PER_ROUTE_TYPE, EXT_PROC_TYPE):
                    return True
    return False


def context_view(document: Mapping[str, Any], filter_name: str) -> dict[str, Any] | None:
    """What a context keeps of a stored EnvoyFilter: its name, namespace and extproc-guard annotations, and
    only the patches that can matter to an ext_proc path (clusters it adds, ext_proc filters and route
    entries). None for a filter with none of those (most EnvoyFilters: Lua, Wasm, rate limits)."""
    spec = as_mapping(document.get("spec"))
    patches = spec.get("configPatches")
    kept = [p for p in patches if _relevant_patch(p, filter_name)] if isinstance(patches, list) else []
    if not kept:
        return None
    metadata = as_mapping(document.get("metadata"))
    annotations = {
        key: value
        for key, value in as_mapping(metadata.get("annotations")).items()
        if isinstance(key, str) and key.startswith(OWN_ANNOTATION_PREFIX)
    }
    slim_metadata: dict[str, Any] = {key: metadata[key] for key in ("name", "namespace") if key in metadata}
    if annotations:
        slim_metadata["annotations"] = annotations
    return {
        "apiVersion": document.get("apiVersion") or "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": slim_metadata,
        "spec": {"configPatches": kept},
    }


def workload_of(context: Context, envoy_filter: EnvoyFilter, filter_name: str) -> Workload:
    """The judged filter's neighbours: same namespace or the root namespace, not the filter itself."""
    if not context.envoy_filters:
        return EMPTY_WORKLOAD
    own = envoy_filter.raw
    key = (envoy_filter.namespace, envoy_filter.name)
    return Workload(
        tuple(
            n
            for n in neighbours_of(context, envoy_filter.namespace, filter_name)
            if n.envoy_filter.raw is not own and not (envoy_filter.name and n.key == key)
        )
    )
