"""How the engine learns a Service's live ClusterIP: a protocol the adapters implement."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True, order=True)
class ServiceRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a Service as Istio reads it: the number, its name and its `appProtocol`."""

    port: int
    name: str = ""
    app_protocol: str = ""

    @property
    def speaks_http2(self) -> bool | None:
        """Whether Istio talks HTTP/2 to this port (True/False), or None when nothing says.

        `appProtocol` `kubernetes.io/h2c`, `grpc`, `http2` (or `h2c`), or a port name `grpc`, `http2`, `h2c`
        with or without a `-suffix`, select HTTP/2; any other declared protocol does not.
        """
        protocol = self.app_protocol.strip().lower()
        if protocol:
            return protocol in _HTTP2_PROTOCOLS
        name = self.name.strip().lower()
        if name == "grpc-web" or name.startswith("grpc-web-"):
            return False
        prefix = name.split("-", 1)[0]
        if not prefix:
            return None
        if prefix in _HTTP2_PROTOCOLS:
            return True
        return False if prefix in _OTHER_PROTOCOLS else None


_HTTP2_PROTOCOLS = frozenset({"kubernetes.io/h2c", "grpc", "http2", "h2c"})
_OTHER_PROTOCOLS = frozenset(
    {"http", "https", "tcp", "tls", "udp", "mongo", "mysql", "redis", "grpc-web", "kubernetes.io/ws"}
)


@dataclass(frozen=True, slots=True)
class ServiceAddress:
    """A Service's ClusterIP and its ports (empty when the source does not know them).

    `port_specs` carries names and `appProtocol`s when the source has them (a Service object does,
    `--service` does not).
    """

    cluster_ip: str
    ports: tuple[int, ...] = ()
    port_specs: tuple[ServicePort, ...] = field(default=(), compare=False)
    """Not compared: two answers are the same address when their IP and port numbers are."""

    def port_spec(self, port: int) -> ServicePort | None:
        for spec in self.port_specs:
            if spec.port == port:
                return spec
        return None


class ServiceLookupError(Exception):
    """The resolver cannot give an address for a Service; `reason` is one plain sentence."""

    def __init__(self, ref: ServiceRef, reason: str) -> None:
        super().__init__(f"service {ref}: {reason}")
        self.ref = ref
        self.reason = reason


class ServiceNotFound(ServiceLookupError):
    """The source is authoritative and the Service does not exist (or has no ClusterIP)."""


class ServiceWithoutClusterIP(ServiceNotFound):
    """The Service exists but has no ClusterIP to pin (headless, ExternalName). Istio still builds its own
    `outbound|...` cluster for it, so only a STATIC pin cannot use it."""


class ServiceUnknown(ServiceLookupError):
    """The source cannot answer now (no entry given, cache not synced, API unreachable)."""


class ServiceResolver(Protocol):
    def lookup(self, ref: ServiceRef) -> ServiceAddress:
        """Return the Service's address or raise a `ServiceLookupError`."""
        ...


class StaticResolver:
    """Answers from a fixed map: `--service NS/NAME=IP[:PORT]` in the CLI, and tests."""

    def __init__(self, services: Mapping[ServiceRef, ServiceAddress]) -> None:
        self._services = dict(services)

    def lookup(self, ref: ServiceRef) -> ServiceAddress:
        try:
            return self._services[ref]
        except KeyError:
            raise ServiceUnknown(
                ref, "no address given for it (pass --service NAMESPACE/NAME=CLUSTER_IP[:PORT])"
            ) from None


class ChainResolver:
    """Asks each resolver in turn; the next one is asked only when one says it cannot answer.

    A `ServiceNotFound` from an authoritative source ends the search: a Service that does not exist is
    not looked for elsewhere.
    """

    def __init__(self, resolvers: Iterable[ServiceResolver]) -> None:
        self._resolvers = tuple(resolvers)

    def lookup(self, ref: ServiceRef) -> ServiceAddress:
        last: ServiceUnknown | None = None
        for resolver in self._resolvers:
            try:
                return resolver.lookup(ref)
            except ServiceUnknown as exc:
                last = exc
        if last is None:
            raise ServiceUnknown(ref, "no Service source is configured")
        raise last
