"""The objects of the cluster-scale benchmark: N EnvoyFilters in N/10 namespaces and 2N Services.

The mix is the one measured on a large cluster: 80% unrelated filters (Lua, Wasm, cluster tweaks, a rate
limit filter with its cluster), 15% Endpoint Picker filters, half of them in the incident's bad form and half
in the corrected form the engine itself writes, and 5% other ext_proc users (GIE body-based routing). Each
namespace holds 10 filters and 20 Services: one EPP Service per EPP filter, one body-based-router Service per
BBR filter, the rest plain application Services. ClusterIPs are given explicitly (in the test control
plane's 10.96.0.0/16), so the corrected filters can be written before any Service is read back.

Pure: builds dicts. The benchmark (`bench/scale_bench.py`) creates them; the tests check the mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from policies import (
    PatchOp,
    ServiceAddress,
    ServiceRef,
    StaticResolver,
    apply_patch,
    default_policy,
    evaluate,
)

FILTERS_PER_NAMESPACE = 10
SERVICES_PER_NAMESPACE = 20
EPP_PORT = 9002
BBR_PORT = 9004
APP_PORT = 8080
OPERATOR = "llm-d-operator"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"


class Kind(StrEnum):
    LUA = "lua"
    WASM = "wasm"
    CLUSTER_TWEAK = "cluster-tweak"
    RATE_LIMIT = "rate-limit"
    EPP_BAD = "epp-bad"
    EPP_GOOD = "epp-good"
    BBR = "bbr"


UNRELATED = (Kind.LUA, Kind.WASM, Kind.CLUSTER_TWEAK, Kind.RATE_LIMIT)
# The two ext_proc slots of each namespace, over a cycle of four namespaces: 3 bad EPP, 3 corrected EPP and
# 2 BBR filters in 40 = 7.5% + 7.5% + 5%.
EXT_PROC_SLOTS = (
    (Kind.EPP_BAD, Kind.EPP_GOOD),
    (Kind.EPP_BAD, Kind.BBR),
    (Kind.EPP_GOOD, Kind.EPP_BAD),
    (Kind.EPP_GOOD, Kind.BBR),
)


@dataclass(frozen=True, slots=True)
class Slot:
    namespace: str
    name: str
    kind: Kind
    service: str = ""
    """The Service the filter talks to (EPP and BBR filters)."""


def namespace_name(index: int) -> str:
    return f"scale-{index:05d}"


def cluster_ip(index: int) -> str:
    """The explicit ClusterIP of the index-th Service of the run (10.96.1.2 upwards; 250 per /24)."""
    return f"10.96.{1 + index // 250}.{2 + index % 250}"


def slots_of(namespace_index: int) -> list[Slot]:
    """The 10 filters of one namespace, in a fixed order."""
    namespace = namespace_name(namespace_index)
    slots = [
        Slot(namespace, f"{kind.value}-{j}", kind)
        for j, kind in enumerate(UNRELATED[(namespace_index + j) % len(UNRELATED)] for j in range(8))
    ]
    for j, kind in enumerate(EXT_PROC_SLOTS[namespace_index % len(EXT_PROC_SLOTS)]):
        if kind is Kind.BBR:
            slots.append(Slot(namespace, f"body-based-router-{j}", kind, service=f"bbr-{j}"))
        else:
            slots.append(Slot(namespace, f"epp-ext-proc-{j}", kind, service=f"epp-{j}"))
    return slots


def services_of(namespace_index: int) -> list[dict[str, Any]]:
    """The 20 Services of one namespace: the ones its ext_proc filters reach, then application Services."""
    namespace = namespace_name(namespace_index)
    first = namespace_index * SERVICES_PER_NAMESPACE
    wanted = [(slot.service, slot.kind) for slot in slots_of(namespace_index) if slot.service]
    while len(wanted) < SERVICES_PER_NAMESPACE:
        wanted.append((f"app-{len(wanted)}", Kind.LUA))
    services = []
    for offset, (name, kind) in enumerate(wanted):
        if kind is Kind.BBR:
            port = {"name": "grpc", "port": BBR_PORT, "targetPort": BBR_PORT, "protocol": "TCP"}
        elif kind in (Kind.EPP_BAD, Kind.EPP_GOOD):
            port = {"name": "grpc-ext-proc", "port": EPP_PORT, "targetPort": EPP_PORT, "protocol": "TCP"}
        else:
            port = {"name": "http", "port": APP_PORT, "targetPort": APP_PORT, "protocol": "TCP"}
        services.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
                "spec": {
                    "clusterIP": cluster_ip(first + offset),
                    "selector": {"app": name},
                    "ports": [port],
                },
            }
        )
    return services


def addresses_of(namespace_index: int) -> dict[ServiceRef, ServiceAddress]:
    """What a resolver answers for the namespace's Services."""
    return {
        ServiceRef(s["metadata"]["namespace"], s["metadata"]["name"]): ServiceAddress(
            s["spec"]["clusterIP"], tuple(p["port"] for p in s["spec"]["ports"])
        )
        for s in services_of(namespace_index)
    }


