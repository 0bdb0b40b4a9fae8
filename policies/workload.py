"""The other EnvoyFilters that apply to the same workload as a judged one, indexed for the rules.

Istio applies every EnvoyFilter of a workload's namespace and of its root namespace to the workload's
proxy. Which of them really select the same pods (workloadSelector, targetRefs) is not decided here: any
EnvoyFilter of the two namespaces can define a cluster or a per-route override the judged one relies on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from policies.context import Context
from policies.model import EnvoyFilter
from policies.pieces import (
    ClusterPiece,
    ExtProcPieces,
    FilterPiece,
    RoutePiece,
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
