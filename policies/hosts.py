"""Names that point at a Kubernetes Service: DNS host names, Istio's own cluster names, gRPC target URIs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from policies.resolver import ServiceRef

ISTIO_DIRECTIONS: Final = frozenset({"outbound", "inbound"})


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


@dataclass(frozen=True, slots=True)
class IstioCluster:
    """Istio's own name for a Service port's cluster: `outbound|PORT|SUBSET|FQDN`.

    Istio defines these clusters itself; an EnvoyFilter only names them.
    """

    direction: str
    port: int
    subset: str
    host: str
    service: ServiceRef | None
    """The Service behind `host` (None when the host is not `NAME.NS.svc.<domain>`, e.g. a ServiceEntry)."""

    def __str__(self) -> str:
        return f"{self.direction}|{self.port}|{self.subset}|{self.host}"


def parse_istio_cluster(name: str, *, cluster_domain: str) -> IstioCluster | None:
    """`outbound|9002||epp.ns.svc.cluster.local` -> its parts; None for any other cluster name."""
    parts = name.split("|")
    if len(parts) != 4:
        return None
    direction, port, subset, host = parts
    if direction not in ISTIO_DIRECTIONS or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        return None
    labels = host.rstrip(".").lower().split(".")
    service = None
    if len(labels) > 3 and labels[2] == "svc":
        service = parse_service_host(host, namespace="", cluster_domain=cluster_domain)
    return IstioCluster(direction, int(port), subset, host, service)


def parse_grpc_target(
    target: str, *, namespace: str, cluster_domain: str
) -> tuple[ServiceRef | None, int | None]:
    """A google_grpc `target_uri` (`host:port`, `dns:///host:port`) -> the Service and port it names."""
    text = target.strip()
    for scheme in ("dns:///", "dns:", "passthrough:///"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
            break
    host, _, port = text.rpartition(":")
    if not host:
        host, port = text, ""
    ref = parse_service_host(host, namespace=namespace, cluster_domain=cluster_domain) if host else None
    return ref, int(port) if port.isdigit() else None