def _envoy_filter(slot: Slot, spec: dict[str, Any], **annotations: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": slot.name, "namespace": slot.namespace, "labels": {"app": "gateway"}}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata,
        "spec": spec,
    }


def _gateway(slot: Slot) -> dict[str, Any]:
    return {"labels": {"gateway.networking.k8s.io/gateway-name": f"{slot.name}-gateway"}}


def _http_filter(operation: str, sub_filter: str | None, value: dict[str, Any]) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "filterChain": {"filter": {"name": "envoy.filters.network.http_connection_manager"}}
    }
    if sub_filter is not None:
        listener["filterChain"]["filter"]["subFilter"] = {"name": sub_filter}
    return {
        "applyTo": "HTTP_FILTER",
        "match": {"context": "GATEWAY", "listener": listener},
        "patch": {"operation": operation, "value": value},
    }


def _before_router(slot: Slot, value: dict[str, Any]) -> dict[str, Any]:
    """An EnvoyFilter of the gateway that inserts the HTTP filter `value` before the router."""
    return _envoy_filter(
        slot,
        {
            "workloadSelector": _gateway(slot),
            "configPatches": [_http_filter("INSERT_BEFORE", "envoy.filters.http.router", value)],
        },
    )


def _lua(slot: Slot) -> dict[str, Any]:
    code = (
        "function envoy_on_request(handle)\n"
        f'  handle:headers():add("x-seen-by", "{slot.namespace}/{slot.name}")\n'
        "end\n"
        "function envoy_on_response(handle)\n"
        '  handle:headers():add("x-gateway", "scale")\n'
        "end\n"
    )
    value = {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": code},
        },
    }
    return _before_router(slot, value)


def _wasm(slot: Slot) -> dict[str, Any]:
    value = {
        "name": "istio.basic_auth",
        "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "value": {
                "config": {
                    "root_id": "basic_auth_root",
                    "vm_config": {
                        "vm_id": "basic_auth",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": "/var/local/lib/wasm-filters/basic-auth.wasm"}},
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": '{"basic_auth_rules":[{"prefix":"/api","request_methods":["GET","POST"],'
                        '"credentials":["ok:test","YWRtaW4zOmFkbWluMw=="]}]}',
                    },
                }
            },
        },
    }
    return _before_router(slot, value)


def _cluster_tweak(slot: Slot) -> dict[str, Any]:
    patch = {
        "applyTo": "CLUSTER",
        "match": {"context": "GATEWAY", "cluster": {"service": f"app-4.{slot.namespace}.svc.cluster.local"}},
        "patch": {
            "operation": "MERGE",
            "value": {
                "connect_timeout": "2s",
                "circuit_breakers": {"thresholds": [{"max_connections": 1000, "max_pending_requests": 1000}]},
            },
        },
    }
    return _envoy_filter(slot, {"workloadSelector": _gateway(slot), "configPatches": [patch]})


