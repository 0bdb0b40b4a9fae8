"""How the engine learns a Service's live ClusterIP: a protocol the adapters implement."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, order=True)
class ServiceRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServiceAddress:
    """A Service's ClusterIP and its ports (empty when the source does not know them)."""

    cluster_ip: str
    ports: tuple[int, ...] = ()


class ServiceLookupError(Exception):
    """The resolver cannot give an address for a Service; `reason` is one plain sentence."""

    def __init__(self, ref: ServiceRef, reason: str) -> None:
        super().__init__(f"service {ref}: {reason}")
        self.ref = ref
        self.reason = reason


class ServiceNotFound(ServiceLookupError):
    """The source is authoritative and the Service does not exist (or has no ClusterIP)."""


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
