"""Objects for the `kube/` cache tests, as the apiserver returns them: Services, and EnvoyFilter patches of
each kind the context cache tells apart (ext_proc, an EPP cluster, Lua, a cluster tweak)."""

from __future__ import annotations

import json
from typing import Any

EXT_PROC = "envoy.filters.http.ext_proc"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def server_metadata(name: str, namespace: str) -> dict[str, Any]:
    """Metadata as the apiserver returns it, with the parts no cache needs."""
    return {
        "name": name,
        "namespace": namespace,
        "uid": "0c6f3c5e-6a53-4ad4-9c44-5d1a0b3c3f2a",
        "resourceVersion": "4711",
        "generation": 3,
        "creationTimestamp": "2026-01-01T12:00:00Z",
        "labels": {"app": name, "team": "inference"},
        "annotations": {LAST_APPLIED: json.dumps({"big": "x" * 500})},
        "managedFields": [
            {
                "manager": "kubectl",
                "operation": "Apply",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:ports": {}}},
            }
        ],
    }


def service(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    ports = [{"name": "grpc-ext-proc", "port": 9002, "targetPort": 9002, "protocol": "TCP"}]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": server_metadata(name, namespace),
        "spec": {
            "clusterIP": "10.96.45.12",
            "clusterIPs": ["10.96.45.12"],
            "ports": ports,
            "selector": {"app": name},
            "sessionAffinity": "None",
            "type": "ClusterIP",
            **spec,
        },
        "status": {"loadBalancer": {}},
    }


def http_filter(name: str, typed_config: dict[str, Any], operation: str = "INSERT_BEFORE") -> dict[str, Any]:
    return {
        "applyTo": "HTTP_FILTER",
        "match": {
            "context": "GATEWAY",
            "listener": {
                "filterChain": {
                    "filter": {
                        "name": "envoy.filters.network.http_connection_manager",
                        "subFilter": {"name": "envoy.filters.http.router"},
                    }
                }
            },
        },
        "patch": {"operation": operation, "value": {"name": name, "typed_config": typed_config}},
    }


LUA = http_filter(
    "envoy.filters.http.lua",
    {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": "function envoy_on_request(h) end"},
    },
)
EXT_PROC_FILTER = http_filter(
    EXT_PROC,
    {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "epp-cluster"}},
        "processing_mode": {"request_header_mode": "SEND", "request_body_mode": "STREAMED"},
    },
)
EPP_CLUSTER = {
    "applyTo": "CLUSTER",
    "match": {"context": "GATEWAY"},
    "patch": {
        "operation": "ADD",
        "value": {
            "name": "epp-cluster",
            "type": "STRICT_DNS",
            "load_assignment": {
                "cluster_name": "epp-cluster",
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": "epp.llm-d.svc", "port_value": 9002}
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
CLUSTER_MERGE = {
    "applyTo": "CLUSTER",
    "match": {"context": "GATEWAY", "cluster": {"service": "web.llm-d.svc.cluster.local"}},
    "patch": {"operation": "MERGE", "value": {"connect_timeout": "2s"}},
}
