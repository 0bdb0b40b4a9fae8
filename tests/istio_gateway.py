"""An Envoy bootstrap shaped like the gateway istiod generates for an InferencePool, for loopback tests.

What istiod (1.28+, `ENABLE_GATEWAY_API_INFERENCE_EXTENSION`) puts in the gateway's Envoy, written here as
static resources instead of xDS:
- a listener-level `envoy.filters.http.ext_proc` that does nothing by itself: its cluster is a placeholder
  no one defines, header modes SKIP, `failure_mode_allow`, `message_timeout` 1000 s, and metadata options
  that receive and forward the `envoy.lb` namespace;
- on the route to the pool, an `ExtProcPerRoute` override: the EPP Service's own cluster
  `outbound|9002||<epp>.<ns>.svc.cluster.local`, headers SEND, bodies FULL_DUPLEX_STREAMED, trailers SEND,
  and `failure_mode_allow` from the pool's `failureMode` (FailOpen -> true);
- the EPP cluster speaks HTTP/2 (the Service port's `appProtocol`) over TLS (a DestinationRule `SIMPLE`),
  here with the test CA as trust anchor, SNI the Service name and ALPN h2;
- the pool's shadow Service cluster `outbound|54321||<pool>-ip-<hash>.<ns>.svc.cluster.local` with the pod
  endpoints and the `override_host` load-balancing policy reading `envoy.lb` -> `x-gateway-destination-
  endpoint` (round robin when there is none); it writes the endpoint it chose back under
  `x-gateway-destination-endpoint-served`, which the ext_proc filter forwards to the EPP on the response;
- Istio's default route retry policy (connect failures and refused streams, two retries, other hosts), so a
  retry walks the EPP's fallback list.
Options add what Istio does not: a subset hint taken from a request header, active health checks on the
EPP cluster, circuit breakers, and a second pool route without retries (for requests that carry the
NO_RETRY_HEADER): Envoy (1.35 to at least 1.40) sends a FULL_DUPLEX_STREAMED request body twice when the
route retries and the request has trailers (the router's retry copy is re-sent when the trailers answer
resumes the chain; envoyproxy/envoy#45470).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXT_PROC = "envoy.filters.http.ext_proc"
STAT_PREFIX = "outbound_0.0.0.0_80"
EPP_FQDN = "gaie-epp.llm-d.svc.cluster.local"
EPP_CLUSTER = f"outbound|9002||{EPP_FQDN}"
POOL_CLUSTER = "outbound|54321||gaie-pool-ip-7c2d1a9e.llm-d.svc.cluster.local"
PLACEHOLDER_CLUSTER = "inference-pool-ext-proc-placeholder"
SUBSET_HEADER = "x-test-subset-hint"
NO_RETRY_HEADER = "x-test-no-retry"
ROUTE_NAME = "llm-d.llm-route.0"


@dataclass(frozen=True)
class IstioGatewayOptions:
    epp: tuple[str, int]  # where the EPP listens (the EPP Service's address, pinned for loopback)
    pool: Sequence[tuple[str, int]]  # the model-server pods (the shadow Service's endpoints)
    ca_file: Path | None = None  # trust anchor for the EPP's certificate; None: plaintext h2c
    alpn_h2: bool = True
    fail_open: bool = True  # the pool's failureMode FailOpen -> failure_mode_allow on the override
    subset_hint_header: bool = False  # header_to_metadata: SUBSET_HEADER -> envoy.lb.subset_hint
    epp_health_check: str | None = None  # a gRPC health service to check actively on the EPP's own port
    epp_circuit_breakers: dict[str, int] | None = None  # e.g. {"max_requests": 1, "max_pending_requests": 1}
    http1_trailers: bool = False  # let HTTP/1.1 clients send request trailers (Envoy drops them by default)
    no_retry_route: bool = False  # requests with NO_RETRY_HEADER take a pool route without retries
    epp_ready: bool = True  # False: the EPP Service has no ready endpoint (Istio's EDS for it is empty)
    extra_routes: Sequence[dict[str, Any]] = field(default_factory=tuple)


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


ALL_SEND_FULL_DUPLEX = {
    "request_header_mode": "SEND",
    "response_header_mode": "SEND",
    "request_body_mode": "FULL_DUPLEX_STREAMED",
    "response_body_mode": "FULL_DUPLEX_STREAMED",
    "request_trailer_mode": "SEND",
    "response_trailer_mode": "SEND",
}


def listener_ext_proc() -> dict[str, Any]:
    """The filter istiod adds to every HCM of a gateway with an InferencePool: inert until a route says."""
    return {
        "name": EXT_PROC,
        "typed_config": _typed(
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            grpc_service={"envoy_grpc": {"cluster_name": PLACEHOLDER_CLUSTER}},
            processing_mode={"request_header_mode": "SKIP", "response_header_mode": "SKIP"},
            failure_mode_allow=True,
            message_timeout="1000s",
            metadata_options={
                "receiving_namespaces": {"untyped": ["envoy.lb"]},
                "forwarding_namespaces": {"untyped": ["envoy.lb"]},
            },
        ),
    }


def route_override(options: IstioGatewayOptions) -> dict[str, Any]:
    """The per-route override on the InferencePool's route: this is where the EPP is really named."""
    overrides: dict[str, Any] = {
        "processing_mode": dict(ALL_SEND_FULL_DUPLEX),
        "grpc_service": {"envoy_grpc": {"cluster_name": EPP_CLUSTER}},
        "failure_mode_allow": options.fail_open,
    }
    if options.subset_hint_header:
        overrides["metadata_options"] = {
            "receiving_namespaces": {"untyped": ["envoy.lb"]},
            "forwarding_namespaces": {"untyped": ["envoy.lb", "envoy.lb.subset_hint"]},
        }
    return _typed("envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute", overrides=overrides)


