"""The cluster around one EnvoyFilter: what else applies to its workload, and what its clusters reach.

A rule never judges an ext_proc filter alone. A cluster may be added by another EnvoyFilter, a per-route
override may live in a third, the EPP Service may be named by an InferencePool, and TLS to a Service comes
from a DestinationRule. A `Context` is a snapshot of those objects, as plain data:

- offline (`check`, `fix`), every document of the inputs given together forms one context;
- live, the webhook and the reconciler build one from their informer caches.

`settled` says whether a reference to something missing is final (offline, the reconciler) or may still
arrive (admission: the next object of the same `kubectl apply -f` may define the cluster).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol

from policies.model import as_mapping, is_envoy_filter
from policies.resolver import (
    ServiceAddress,
    ServiceLookupError,
    ServiceNotFound,
    ServicePort,
    ServiceRef,
    ServiceWithoutClusterIP,
)

DEFAULT_ROOT_NAMESPACE: Final = "istio-system"
INFERENCE_GROUPS: Final = frozenset({"inference.networking.k8s.io", "inference.networking.x-k8s.io"})
TLS_MODES: Final = frozenset({"DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"})


@dataclass(frozen=True, slots=True)
class InferencePool:
    """An InferencePool and the Service its endpoint picker (EPP) is reached through."""

    namespace: str
    name: str
    api_version: str
    picker: ServiceRef
    picker_port: int | None

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class DestinationTls:
    """The TLS a DestinationRule sets for its host: the whole host's mode and per-port modes."""

    namespace: str
    name: str
    host: str
    mode: str
    """`DISABLE`, `SIMPLE`, `MUTUAL`, `ISTIO_MUTUAL`, or "" when the rule sets no TLS."""
    port_modes: tuple[tuple[int, str], ...] = ()

    def mode_for(self, port: int | None) -> str:
        for number, mode in self.port_modes:
            if number == port:
                return mode
        return self.mode


@dataclass(frozen=True, eq=False)
class Context:
    """Everything beside the judged document that the rules may look at. Immutable; indexes are built once."""

    envoy_filters: tuple[Mapping[str, Any], ...] = ()
    inference_pools: tuple[InferencePool, ...] = ()
    destination_rules: tuple[DestinationTls, ...] = ()
    declared: Mapping[ServiceRef, ServiceAddress] = field(default_factory=lambda: MappingProxyType({}))
    """Services given explicitly for this run (`--service`): a cluster that reaches one is the EPP's."""
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    cluster_domain: str = "cluster.local"
    settled: bool = True
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)
    """Indexes the engine builds from this snapshot (per namespace), kept for the snapshot's life."""
    _tables: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    """This snapshot's own lookup tables, built on first use (explicitly: a compiled build of the engine
    would turn `functools.cached_property` into a plain property and rebuild them on every call)."""

    def filters_for(self, namespace: str) -> tuple[Mapping[str, Any], ...]:
        """The EnvoyFilters that apply to workloads in `namespace`: its own and the root namespace's."""
        by_namespace = self._filters_by_namespace
        own = by_namespace.get(namespace, ())
        if namespace == self.root_namespace:
            return own
        return own + by_namespace.get(self.root_namespace, ())

    def indexed(self) -> Context:
        """This context, its lookup tables built now: before forking processes that share it, each of
        which would otherwise build them again, reading (and so copying the memory of) every document."""
        _ = self._filters_by_namespace, self._pools_by_picker, self._declared_by_ip
        return self

    def pool_of(self, picker: ServiceRef) -> InferencePool | None:
        """The InferencePool whose endpoint picker is this Service, if any."""
        return self._pools_by_picker.get(picker)

    def declared_service_at(self, ip: str) -> ServiceRef | None:
        """The `--service` given with this ClusterIP, if exactly one was."""
        return self._declared_by_ip.get(ip)

    def tls_for(self, ref: ServiceRef) -> DestinationTls | None:
        """The DestinationRule TLS for a Service (its FQDN, short names, `*.NS...` wildcards)."""
        fqdn = f"{ref.name}.{ref.namespace}.svc.{self.cluster_domain}"
        found: DestinationTls | None = None
        for rule in self.destination_rules:
            host = rule.host.lower().rstrip(".")
            exact = host in (fqdn, f"{ref.name}.{ref.namespace}.svc", f"{ref.name}.{ref.namespace}") or (
                host == ref.name and rule.namespace == ref.namespace
            )
            if exact:
                return rule
            if host.startswith("*.") and fqdn.endswith(host[1:]) and found is None:
                found = rule
        return found

    @property
    def _filters_by_namespace(self) -> Mapping[str, tuple[Mapping[str, Any], ...]]:
        known: Mapping[str, tuple[Mapping[str, Any], ...]] | None = self._tables.get("filters")
        if known is not None:
            return known
        grouped: dict[str, list[Mapping[str, Any]]] = {}
        for document in self.envoy_filters:
            namespace = str(as_mapping(document.get("metadata")).get("namespace") or "")
            grouped.setdefault(namespace, []).append(document)
        table = {namespace: tuple(documents) for namespace, documents in grouped.items()}
        self._tables["filters"] = table
        return table

    @property
    def _pools_by_picker(self) -> Mapping[ServiceRef, InferencePool]:
        known: Mapping[ServiceRef, InferencePool] | None = self._tables.get("pools")
        if known is None:
            known = self._tables["pools"] = {pool.picker: pool for pool in self.inference_pools}
        return known

    @property
    def _declared_by_ip(self) -> Mapping[str, ServiceRef]:
        known: Mapping[str, ServiceRef] | None = self._tables.get("declared")
        if known is not None:
            return known
        seen: dict[str, list[ServiceRef]] = {}
        for ref, address in self.declared.items():
            seen.setdefault(address.cluster_ip, []).append(ref)
        table = {ip: refs[0] for ip, refs in seen.items() if len(refs) == 1}
        self._tables["declared"] = table
        return table