def _rate_limit(slot: Slot) -> dict[str, Any]:
    cluster = f"rate_limit_cluster_{slot.name}"
    http_filter = _http_filter(
        "INSERT_BEFORE",
        "envoy.filters.http.router",
        {
            "name": "envoy.filters.http.ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                "domain": "gateway-ratelimit",
                "failure_mode_deny": True,
                "timeout": "10s",
                "rate_limit_service": {
                    "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "10s"},
                    "transport_api_version": "V3",
                },
            },
        },
    )
    cluster_patch = {
        "applyTo": "CLUSTER",
        "match": {"context": "GATEWAY"},
        "patch": {
            "operation": "ADD",
            "value": {
                "name": cluster,
                "type": "STRICT_DNS",
                "connect_timeout": "10s",
                "lb_policy": "ROUND_ROBIN",
                "http2_protocol_options": {},
                "load_assignment": {
                    "cluster_name": cluster,
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "ratelimit.istio-system.svc.cluster.local",
                                                "port_value": 8081,
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            },
        },
    }
    return _envoy_filter(
        slot, {"workloadSelector": _gateway(slot), "configPatches": [http_filter, cluster_patch]}
    )


def _epp_bad(slot: Slot) -> dict[str, Any]:
    """The incident's filter (seed-bad), for this slot's gateway, cluster and EPP Service."""
    cluster = f"{slot.name}-cluster"
    mode = {"request_header_mode": "SEND", "request_body_mode": "STREAMED"}
    http_filter = _http_filter(
        "INSERT_BEFORE",
        "envoy.filters.http.router",
        {
            "name": "envoy.filters.http.ext_proc",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "10s"},
                "failure_mode_allow": False,
                "message_timeout": "5s",
                "processing_mode": {**mode, "response_header_mode": "SKIP", "response_body_mode": "NONE"},
            },
        },
    )
    address = f"{slot.service}.{slot.namespace}.svc.cluster.local"
    cluster_patch = {
        "applyTo": "CLUSTER",
        "match": {"context": "GATEWAY"},
        "patch": {
            "operation": "ADD",
            "value": {
                "name": cluster,
                "type": "STRICT_DNS",
                "connect_timeout": "5s",
                "lb_policy": "ROUND_ROBIN",
                "load_assignment": {
                    "cluster_name": cluster,
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {"address": address, "port_value": EPP_PORT}
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            },
        },
    }
    route = {
        "applyTo": "HTTP_ROUTE",
        "match": {"context": "GATEWAY"},
        "patch": {
            "operation": "MERGE",
            "value": {
                "typed_per_filter_config": {
                    "envoy.filters.http.ext_proc": {
                        "@type": PER_ROUTE,
                        "overrides": {"processing_mode": dict(mode)},
                    }
                }
            },
        },
    }
    return _envoy_filter(
        slot, {"workloadSelector": _gateway(slot), "configPatches": [http_filter, cluster_patch, route]}
    )


def _bbr(slot: Slot) -> dict[str, Any]:
    """GIE body-based routing: its own ext_proc filter through Istio's Service cluster."""
    modes = ("request_header_mode", "response_header_mode", "request_trailer_mode", "response_trailer_mode")
    mode: dict[str, str] = dict.fromkeys(modes, "SEND")
    mode |= {"request_body_mode": "FULL_DUPLEX_STREAMED", "response_body_mode": "FULL_DUPLEX_STREAMED"}
    value = {
        "name": "envoy.filters.http.ext_proc.bbr",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "failure_mode_allow": False,
            "processing_mode": mode,
            "grpc_service": {
                "envoy_grpc": {
                    "cluster_name": f"outbound|{BBR_PORT}||{slot.service}.{slot.namespace}.svc.cluster.local"
                }
            },
        },
    }
    return _envoy_filter(
        slot,
        {"workloadSelector": _gateway(slot), "configPatches": [_http_filter("INSERT_FIRST", None, value)]},
    )


BUILDERS = {
    Kind.LUA: _lua,
    Kind.WASM: _wasm,
    Kind.CLUSTER_TWEAK: _cluster_tweak,
    Kind.RATE_LIMIT: _rate_limit,
    Kind.EPP_BAD: _epp_bad,
    Kind.BBR: _bbr,
}


def corrected(document: dict[str, Any], addresses: dict[ServiceRef, ServiceAddress]) -> dict[str, Any]:
    """The form the engine's own fix writes (what the webhook and reconciler produce)."""
    evaluation = evaluate(document, policy=default_policy(), resolver=StaticResolver(addresses))
    patch: tuple[PatchOp, ...] = evaluation.patch
    return apply_patch(document, patch) if patch else document


def filters_of(namespace_index: int) -> list[tuple[Slot, dict[str, Any]]]:
    """The 10 EnvoyFilters of one namespace with their slots."""
    addresses: dict[ServiceRef, ServiceAddress] | None = None
    result = []
    for slot in slots_of(namespace_index):
        if slot.kind is Kind.EPP_GOOD:
            addresses = addresses or addresses_of(namespace_index)
            document = corrected(_epp_bad(slot), addresses)
        else:
            document = BUILDERS[slot.kind](slot)
        result.append((slot, document))
    return result


def namespaces(total_filters: int) -> Iterator[int]:
    return iter(range(max(1, total_filters // FILTERS_PER_NAMESPACE)))
