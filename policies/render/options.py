"""Settings of the reference gateway that an EnvoyFilter is rendered into."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
DESTINATION_HEADER = "x-gateway-destination-endpoint"


class RenderError(ValueError):
    """The input cannot be rendered (not an EnvoyFilter, a patch value that is not a mapping, ...)."""


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """A host (IP address or name) and a port, as in Envoy's ``socket_address``."""

    address: str
    port: int

    def __post_init__(self) -> None:
        if not self.address:
            raise RenderError("a socket address needs a host")
        if not 0 <= self.port <= 65535:
            raise RenderError(f"port {self.port} is out of range 0-65535")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route of the reference gateway's virtual host.

    ``cluster`` None routes to the pool cluster. ``ext_proc_disabled`` turns ext_proc off on this route
    with ``ExtProcPerRoute{disabled: true}``, set after the filter's patches so that the route stays a
    baseline without ext_proc (for comparing with and without the EPP in one Envoy).
    """

    name: str
    prefix: str = "/"
    cluster: str | None = None
    ext_proc_disabled: bool = False
    timeout: str = "300s"


def default_routes() -> tuple[RouteSpec, ...]:
    return (RouteSpec(name="inference", prefix="/"),)


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """Where the rendered gateway listens and what its reference config is called.

    Names and defaults follow what an Istio gateway with an attached InferencePool looks like:
    listener ``0.0.0.0_80``, connection manager ``stat_prefix`` ``outbound_0.0.0.0_80`` (so ext_proc stats are
    ``http.outbound_0.0.0.0_80.ext_proc.*``), route table ``http.80``. ``gateway_port`` is the port patches
    match with ``portNumber``; ``listen_port`` is where the rendered Envoy actually binds (0 lets the kernel
    pick). ``endpoint_overrides`` replaces the endpoints of a (patched-in) cluster after all patches, e.g. to
    point ``epp-cluster`` at an EPP on loopback while keeping everything else the filter wrote.
    """

    listen_address: str = "0.0.0.0"
    listen_port: int = 80
    admin_address: str = "127.0.0.1"
    admin_port: int = 15000
    gateway_port: int = 80
    listener_name: str = "0.0.0.0_80"
    stat_prefix: str = "outbound_0.0.0.0_80"
    route_config_name: str = "http.80"
    virtual_host_name: str = "inference-gateway"
    pool_cluster: str = "inference-pool"
    epp_cluster: str = "epp-cluster"
    destination_header: str = DESTINATION_HEADER
    routes: tuple[RouteSpec, ...] = field(default_factory=default_routes)
    connect_timeout: str = "5s"
    message_timeout: str = "1s"
    node_id: str = "gateway"
    node_cluster: str = "inference-gateway"
    endpoint_overrides: Mapping[str, tuple[SocketAddress, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, port in (
            ("listen_port", self.listen_port),
            ("admin_port", self.admin_port),
            ("gateway_port", self.gateway_port),
        ):
            if not 0 <= port <= 65535:
                raise RenderError(f"{name} {port} is out of range 0-65535")
        if not self.routes:
            raise RenderError("the reference gateway needs at least one route")
        names = [route.name for route in self.routes]
        if len(set(names)) != len(names):
            raise RenderError(f"route names must be unique, got {names}")
        if not self.stat_prefix:
            raise RenderError("stat_prefix must not be empty")

    def http_stat(self, name: str) -> str:
        """Full name of a connection manager stat: ``http_stat("ext_proc.streams_started")``."""
        return f"http.{self.stat_prefix}.{name}"
