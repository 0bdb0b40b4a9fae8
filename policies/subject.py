"""What a rule looks at: one EnvoyFilter's ext_proc pieces, the policy, and where its EPP Service lives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from policies.model import EnvoyFilter
from policies.pieces import ClusterPiece, ExtProcPieces, is_ip_address
from policies.policy import Policy
from policies.profile import Profile
from policies.resolver import ServiceAddress, ServiceLookupError, ServiceRef, ServiceResolver
from policies.spelling import Spelling

EPP_SERVICE_ANNOTATION: Final = "extproc-guard.io/epp-service"


@dataclass(slots=True)
class ServiceTarget:
    """Which Service an EPP cluster stands for and, when the resolver knows, its live address.

    `problem` says in one sentence (with what to do) why there is no address.
    """

    ref: ServiceRef | None
    address: ServiceAddress | None
    problem: str | None


def parse_service_host(host: str, *, namespace: str, cluster_domain: str) -> ServiceRef | None:
    """`NAME.NS.svc.<domain>`, `NAME.NS.svc`, `NAME.NS` or `NAME` (in `namespace`) -> the Service."""
    labels = host.rstrip(".").lower().split(".")
    if not all(labels):
        return None
    if len(labels) == 1:
        return ServiceRef(namespace, labels[0]) if namespace else None
    if len(labels) == 2:
        return ServiceRef(labels[1], labels[0])
    if labels[2] == "svc" and (len(labels) == 3 or labels[3:] == cluster_domain.lower().split(".")):
        return ServiceRef(labels[1], labels[0])
    return None


def parse_service_annotation(value: Any) -> ServiceRef | None:
    if not isinstance(value, str):
        return None
    namespace, _, name = value.strip().partition("/")
    if not namespace or not name or "/" in name:
        return None
    return ServiceRef(namespace, name)


@dataclass(slots=True)
class Subject:
    """One EnvoyFilter with ext_proc content, as the rules see it."""

    pieces: ExtProcPieces
    policy: Policy
    resolver: ServiceResolver
    _targets: dict[str, ServiceTarget] = field(default_factory=dict, compare=False, repr=False)

    @property
    def envoy_filter(self) -> EnvoyFilter:
        return self.pieces.envoy_filter

    @property
    def document(self) -> Mapping[str, Any]:
        return self.pieces.envoy_filter.raw

    @property
    def spelling(self) -> Spelling:
        return self.pieces.spelling

    @property
    def profile(self) -> Profile:
        return self.policy.profile_spec

    def service_ref(self, cluster: ClusterPiece) -> ServiceRef | None:
        """The Service behind a cluster: from its host name, else from the epp-service annotation."""
        namespace = self.envoy_filter.namespace
        for endpoint in cluster.endpoints:
            host = endpoint.address
            if isinstance(host, str) and host and not is_ip_address(host):
                return parse_service_host(
                    host, namespace=namespace, cluster_domain=self.policy.cluster_domain
                )
        return parse_service_annotation(self.envoy_filter.annotations.get(EPP_SERVICE_ANNOTATION))

    def service_target(self, cluster: ClusterPiece) -> ServiceTarget:
        cached = self._targets.get(cluster.name)
        if cached is None:
            cached = self._resolve(cluster)
            self._targets[cluster.name] = cached
        return cached

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
        try:
            address = self.resolver.lookup(ref)
        except ServiceLookupError as exc:
            return ServiceTarget(ref, None, f"the ClusterIP of Service {ref} is not known: {exc.reason}")
        return ServiceTarget(ref, address, None)