EMPTY_CONTEXT: Final = Context()


class ContextSource(Protocol):
    """Where an adapter gets the context of a filter in a namespace: a fixed snapshot (offline, tests) or
    informer caches (the webhook, the reconciler). `generation` moves whenever an answer may change."""

    def context_for(self, namespace: str) -> Context: ...

    @property
    def generation(self) -> int: ...


class FixedContext:
    """The same context for every namespace."""

    def __init__(self, context: Context) -> None:
        self._context = context

    def context_for(self, namespace: str) -> Context:
        return self._context

    @property
    def generation(self) -> int:
        return 0


# Reading the objects of a context from plain documents (YAML/JSON or the API's JSON) ---------------------


def service_address(ref: ServiceRef, document: Mapping[str, Any]) -> ServiceAddress | ServiceLookupError:
    """A Service object (plain JSON) -> its ClusterIP and ports (numbers, names, `appProtocol`s), or why a
    STATIC cluster cannot point at it (headless, ExternalName, no spec). The one Service decoder: offline
    documents and the live caches both use it."""
    spec = document.get("spec")
    if not isinstance(spec, Mapping):
        return ServiceNotFound(ref, "has no spec")
    if spec.get("type") == "ExternalName":
        target = spec.get("externalName")
        named = f" (it names {target})" if isinstance(target, str) and target else ""
        return ServiceWithoutClusterIP(
            ref, f"is an ExternalName Service{named}, so it has no ClusterIP to pin"
        )
    cluster_ip = spec.get("clusterIP")
    if not isinstance(cluster_ip, str) or not cluster_ip or cluster_ip == "None":
        return ServiceWithoutClusterIP(
            ref, "is headless (no ClusterIP), so no STATIC address can point at it"
        )
    specs: list[ServicePort] = []
    ports = spec.get("ports")
    for port in ports if isinstance(ports, list) else ():
        entry = as_mapping(port)
        number = entry.get("port")
        if isinstance(number, int) and not isinstance(number, bool) and number > 0:
            specs.append(
                ServicePort(number, str(entry.get("name") or ""), str(entry.get("appProtocol") or ""))
            )
    return ServiceAddress(cluster_ip=cluster_ip, ports=tuple(s.port for s in specs), port_specs=tuple(specs))


