"""The reference gateway: what an Istio gateway with an attached InferencePool gives an EnvoyFilter to patch.

One listener whose connection manager runs ``envoy.filters.http.ext_proc`` then the router; a route table
with the configured routes; an ``ORIGINAL_DST`` pool cluster that sends each request to the address in the
``x-gateway-destination-endpoint`` header (the EPP's pick).

The ext_proc filter is a placeholder standing for the one Istio inserts. It is valid on its own and inert:
every processing mode is SKIP/NONE, so it never opens a stream to the EPP cluster it names, and a
``REPLACE`` patch has something to replace (as it has on a real gateway).
"""

from __future__ import annotations

from typing import Any

from policies.pieces import EXT_PROC_TYPE
from policies.render.options import (
    EXT_PROC_FILTER,
    HCM_FILTER,
    ROUTER_FILTER,
    RenderOptions,
    RouteSpec,
)

HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def build_placeholder_ext_proc(options: RenderOptions) -> dict[str, Any]:
    """The inert ext_proc filter the reference gateway carries before the router."""
    return {
        "name": EXT_PROC_FILTER,
        "typed_config": {
            "@type": EXT_PROC_TYPE,
            "grpc_service": {"envoy_grpc": {"cluster_name": options.epp_cluster}, "timeout": "10s"},
            "failure_mode_allow": False,
            "message_timeout": options.message_timeout,
            "processing_mode": {
                "request_header_mode": "SKIP",
                "response_header_mode": "SKIP",
                "request_body_mode": "NONE",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
        },
    }


def ordered_routes(routes: tuple[RouteSpec, ...]) -> list[RouteSpec]:
    """Longest prefix first (stable), so a catch-all ``/`` never shadows a more specific route."""
    return sorted(routes, key=lambda route: -len(route.prefix))


def build_route(route: RouteSpec, options: RenderOptions) -> dict[str, Any]:
    return {
        "name": route.name,
        "match": {"prefix": route.prefix},
        "route": {"cluster": route.cluster or options.pool_cluster, "timeout": route.timeout},
    }


def build_pool_cluster(options: RenderOptions) -> dict[str, Any]:
    return {
        "name": options.pool_cluster,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": options.connect_timeout,
        "original_dst_lb_config": {
            "use_http_header": True,
            "http_header_name": options.destination_header,
        },
    }


def build_reference(options: RenderOptions) -> dict[str, Any]:
    """A fresh Envoy v3 bootstrap of the reference gateway (a new object on every call)."""
    connection_manager = {
        "@type": HCM_TYPE,
        "stat_prefix": options.stat_prefix,
        "codec_type": "AUTO",
        "route_config": {
            "name": options.route_config_name,
            "virtual_hosts": [
                {
                    "name": options.virtual_host_name,
                    "domains": ["*"],
                    "routes": [build_route(route, options) for route in ordered_routes(options.routes)],
                }
            ],
        },
        "http_filters": [
            build_placeholder_ext_proc(options),
            {"name": ROUTER_FILTER, "typed_config": {"@type": ROUTER_TYPE}},
        ],
    }
    listener = {
        "name": options.listener_name,
        "address": {"socket_address": {"address": options.listen_address, "port_value": options.listen_port}},
        "filter_chains": [{"filters": [{"name": HCM_FILTER, "typed_config": connection_manager}]}],
    }
    return {
        "node": {"id": options.node_id, "cluster": options.node_cluster},
        "admin": {
            "address": {
                "socket_address": {"address": options.admin_address, "port_value": options.admin_port}
            }
        },
        "static_resources": {"listeners": [listener], "clusters": [build_pool_cluster(options)]},
    }
