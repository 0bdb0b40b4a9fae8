"""What a rule looks at: one EnvoyFilter's ext_proc pieces, the policy, the context, and the roles.

`pieces` are all of the document's ext_proc pieces; `epp` is the view restricted to the pieces whose role
is `epp` (the only ones a rule may change). Rules that judge the EPP's path read `epp`; rules about what
Envoy itself rejects read `pieces` and ask `role_of` before they offer a fix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from policies.context import EMPTY_CONTEXT, Context, DestinationTls, InferencePool
from policies.hosts import IstioCluster, parse_grpc_target, parse_istio_cluster, parse_service_host
from policies.model import EnvoyFilter
from policies.pieces import (
    BODY_FULL_DUPLEX,
    ClusterPiece,
    ExtProcPieces,
    FilterPiece,
    ModeSite,
    RoutePiece,
    is_ip_address,
)
from policies.policy import Policy
from policies.profile import GIE_EPP, HEADERS_EPP, PROFILES, Profile
from policies.resolver import ServiceAddress, ServiceLookupError, ServiceRef, ServiceResolver
from policies.role import Candidate, Reach, Role, RoleDecision, annotated_role, decide_role
from policies.spelling import Spelling
from policies.workload import EMPTY_WORKLOAD, Workload, workload_of

__all__ = [
    "EPP_SERVICE_ANNOTATION",
    "ServiceTarget",
    "Subject",
    "parse_service_annotation",
    "parse_service_host",
]

EPP_SERVICE_ANNOTATION: Final = "extproc-guard.io/epp-service"

Piece = FilterPiece | RoutePiece | ClusterPiece


@dataclass(slots=True)
class ServiceTarget:
    """Which Service an EPP cluster stands for and, when the resolver knows, its live address.

    `problem` says in one sentence (with what to do) why there is no address.
    """

    ref: ServiceRef | None
    address: ServiceAddress | None
    problem: str | None


def parse_service_annotation(value: Any) -> ServiceRef | None:
    if not isinstance(value, str):
        return None
    namespace, _, name = value.strip().partition("/")
    if not namespace or not name or "/" in name:
        return None
    return ServiceRef(namespace, name)


@dataclass(frozen=True, slots=True)
class ProfileChoice:
    profile: Profile
    why: str


@dataclass(slots=True)
class Subject:
    """One EnvoyFilter with ext_proc content, as the rules see it."""

    pieces: ExtProcPieces
    policy: Policy
    resolver: ServiceResolver
    context: Context = EMPTY_CONTEXT
    _targets: dict[str, ServiceTarget] = field(default_factory=dict, compare=False, repr=False)
    _roles: dict[str, RoleDecision] = field(default_factory=dict, compare=False, repr=False)
    _workload: Workload | None = field(default=None, compare=False, repr=False)
    _epp: ExtProcPieces | None = field(default=None, compare=False, repr=False)
    _profile: ProfileChoice | None = field(default=None, compare=False, repr=False)

    @property
    def envoy_filter(self) -> EnvoyFilter:
        return self.pieces.envoy_filter

    @property
    def decided_roles(self) -> Mapping[str, RoleDecision]:
        """The roles decided so far, by piece path."""
        return self._roles

    @property
    def decided_profile(self) -> ProfileChoice | None:
        """The profile, when it has been chosen."""
        return self._profile

    @property
    def document(self) -> Mapping[str, Any]:
        return self.pieces.envoy_filter.raw

    @property
    def spelling(self) -> Spelling:
        return self.pieces.spelling

    @property
    def workload(self) -> Workload:
        """The other EnvoyFilters of the same workload (namespace and Istio's root namespace)."""
        if self._workload is None:
            self._workload = (
                workload_of(self.context, self.envoy_filter, self.policy.filter_name)
                if self.context.envoy_filters
                else EMPTY_WORKLOAD
            )
        return self._workload

    # Clusters and Services ----------------------------------------------------------------------------

    def istio_cluster(self, name: str | None) -> IstioCluster | None:
        """Istio's own `outbound|PORT|SUBSET|FQDN` cluster, when `name` is one."""
        if not name:
            return None
        return parse_istio_cluster(name, cluster_domain=self.policy.cluster_domain)

    def find_cluster(self, name: str | None) -> tuple[ClusterPiece, EnvoyFilter] | None:
        """The cluster of that name: this document's, else one another EnvoyFilter of the workload adds."""
        if not name:
            return None
        local = self.pieces.clusters.get(name)
        if local is not None:
            return local, self.envoy_filter
        return self.workload.cluster(name)

    def cluster_defined(self, name: str | None) -> bool:
        return self.istio_cluster(name) is not None or self.find_cluster(name) is not None

    def service_ref(self, cluster: ClusterPiece, owner: EnvoyFilter | None = None) -> ServiceRef | None:
        """The Service behind a cluster: from its host name, a pinned IP given with `--service`, else the
        epp-service annotation of the EnvoyFilter that defines it."""
        owner = owner or self.envoy_filter
        for endpoint in cluster.endpoints:
            host = endpoint.address
            if isinstance(host, str) and host and not is_ip_address(host):
                return parse_service_host(
                    host, namespace=owner.namespace, cluster_domain=self.policy.cluster_domain
                )
        annotated = parse_service_annotation(owner.annotations.get(EPP_SERVICE_ANNOTATION))
        if annotated is not None:
            return annotated
        for endpoint in cluster.endpoints:
            if is_ip_address(endpoint.address):
                declared = self.context.declared_service_at(endpoint.address)
                if declared is not None:
                    return declared
        return None

    def service_target(self, cluster: ClusterPiece) -> ServiceTarget:
        cached = self._targets.get(cluster.path)
        if cached is None:
            cached = self._resolve(cluster)
            self._targets[cluster.path] = cached
        return cached

    def lookup(self, ref: ServiceRef) -> ServiceAddress | ServiceLookupError:
        try:
            return self.resolver.lookup(ref)
        except ServiceLookupError as exc:
            return exc

    def _resolve(self, cluster: ClusterPiece) -> ServiceTarget:
        ref = self.service_ref(cluster)
        if ref is None:
            hosts = [e.address for e in cluster.endpoints if isinstance(e.address, str)]
            named = [h for h in hosts if h and not is_ip_address(h)]
            if named:
                problem = (
                    f"host {named[0]!r} is not a Kubernetes Service name (NAME.NAMESPACE.svc."
                    f"{self.policy.cluster_domain}); point the cluster at the EPP Service"
                )
            else:
                problem = (
                    f"nothing says which Service cluster {cluster.name!r} stands for; set the annotation "
                    f"{EPP_SERVICE_ANNOTATION}: NAMESPACE/NAME"
                )
            return ServiceTarget(None, None, problem)
        answer = self.lookup(ref)
        if isinstance(answer, ServiceLookupError):
            return ServiceTarget(ref, None, f"the ClusterIP of Service {ref} is not known: {answer.reason}")
        return ServiceTarget(ref, answer, None)

    def destination_tls(self, ref: ServiceRef) -> DestinationTls | None:
        return self.context.tls_for(ref)

    # Roles --------------------------------------------------------------------------------------------

    def _reach(self, owner: EnvoyFilter, cluster_name: str | None, google_target: str | None) -> Reach:
        istio = self.istio_cluster(cluster_name)
        if istio is not None:
            return Reach(istio.service, f"Istio cluster {cluster_name}", cluster_name)
        found = self.find_cluster(cluster_name)
        if found is not None:
            cluster, defined_by = found
            ref = self.service_ref(cluster, defined_by)
            return Reach(ref, f"cluster {cluster_name!r}", cluster_name)
        if google_target:
            ref, _ = parse_grpc_target(
                google_target, namespace=owner.namespace, cluster_domain=self.policy.cluster_domain
            )
            return Reach(ref, f"google_grpc target {google_target!r}")
        return Reach(None, f"cluster {cluster_name!r}" if cluster_name else "no cluster", cluster_name)

    def _installs_one_filter(self, owner: EnvoyFilter) -> bool:
        """Whether an EnvoyFilter (this one or a neighbour) installs or changes no more than one ext_proc."""
        pieces = self.pieces if owner is self.envoy_filter else self.workload.pieces_of(owner)
        return pieces is None or len(pieces.filters) <= 1

    def _decide_filter(self, owner: EnvoyFilter, piece: FilterPiece) -> RoleDecision:
        candidate = Candidate(
            envoy_filter=owner,
            filter_name=piece.name,
            match_context=piece.patch.context,
            uses_google_grpc=piece.uses_google_grpc,
            reach=self._reach(owner, piece.cluster_name, piece.google_target),
            names_document=self._installs_one_filter(owner),
        )
        return decide_role(candidate, policy=self.policy, context=self.context)

    def _neighbour_filter_role(self, owner: EnvoyFilter, piece: FilterPiece) -> RoleDecision:
        """`_decide_filter` for a neighbour's filter, shared by every document judged against the same
        namespace index. The answer depends on the neighbour, the policy, the context and which cluster
        its cluster name finds: when that is one of this document's own clusters it is decided afresh,
        else the found cluster is part of the key."""
        name = piece.cluster_name
        if name and name in self.pieces.clusters:
            return self._decide_filter(owner, piece)
        found = self.workload.cluster(name) if name else None
        key = (id(self.policy), id(owner), piece.patch.path, id(found[0]) if found is not None else None)
        memo = self.workload.index.decisions
        hit = memo.get(key)
        if hit is not None and hit[0] is self.policy and hit[1] is owner:
            decision: RoleDecision = hit[2]
            return decision
        decision = self._decide_filter(owner, piece)
        memo[key] = (self.policy, owner, decision)
        return decision

    def _decide_route(self, owner: EnvoyFilter, route: RoutePiece) -> RoleDecision:
        """An override's own EnvoyFilter's annotation first; then, when it names no server of its own, the
        role of the filter it configures; else its own answers."""
        marked = annotated_role(owner)
        if marked is not None:
            return marked
        target = route.target
        if target is None or (target.cluster_name is None and not target.google_target):
            configured = self._filter_role_by_name(route.filter_name)
            if configured is not None:
                return configured
        candidate = Candidate(
            envoy_filter=owner,
            filter_name=route.filter_name,
            match_context=route.patch.context,
            uses_google_grpc=target.uses_google_grpc if target is not None else False,
            reach=self._reach(
                owner,
                target.cluster_name if target is not None else None,
                target.google_target if target is not None else None,
            ),
            names_document=self._installs_one_filter(owner),
        )
        return decide_role(candidate, policy=self.policy, context=self.context)

    def filter_name_of(self, piece: FilterPiece) -> str:
        """The HTTP filter a patch installs or changes: its value's `name`, else the sub-filter a MERGE or
        REPLACE matches, else the policy's filter name."""
        if piece.name:
            return piece.name
        if piece.patch.operation in ("MERGE", "REPLACE") and piece.patch.sub_filter_name:
            return piece.patch.sub_filter_name
        return self.policy.filter_name

    def _filter_role_by_name(self, filter_name: str) -> RoleDecision | None:
        """The role of the filter a per-route entry configures, when this document or the workload has it."""
        for piece in self.pieces.filters:
            if self.filter_name_of(piece) == filter_name:
                return self.role_of(piece)
        for owner, piece in self.workload.filters():
            if self.filter_name_of(piece) == filter_name:
                decision = self._neighbour_filter_role(owner, piece)
                return RoleDecision(
                    decision.role, f"{decision.why} (filter {filter_name} of envoyfilter/{owner.name})"
                )
        return None

    def role_of(self, piece: Piece) -> RoleDecision:
        key = piece.path if isinstance(piece, RoutePiece | ClusterPiece) else piece.patch.path
        cached = self._roles.get(key)
        if cached is None:
            if isinstance(piece, FilterPiece):
                cached = self._decide_filter(self.envoy_filter, piece)
            elif isinstance(piece, RoutePiece):
                cached = self._decide_route(self.envoy_filter, piece)
            else:
                cached = self._decide_cluster(piece)
            self._roles[key] = cached
        return cached

    def _decide_cluster(self, cluster: ClusterPiece) -> RoleDecision:
        """A cluster's role is its EnvoyFilter's annotation, else its users': `epp` if the EPP's filter or
        override uses it.

        Users are decided in order (this document's, then the workload's) and the first `epp` one ends
        the search: with every EnvoyFilter of a namespace as neighbours, deciding all of them for every
        cluster would cost the square of the namespace's size.
        """
        marked = annotated_role(self.envoy_filter)
        if marked is not None:
            return marked
        other: RoleDecision | None = None
        undecided: RoleDecision | None = None
        for decision in self._cluster_user_decisions(cluster.name):
            if decision.role is Role.EPP:
                return decision
            if decision.role is Role.OTHER and other is None:
                other = decision
            elif decision.role is Role.UNDECIDED and undecided is None:
                undecided = decision
        return (
            other
            or undecided
            or RoleDecision(Role.UNDECIDED, f"no ext_proc filter uses cluster {cluster.name!r}")
        )

    def _cluster_user_decisions(self, name: str) -> Iterator[RoleDecision]:
        for piece in self.pieces.filters:
            if piece.cluster_name == name:
                yield self.role_of(piece)
        for route in self.pieces.routes:
            if route.cluster_name == name:
                yield self.role_of(route)
        for owner, piece in self.workload.filters_using(name):
            yield self._neighbour_filter_role(owner, piece)
        for owner, route in self.workload.routes_using(name):
            yield self._decide_route(owner, route)

    def is_epp(self, piece: Piece) -> bool:
        return self.role_of(piece).role is Role.EPP

    @property
    def epp(self) -> ExtProcPieces:
        """The document's pieces whose role is `epp`: the only ones a fix may change."""
        if self._epp is None:
            filters = tuple(f for f in self.pieces.filters if self.is_epp(f))
            routes = tuple(r for r in self.pieces.routes if self.is_epp(r))
            clusters = tuple(c for c in self.pieces.epp_clusters if self.is_epp(c))
            self._epp = self.pieces.restricted(filters, routes, clusters)
        return self._epp

    # Profile ------------------------------------------------------------------------------------------

    @property
    def profile(self) -> Profile:
        return self.profile_choice.profile

    @property
    def profile_choice(self) -> ProfileChoice:
        """The profile the EPP's filter is judged by, and why (the policy's pin, else chosen per filter)."""
        if self._profile is None:
            self._profile = self._choose_profile()
        return self._profile

    def path_neighbours(self) -> tuple[tuple[EnvoyFilter, FilterPiece | RoutePiece], ...]:
        """The EPP pieces other EnvoyFilters of the workload add to this document's EPP path: filters of the
        same name or that use one of its clusters, then the enabled overrides of those filters."""
        epp = self.epp
        names = {self.filter_name_of(piece) for piece in epp.filters} | {
            route.filter_name for route in epp.routes
        }
        clusters = {cluster.name for cluster in epp.epp_clusters}
        found: list[tuple[EnvoyFilter, FilterPiece | RoutePiece]] = []
        for owner, piece in self.workload.filters():
            joins = self.filter_name_of(piece) in names or piece.cluster_name in clusters
            if joins and self._neighbour_filter_role(owner, piece).role is Role.EPP:
                found.append((owner, piece))
                names.add(self.filter_name_of(piece))
        for owner, route in self.workload.routes():
            if (
                route.filter_name in names
                and not route.disabled
                and self._decide_route(owner, route).role is Role.EPP
            ):
                found.append((owner, route))
        return tuple(found)

    def picker_pool(self) -> InferencePool | None:
        """The InferencePool whose endpoint picker one of this document's EPP pieces reaches (or, for a piece
        that names no server of its own, another piece of the same path in the workload)."""
        for piece in self.epp.filters:
            pool = self._pool_of(self._reach(self.envoy_filter, piece.cluster_name, piece.google_target))
            if pool is not None:
                return pool
        for route in self.epp.routes:
            if route.target is not None:
                reach = self._reach(self.envoy_filter, route.target.cluster_name, route.target.google_target)
                pool = self._pool_of(reach)
                if pool is not None:
                    return pool
        for cluster in self.epp.epp_clusters:
            ref = self.service_ref(cluster)
            pool = self.context.pool_of(ref) if ref is not None else None
            if pool is not None:
                return pool
        if not self.context.inference_pools:
            return None  # no pool to find (and the path's neighbours cost a pass over the namespace)
        for owner, neighbour in self.path_neighbours():
            target = neighbour if isinstance(neighbour, FilterPiece) else neighbour.target
            if target is not None:
                pool = self._pool_of(self._reach(owner, target.cluster_name, target.google_target))
                if pool is not None:
                    return pool
        return None

    def _pool_of(self, reach: Reach) -> InferencePool | None:
        return self.context.pool_of(reach.service) if reach.service is not None else None

    def _choose_profile(self) -> ProfileChoice:
        pinned = self.policy.profile
        if pinned is not None:
            return ProfileChoice(PROFILES[pinned], f"the policy pins profile {pinned}")
        pool = self.picker_pool()
        if pool is not None:
            return ProfileChoice(GIE_EPP, f"its Service is the endpoint picker of InferencePool {pool}")
        if any(_full_duplex(site) for site in self.epp.mode_sites):
            return ProfileChoice(GIE_EPP, "the filter is already in FULL_DUPLEX_STREAMED form")
        full_duplex = self.workload.has_any(_piece_full_duplex)
        for owner, neighbour in self.path_neighbours() if full_duplex else ():
            if _full_duplex(neighbour.mode_site):
                return ProfileChoice(
                    GIE_EPP, f"its path is already in FULL_DUPLEX_STREAMED form (envoyfilter/{owner.name})"
                )
        return ProfileChoice(
            HEADERS_EPP,
            "no InferencePool names its Service and the filter is not in FULL_DUPLEX_STREAMED form",
        )


def _full_duplex(site: ModeSite | None) -> bool:
    return site is not None and site.mode is not None and BODY_FULL_DUPLEX in site.mode.values()


def _piece_full_duplex(piece: FilterPiece | RoutePiece) -> bool:
    return _full_duplex(piece.mode_site)
