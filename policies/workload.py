"""The other EnvoyFilters that apply to the same workload as a judged one, indexed for the rules.

Istio applies every EnvoyFilter of a workload's namespace and of its root namespace to the workload's
proxy. Which of them really select the same pods (workloadSelector, targetRefs) is not decided here: any
EnvoyFilter of the two namespaces can define a cluster or a per-route override the judged one relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from policies.context import Context
from policies.model import EnvoyFilter, as_mapping
from policies.pieces import (
    EXT_PROC_TYPE,
    PER_ROUTE_TYPE,
    ROUTE_TARGETS,
    ClusterPiece,
    EntryPieces,
    ExtProcPieces,
    FilterPiece,
    RoutePiece,
    installs_ext_proc,
    locate_ext_proc,
    read_clusters,
)

_Entry = TypeVar("_Entry")
_Piece = TypeVar("_Piece", FilterPiece, RoutePiece)


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
        pieces = locate_ext_proc(envoy_filter, filter_name)
        # the pieces hold every cluster the filter adds (what `read_clusters` reads again otherwise)
        clusters = dict(pieces.clusters) if pieces is not None else read_clusters(envoy_filter)
        if pieces is not None or clusters:
            found.append(Neighbour(envoy_filter, pieces, clusters))
    return tuple(found)


def neighbours_of(context: Context, namespace: str, filter_name: str) -> tuple[Neighbour, ...]:
    """The EnvoyFilters with ext_proc pieces or clusters that apply to `namespace` (cached per context)."""
    return _index_of(context, namespace, filter_name).neighbours


FilterEntry = tuple[int, EnvoyFilter, FilterPiece]
RouteEntry = tuple[int, EnvoyFilter, RoutePiece]


@dataclass(frozen=True, slots=True)
class NeighbourIndex:
    """The neighbours of one namespace, with their pieces listed and looked up by name once.

    Every judged document of the namespace shares it (minus itself), so a rule's question about the
    workload costs a dictionary lookup, not a pass over every EnvoyFilter of the namespace.
    """

    neighbours: tuple[Neighbour, ...]
    filters: tuple[FilterEntry, ...]
    routes: tuple[RouteEntry, ...]
    clusters: Mapping[str, tuple[tuple[int, ClusterPiece, EnvoyFilter], ...]]
    filters_by_name: Mapping[str | None, tuple[FilterEntry, ...]]
    routes_by_filter: Mapping[str, tuple[RouteEntry, ...]]
    filters_by_cluster: Mapping[str, tuple[FilterEntry, ...]]
    routes_by_cluster: Mapping[str, tuple[RouteEntry, ...]]
    used_names: tuple[frozenset[str], ...]
    used_counts: Mapping[str, int]
    by_raw: Mapping[int, tuple[int, ...]]
    by_key: Mapping[tuple[str, str], tuple[int, ...]]
    by_owner: Mapping[int, tuple[int, ...]]
    memo: dict[Any, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)
    decisions: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """What judged documents of the namespace decided about these neighbours, for the next one to reuse
    (`Subject` keys each answer by everything it depends on)."""

    def positions(
        self, key: Any, entries: Iterable[tuple[int, Any, Any]], test: Callable[[Any], bool]
    ) -> tuple[int, ...]:
        """Positions of the entries whose piece passes `test`, computed once per `key`."""
        found = self.memo.get(key)
        if found is None:
            found = tuple(position for position, _, piece in entries if test(piece))
            self.memo[key] = found
        return found

    @classmethod
    def build(cls, neighbours: tuple[Neighbour, ...]) -> NeighbourIndex:
        filters: list[FilterEntry] = []
        routes: list[RouteEntry] = []
        clusters: dict[str, list[tuple[int, ClusterPiece, EnvoyFilter]]] = {}
        used_names: list[frozenset[str]] = []
        used_counts: dict[str, int] = {}
        by_raw: dict[int, list[int]] = {}
        by_key: dict[tuple[str, str], list[int]] = {}
        by_owner: dict[int, list[int]] = {}
        for position, neighbour in enumerate(neighbours):
            owner = neighbour.envoy_filter
            by_raw.setdefault(id(owner.raw), []).append(position)
            by_key.setdefault(neighbour.key, []).append(position)
            by_owner.setdefault(id(owner), []).append(position)
            for name, cluster in neighbour.clusters.items():
                clusters.setdefault(name, []).append((position, cluster, owner))
            names: set[str] = set()
            if neighbour.pieces is not None:
                for piece in neighbour.pieces.filters:
                    filters.append((position, owner, piece))
                    names.add(piece.cluster_name or "")
                for route in neighbour.pieces.routes:
                    routes.append((position, owner, route))
                    names.add(route.cluster_name or "")
            names.discard("")
            used_names.append(frozenset(names))
            for name in names:
                used_counts[name] = used_counts.get(name, 0) + 1
        return cls(
            neighbours=neighbours,
            filters=tuple(filters),
            routes=tuple(routes),
            clusters={name: tuple(entries) for name, entries in clusters.items()},
            filters_by_name=_group(filters, lambda entry: entry[2].name),
            routes_by_filter=_group(routes, lambda entry: entry[2].filter_name),
            filters_by_cluster=_group(filters, lambda entry: entry[2].cluster_name),
            routes_by_cluster=_group(routes, lambda entry: entry[2].cluster_name),
            used_names=tuple(used_names),
            used_counts=used_counts,
            by_raw={key: tuple(value) for key, value in by_raw.items()},
            by_key={key: tuple(value) for key, value in by_key.items()},
            by_owner={key: tuple(value) for key, value in by_owner.items()},
        )


def _group(entries: Iterable[_Entry], key: Callable[[_Entry], Any]) -> dict[Any, tuple[_Entry, ...]]:
    grouped: dict[Any, list[_Entry]] = {}
    for entry in entries:
        grouped.setdefault(key(entry), []).append(entry)
    return {name: tuple(items) for name, items in grouped.items()}


_EMPTY_INDEX = NeighbourIndex.build(())


def _index_of(context: Context, namespace: str, filter_name: str) -> NeighbourIndex:
    key = ("workload", namespace, filter_name)
    cached: NeighbourIndex | None = context.cache.get(key)
    if cached is None:
        cached = NeighbourIndex.build(_neighbours(context, namespace, filter_name))
        context.cache[key] = cached
    return cached


@dataclass(frozen=True, slots=True)
class Workload:
    """The neighbours of one judged EnvoyFilter: its namespace's index, less the positions of itself."""

    index: NeighbourIndex = _EMPTY_INDEX
    excluded: frozenset[int] = frozenset()

    @property
    def neighbours(self) -> tuple[Neighbour, ...]:
        return tuple(n for i, n in enumerate(self.index.neighbours) if i not in self.excluded)

    def cluster(self, name: str) -> tuple[ClusterPiece, EnvoyFilter] | None:
        for position, cluster, owner in self.index.clusters.get(name, ()):
            if position not in self.excluded:
                return cluster, owner
        return None

    def entries_read(self, raw: Mapping[str, Any]) -> dict[int, EntryPieces] | None:
        """The config patches of `raw` as the index read them, when the judged document is itself one of
        the context's EnvoyFilters (as in `check`, where every input is context): `evaluate` reuses them
        instead of reading the document a second time."""
        for position in self.index.by_raw.get(id(raw), ()):
            neighbour = self.index.neighbours[position]
            if neighbour.envoy_filter.raw is raw and neighbour.pieces is not None:
                return neighbour.pieces.entries_by_index()
        return None

    def pieces_of(self, envoy_filter: EnvoyFilter) -> ExtProcPieces | None:
        """The ext_proc pieces of one of the neighbours (as `filters()` and `routes()` name it)."""
        for position in self.index.by_owner.get(id(envoy_filter), ()):
            if position not in self.excluded:
                return self.index.neighbours[position].pieces
        return None

    def filters(self) -> Iterator[tuple[EnvoyFilter, FilterPiece]]:
        return self._visible(self.index.filters)

    def routes(self) -> Iterator[tuple[EnvoyFilter, RoutePiece]]:
        return self._visible(self.index.routes)

    def filters_using(self, cluster_name: str) -> Iterator[tuple[EnvoyFilter, FilterPiece]]:
        return self._visible(self.index.filters_by_cluster.get(cluster_name, ()))

    def routes_using(self, cluster_name: str) -> Iterator[tuple[EnvoyFilter, RoutePiece]]:
        return self._visible(self.index.routes_by_cluster.get(cluster_name, ()))

    def has_filter(self, name: str | None, test: Callable[[FilterPiece], bool]) -> bool:
        """Whether a filter whose patch value names this HTTP filter passes `test` (a module-level function:
        the answer per namespace is kept with the index)."""
        entries = self.index.filters_by_name.get(name, ())
        return self._any_visible(self.index.positions(("filter", name, test), entries, test))

    def has_route(self, filter_name: str, test: Callable[[RoutePiece], bool]) -> bool:
        """Whether a per-route override of this HTTP filter passes `test` (as `has_filter`)."""
        entries = self.index.routes_by_filter.get(filter_name, ())
        return self._any_visible(self.index.positions(("route", filter_name, test), entries, test))

    def has_any(self, test: Callable[[FilterPiece | RoutePiece], bool]) -> bool:
        """Whether any filter or per-route override of the neighbours passes `test` (as `has_filter`)."""
        filters = self.index.positions(("any-filter", test), self.index.filters, test)
        routes = self.index.positions(("any-route", test), self.index.routes, test)
        return self._any_visible(filters) or self._any_visible(routes)

    def _any_visible(self, positions: tuple[int, ...]) -> bool:
        return any(position not in self.excluded for position in positions)

    def _visible(
        self, entries: Iterable[tuple[int, EnvoyFilter, _Piece]]
    ) -> Iterator[tuple[EnvoyFilter, _Piece]]:
        excluded = self.excluded
        for position, owner, piece in entries:
            if position not in excluded:
                yield owner, piece

    def used_cluster_names(self) -> set[str]:
        counts = dict(self.index.used_counts)
        for position in self.excluded:
            for name in self.index.used_names[position]:
                counts[name] -= 1
        return {name for name, count in counts.items() if count > 0}


EMPTY_WORKLOAD = Workload()
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
    index = _index_of(context, envoy_filter.namespace, filter_name)
    excluded = set(index.by_raw.get(id(envoy_filter.raw), ()))
    if envoy_filter.name:
        excluded.update(index.by_key.get((envoy_filter.namespace, envoy_filter.name), ()))
    return Workload(index, frozenset(excluded))