def read_service(document: Mapping[str, Any]) -> tuple[ServiceRef, ServiceAddress] | None:
    """A v1 Service document with a usable ClusterIP -> its reference and address."""
    if document.get("kind") != "Service" or document.get("apiVersion") != "v1":
        return None
    metadata = as_mapping(document.get("metadata"))
    name, namespace = metadata.get("name"), metadata.get("namespace") or "default"
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    ref = ServiceRef(namespace, name)
    address = service_address(ref, document)
    return None if isinstance(address, ServiceLookupError) else (ref, address)


def read_inference_pool(document: Mapping[str, Any]) -> InferencePool | None:
    """An InferencePool (v1 `endpointPickerRef`, or v1alpha2 `extensionRef`) whose picker is a Service."""
    if document.get("kind") != "InferencePool":
        return None
    api_version = document.get("apiVersion")
    if not isinstance(api_version, str) or api_version.split("/", 1)[0] not in INFERENCE_GROUPS:
        return None
    metadata = as_mapping(document.get("metadata"))
    name, namespace = metadata.get("name"), metadata.get("namespace") or "default"
    spec = as_mapping(document.get("spec"))
    ref = as_mapping(spec.get("endpointPickerRef")) or as_mapping(spec.get("extensionRef"))
    picker, kind = ref.get("name"), ref.get("kind") or "Service"
    if not isinstance(name, str) or not isinstance(namespace, str) or not isinstance(picker, str):
        return None
    if kind != "Service" or ref.get("group") not in (None, ""):
        return None
    port = as_mapping(ref.get("port")).get("number", ref.get("portNumber"))
    number = port if isinstance(port, int) and not isinstance(port, bool) else None
    return InferencePool(namespace, name, api_version, ServiceRef(namespace, picker), number)


def read_destination_rule(document: Mapping[str, Any]) -> DestinationTls | None:
    """A networking.istio.io DestinationRule's host and TLS modes (whole host and per port)."""
    if document.get("kind") != "DestinationRule":
        return None
    api_version = document.get("apiVersion")
    if not isinstance(api_version, str) or not api_version.startswith("networking.istio.io/"):
        return None
    metadata = as_mapping(document.get("metadata"))
    name, namespace = metadata.get("name"), metadata.get("namespace") or "default"
    spec = as_mapping(document.get("spec"))
    host = spec.get("host")
    if not isinstance(host, str) or not isinstance(name, str) or not isinstance(namespace, str):
        return None
    policy = as_mapping(spec.get("trafficPolicy"))
    port_modes: list[tuple[int, str]] = []
    settings = policy.get("portLevelSettings")
    for entry in settings if isinstance(settings, list) else ():
        level = as_mapping(entry)
        number = as_mapping(level.get("port")).get("number")
        mode = _tls_mode(level)
        if isinstance(number, int) and mode:
            port_modes.append((number, mode))
    return DestinationTls(namespace, name, host, _tls_mode(policy), tuple(port_modes))


def _tls_mode(policy: Mapping[str, Any]) -> str:
    mode = as_mapping(policy.get("tls")).get("mode")
    return mode.upper() if isinstance(mode, str) and mode.upper() in TLS_MODES else ""


@dataclass(frozen=True, slots=True)
class ContextObjects:
    """The context objects found among documents, and the Services they hold (for the resolver)."""

    envoy_filters: tuple[Mapping[str, Any], ...]
    inference_pools: tuple[InferencePool, ...]
    destination_rules: tuple[DestinationTls, ...]
    services: Mapping[ServiceRef, ServiceAddress]


def collect_context(documents: Iterable[Any]) -> ContextObjects:
    """Sort documents into what a context holds; anything else (and anything malformed) is skipped."""
    filters: list[Mapping[str, Any]] = []
    pools: list[InferencePool] = []
    rules: list[DestinationTls] = []
    services: dict[ServiceRef, ServiceAddress] = {}
    for document in documents:
        if not isinstance(document, Mapping):
            continue
        if is_envoy_filter(document):
            filters.append(document)
            continue
        kind = document.get("kind")
        if kind == "Service":
            service = read_service(document)
            if service is not None:
                services[service[0]] = service[1]
        elif kind == "InferencePool":
            pool = read_inference_pool(document)
            if pool is not None:
                pools.append(pool)
        elif kind == "DestinationRule":
            rule = read_destination_rule(document)
            if rule is not None:
                rules.append(rule)
    return ContextObjects(tuple(filters), tuple(pools), tuple(rules), services)
