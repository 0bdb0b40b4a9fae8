"""Builders for EnvoyFilter test documents: the corrected seed shape with one knob per rule, in either
Envoy JSON spelling."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from policies.patch import split_pointer
from policies.resolver import ServiceAddress, ServiceRef, StaticResolver

NAMESPACE = "llm-d-inference-scheduler"
SERVICE = "gaie-inference-scheduling-epp"
EPP = ServiceRef(NAMESPACE, SERVICE)
CLUSTER_IP = "10.96.45.12"
EXT_PROC = "envoy.filters.http.ext_proc"
EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SPELLINGS = ("snake", "camel")
DNS_FORMS = (
    f"{SERVICE}.{NAMESPACE}.svc.cluster.local",
    f"{SERVICE}.{NAMESPACE}.svc",
    f"{SERVICE}.{NAMESPACE}",
    SERVICE,
)

HEADERS_GLOBAL = {
    "request_header_mode": "SKIP",
    "request_body_mode": "NONE",
    "response_header_mode": "SKIP",
    "response_body_mode": "NONE",
    "request_trailer_mode": "SKIP",
    "response_trailer_mode": "SKIP",
}
HEADERS_ROUTE = {**HEADERS_GLOBAL, "request_header_mode": "SEND"}


def resolver(ip: str = CLUSTER_IP, ports: tuple[int, ...] = (9002,)) -> StaticResolver:
    return StaticResolver({EPP: ServiceAddress(ip, ports)})


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def respell(value: Any) -> Any:
    """An Envoy value in JSON-name spelling (keys with dots or `@` are names and stay)."""
    if isinstance(value, dict):
        return {(k if "." in k or k.startswith("@") else camel(k)): respell(v) for k, v in value.items()}
    if isinstance(value, list):
        return [respell(v) for v in value]
    return value


@dataclass(frozen=True)
class Shape:
    """One EnvoyFilter, described by the knobs the rules look at. The defaults are the corrected seed."""

    spelling: str = "snake"
    operation: str = "REPLACE"
    sub_filter: str | None = EXT_PROC
    global_mode: dict[str, str] | None = field(default_factory=lambda: dict(HEADERS_GLOBAL))
    failure_mode_allow: bool = False
    cluster_name: str = "epp-cluster"
    defined_cluster: str = "epp-cluster"
    cluster_type: str = "STATIC"
    address: str = CLUSTER_IP
    port: int = 9002
    http2: bool = True
    tls: bool = False
    route_mode: dict[str, str] | None = field(default_factory=lambda: dict(HEADERS_ROUTE))
    annotate: bool = True
    replace_verified: bool = True
    timeout: str = "10s"
    extra_patches: tuple[dict[str, Any], ...] = ()

    def but(self, **changes: Any) -> Shape:
        return replace(self, **changes)


def _spell(value: dict[str, Any], spelling: str) -> dict[str, Any]:
    return respell(value) if spelling == "camel" else value


def build(shape: Shape) -> dict[str, Any]:
    """The plain EnvoyFilter document for a shape."""
    config: dict[str, Any] = {
        "@type": EXT_PROC_TYPE,
        "grpc_service": {"envoy_grpc": {"cluster_name": shape.cluster_name}, "timeout": shape.timeout},
        "failure_mode_allow": shape.failure_mode_allow,
        "message_timeout": "5s",
    }
    if shape.global_mode is not None:
        config["processing_mode"] = dict(shape.global_mode)
    sub_filter = {"name": shape.sub_filter} if shape.sub_filter else {}
    http_filter = {
        "applyTo": "HTTP_FILTER",
        "match": {
            "context": "GATEWAY",
            "listener": {
                "filterChain": {
                    "filter": {
                        "name": "envoy.filters.network.http_connection_manager",
                        "subFilter": sub_filter,
                    }
                }
            },
        },
        "patch": {
            "operation": shape.operation,
            "value": {"name": EXT_PROC, **_spell({"typed_config": config}, shape.spelling)},
        },
    }
    cluster: dict[str, Any] = {
        "name": shape.defined_cluster,
        "type": shape.cluster_type,
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
    }
    if shape.http2:
        cluster["typed_extension_protocol_options"] = {
            HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    if shape.tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
            },
        }
    cluster["load_assignment"] = {
        "cluster_name": shape.defined_cluster,
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": shape.address, "port_value": shape.port}
                            }
                        }
                    }
                ]
            }
        ],
    }
    patches: list[dict[str, Any]] = [
        http_filter,
        {
            "applyTo": "CLUSTER",
            "match": {"context": "GATEWAY"},
            "patch": {"operation": "ADD", "value": _spell(cluster, shape.spelling)},
        },
    ]
    if shape.route_mode is not None:
        per_route = {
            "@type": PER_ROUTE_TYPE,
            "overrides": {"processing_mode": dict(shape.route_mode)},
        }
        patches.append(
            {
                "applyTo": "HTTP_ROUTE",
                "match": {"context": "GATEWAY"},
                "patch": {
                    "operation": "MERGE",
                    "value": _spell({"typed_per_filter_config": {EXT_PROC: per_route}}, shape.spelling),
                },
            }
        )
    patches.extend(shape.extra_patches)
    annotations: dict[str, str] = {}
    if shape.annotate:
        annotations["extproc-guard.io/epp-service"] = f"{NAMESPACE}/{SERVICE}"
    if shape.replace_verified:
        annotations["extproc-guard.io/replace-target"] = "verified"
    metadata: dict[str, Any] = {"name": "epp-ext-proc", "namespace": NAMESPACE}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata,
        "spec": {
            "workloadSelector": {"labels": {"gateway.networking.k8s.io/gateway-name": "inference-gateway"}},
            "configPatches": patches,
        },
    }


def key(spelling: str, snake: str) -> str:
    """A field name in a spelling."""
    return camel(snake) if spelling == "camel" else snake


def filter_config(document: dict[str, Any], spelling: str) -> dict[str, Any]:
    config = document["spec"]["configPatches"][0]["patch"]["value"][key(spelling, "typed_config")]
    assert isinstance(config, dict)
    return config


def cluster_value(document: dict[str, Any], index: int = 1) -> dict[str, Any]:
    value = document["spec"]["configPatches"][index]["patch"]["value"]
    assert isinstance(value, dict)
    return value


def socket_address(document: dict[str, Any], spelling: str) -> dict[str, Any]:
    cluster = cluster_value(document)
    assignment = cluster[key(spelling, "load_assignment")]
    endpoint = assignment["endpoints"][0][key(spelling, "lb_endpoints")][0]["endpoint"]
    socket = endpoint["address"][key(spelling, "socket_address")]
    assert isinstance(socket, dict)
    return socket


def route_mode(document: dict[str, Any], spelling: str, index: int = 2) -> dict[str, Any]:
    value = document["spec"]["configPatches"][index]["patch"]["value"]
    entry = value[key(spelling, "typed_per_filter_config")][EXT_PROC]
    mode = entry["overrides"][key(spelling, "processing_mode")]
    assert isinstance(mode, dict)
    return mode


def global_mode(document: dict[str, Any], spelling: str) -> dict[str, Any]:
    mode = filter_config(document, spelling)[key(spelling, "processing_mode")]
    assert isinstance(mode, dict)
    return mode


def spelled(mode: dict[str, str], spelling: str) -> dict[str, str]:
    return {key(spelling, k): v for k, v in mode.items()}


def resolves(document: Any, path: str) -> bool:
    """The pointer names a node of the document (adapters place findings on its line)."""
    node = document
    for token in split_pointer(path):
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True