def pool_route(options: IstioGatewayOptions, *, retries: bool = True) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": ROUTE_NAME,
        "match": {"prefix": "/"},
        "route": {
            "cluster": POOL_CLUSTER,
            "timeout": "0s",
            "retry_policy": {
                "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                "num_retries": 2,
                "retry_host_predicate": [
                    {
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": _typed(
                            "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                        ),
                    }
                ],
                "host_selection_retry_max_attempts": "5",
            },
        },
        "typed_per_filter_config": {EXT_PROC: route_override(options)},
    }
    if not retries:
        del route["route"]["retry_policy"]
        route["name"] += ".no-retry"
        route["match"]["headers"] = [{"name": NO_RETRY_HEADER, "present_match": True}]
    return route


def subset_hint_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": _typed(
            "envoy.extensions.filters.http.header_to_metadata.v3.Config",
            request_rules=[
                {
                    "header": SUBSET_HEADER,
                    "on_header_present": {
                        "metadata_namespace": "envoy.lb.subset_hint",
                        "key": "x-gateway-destination-endpoint-subset",
                        "type": "STRING",
                    },
                    "remove": True,
                }
            ],
        ),
    }


def epp_cluster(options: IstioGatewayOptions) -> dict[str, Any]:
    host, port = options.epp
    cluster: dict[str, Any] = {
        "name": EPP_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": EPP_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(host, port)}}]}]
            if options.epp_ready
            else [],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": {}},
            )
        },
    }
    if options.ca_file is not None:
        common: dict[str, Any] = {
            "validation_context": {
                "trusted_ca": {"filename": str(options.ca_file)},
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": EPP_FQDN}}],
            }
        }
        if options.alpn_h2:
            common["alpn_protocols"] = ["h2"]
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": _typed(
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                sni=EPP_FQDN,
                common_tls_context=common,
            ),
        }
    if options.epp_health_check is not None:
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": "0.2s",
                "no_traffic_interval": "0.2s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": options.epp_health_check},
            }
        ]
    if options.epp_circuit_breakers is not None:
        cluster["circuit_breakers"] = {"thresholds": [dict(options.epp_circuit_breakers)]}
    return cluster


def pool_cluster(options: IstioGatewayOptions) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": _socket(host, port)}} for host, port in options.pool]
    round_robin = {
        "typed_extension_config": {
            "name": "envoy.load_balancing_policies.round_robin",
            "typed_config": _typed("envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"),
        }
    }
    override_host = _typed(
        "envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
        override_host_sources=[
            {"metadata": {"key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint"}]}}
        ],
        selected_host_key={"key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint-served"}]},
        fallback_policy={"policies": [round_robin]},
    )
    return {
        "name": POOL_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": POOL_CLUSTER, "endpoints": [{"lb_endpoints": endpoints}]},
        "load_balancing_policy": {
            "policies": [
                {
                    "typed_extension_config": {
                        "name": "envoy.load_balancing_policies.override_host",
                        "typed_config": override_host,
                    }
                }
            ]
        },
    }


def build_istio_gateway(options: IstioGatewayOptions) -> dict[str, Any]:
    """The bootstrap (admin and listener on loopback, port 0: the rig reads the ports back)."""
    http_filters = [subset_hint_filter()] if options.subset_hint_header else []
    http_filters += [
        listener_ext_proc(),
        {
            "name": "envoy.filters.http.router",
            "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
        },
    ]
    hcm = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=STAT_PREFIX,
        route_config={
            "name": "http.80",
            "virtual_hosts": [
                {
                    "name": "llm.example.com:80",
                    "domains": ["*"],
                    "routes": [
                        *options.extra_routes,
                        *([pool_route(options, retries=False)] if options.no_retry_route else []),
                        pool_route(options),
                    ],
                }
            ],
        },
        http_filters=http_filters,
    )
    if options.http1_trailers:
        hcm["http_protocol_options"] = {"enable_trailers": True}
    listener = {
        "name": "0.0.0.0_80",
        "address": _socket("127.0.0.1", 0),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    return {
        "admin": {"address": _socket("127.0.0.1", 0)},
        "static_resources": {
            "listeners": [listener],
            "clusters": [epp_cluster(options), pool_cluster(options)],
        },
    }
