"""Do no harm, end to end: the webhook and the reconciler on a real kube-apiserver with Istio's and GIE's
real CRDs judge only the EPP's filter, in the cluster's context.

- An InferencePool names the EPP Service: the EPP's bad filter is stored corrected in the GIE form.
- A body-based-routing filter and a sidecar ext_proc filter are stored exactly as written.
- A filter whose cluster a second EnvoyFilter of the same `kubectl apply -f` adds applies in its own order,
  and the reconciler then finds the cluster.
- The reconciler leaves other users' ext_proc filters alone.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.documents import load_document, renamed
from tests.e2e.cluster import ControlPlaneInfo, Kubectl, cli_help, find_cli, reconcile_argv
from tests.e2e.objects import EppService
from tests.e2e.seeds import dump
from tests.e2e.webhook_server import WebhookServer, register_webhooks, unregister_webhooks
from tests.polling import WaitFailed, wait_until

pytestmark = pytest.mark.e2e

EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
HCM = "envoy.filters.network.http_connection_manager"
EPP = "llm-picker"
BBR = "body-based-router"


@pytest.fixture(scope="module")
def webhook(
    control_plane: ControlPlaneInfo, kubectl: Kubectl, epp_service: EppService
) -> Iterator[WebhookServer]:
    """`serve` running and registered for this module (the probe is the seed's filter, in the seed's
    namespace, where `epp_service` lives)."""
    server = WebhookServer.create(find_cli(), control_plane.kubeconfig, cli_help("serve"))
    try:
        server.start()
        probe = renamed(load_document("seed-bad.yaml"), "roles-webhook-probe")
        register_webhooks(kubectl, server, probe)
        yield server
    finally:
        unregister_webhooks(kubectl)
        server.remove()


def service(namespace: str, name: str, port: int, *, app_protocol: str | None = None) -> dict[str, Any]:
    spec_port: dict[str, Any] = {"name": "grpc", "port": port, "targetPort": port, "protocol": "TCP"}
    if app_protocol is not None:
        spec_port["appProtocol"] = app_protocol
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": [spec_port]},
    }


def inference_pool(namespace: str, picker: str) -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": "pool", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "model-server"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"name": picker, "port": {"number": 9002}},
        },
    }


def epp_filter(namespace: str, name: str, *, cluster: str, host: str | None) -> dict[str, Any]:
    """The incident's bad filter shape for the EPP at `host` (a cluster added here when `host` is given)."""
    patches: list[dict[str, Any]] = [
        {
            "applyTo": "HTTP_FILTER",
            "match": {
                "context": "GATEWAY",
                "listener": {
                    "filterChain": {
                        "filter": {"name": HCM, "subFilter": {"name": "envoy.filters.http.router"}}
                    }
                },
            },
            "patch": {
                "operation": "INSERT_BEFORE",
                "value": {
                    "name": "envoy.filters.http.ext_proc",
                    "typed_config": {
                        "@type": EXT_PROC,
                        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                        "processing_mode": {"request_header_mode": "SEND", "request_body_mode": "STREAMED"},
                    },
                },
            },
        }
    ]
    if host is not None:
        patches.append(cluster_patch(cluster, host))
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"configPatches": patches},
    }


def cluster_patch(name: str, host: str, *, kind: str = "STRICT_DNS") -> dict[str, Any]:
    return {
        "applyTo": "CLUSTER",
        "match": {"context": "GATEWAY"},
        "patch": {
            "operation": "ADD",
            "value": {
                "name": name,
                "type": kind,
                "connect_timeout": "5s",
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {"socket_address": {"address": host, "port_value": 9002}}
                                    }
                                }
                            ]
                        }
                    ],
                },
            },
        },
    }


def bbr_filter(namespace: str) -> dict[str, Any]:
    """GIE's body-based routing as its chart renders it for Istio (INSERT_FIRST, FULL_DUPLEX)."""
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": BBR, "namespace": namespace},
        "spec": {
            "configPatches": [
                {
                    "applyTo": "HTTP_FILTER",
                    "match": {"listener": {"filterChain": {"filter": {"name": HCM}}}},
                    "patch": {
                        "operation": "INSERT_FIRST",
                        "value": {
                            "name": "envoy.filters.http.ext_proc",
                            "typed_config": {
                                "@type": EXT_PROC,
                                "failure_mode_allow": False,
                                "allow_mode_override": True,
                                "processing_mode": {
                                    "request_header_mode": "SEND",
                                    "response_header_mode": "SKIP",
                                    "request_body_mode": "FULL_DUPLEX_STREAMED",
                                    "response_body_mode": "NONE",
                                    "request_trailer_mode": "SEND",
                                    "response_trailer_mode": "SKIP",
                                },
                                "grpc_service": {
                                    "envoy_grpc": {
                                        "cluster_name": f"outbound|9004||{BBR}.{namespace}.svc.cluster.local"
                                    }
                                },
                            },
                        },
                    },
                }
            ]
        },
    }


def sidecar_filter(namespace: str) -> dict[str, Any]:
    """An ext_proc in front of an application (context ANY, google_grpc), inserted before the router."""
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "orders-ext-proc", "namespace": namespace},
        "spec": {
            "workloadSelector": {"labels": {"app": "orders"}},
            "configPatches": [
                {
                    "applyTo": "HTTP_FILTER",
                    "match": {
                        "context": "ANY",
                        "listener": {
                            "filterChain": {
                                "filter": {"name": HCM, "subFilter": {"name": "envoy.filters.http.router"}}
                            }
                        },
                    },
                    "patch": {
                        "operation": "INSERT_BEFORE",
                        "value": {
                            "name": "envoy.filters.http.ext_proc",
                            "typed_config": {
                                "@type": EXT_PROC,
                                "grpc_service": {
                                    "google_grpc": {
                                        "target_uri": "processor.default.svc.cluster.local:50051",
                                        "stat_prefix": "ext_proc",
                                    },
                                    "timeout": "0.5s",
                                },
                                "processing_mode": {"request_header_mode": "SEND"},
                            },
                        },
                    },
                }
            ],
        },
    }


def stored(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return kubectl.get_json("envoyfilter", name, "-n", namespace)


def processing_mode(document: dict[str, Any]) -> dict[str, Any]:
    for patch in document["spec"]["configPatches"]:
        if patch["applyTo"] == "HTTP_FILTER":
            mode: dict[str, Any] = patch["patch"]["value"]["typed_config"]["processing_mode"]
            return mode
    raise AssertionError("no HTTP_FILTER patch")


def override_mode(document: dict[str, Any]) -> dict[str, Any]:
    """The processing_mode of the per-route override the fix adds for the EPP's filter."""
    for patch in document["spec"]["configPatches"]:
        if patch["applyTo"] == "HTTP_ROUTE":
            entry = patch["patch"]["value"]["typed_per_filter_config"]["envoy.filters.http.ext_proc"]
            mode: dict[str, Any] = entry["overrides"]["processing_mode"]
            return mode
    return {}


LAST_ANSWER: list[str] = []


def dry_run(kubectl: Kubectl, document: dict[str, Any]) -> dict[str, Any] | None:
    result = kubectl.apply(dump(document), "--dry-run=server", "-o", "json", check=False)
    LAST_ANSWER[:] = [result.stdout[-3000:] + result.stderr[-2000:]]
    if result.returncode != 0:
        return None
    returned: dict[str, Any] = json.loads(result.stdout)
    return returned


def test_the_epp_filter_of_an_inference_pool_is_stored_in_the_gie_form(
    webhook: WebhookServer, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply(dump(service(namespace, EPP, 9002), inference_pool(namespace, EPP)))
    bad = epp_filter(
        namespace, "epp-ext-proc", cluster="epp-cluster", host=f"{EPP}.{namespace}.svc.cluster.local"
    )

    def sees_the_pool() -> bool:
        answer = dry_run(kubectl, bad)
        return answer is not None and override_mode(answer).get("request_body_mode") == "FULL_DUPLEX_STREAMED"

    try:
        wait_until(
            sees_the_pool,
            "the webhook to see the InferencePool",
            timeout=30,
            interval=0.25,
            alive=webhook.process.death,
        )
    except WaitFailed as error:
        raise AssertionError(f"{error}; last answer:\n{LAST_ANSWER}\n{webhook.log_tail()}") from error
    result = kubectl.apply(dump(bad), check=False)
    assert result.returncode == 0, f"{result.stderr}\n{webhook.log_tail()}"

    document = stored(kubectl, namespace, "epp-ext-proc")
    assert processing_mode(document)["request_header_mode"] == "SKIP"
    override = override_mode(document)
    assert override["request_header_mode"] == "SEND"
    assert override["request_body_mode"] == "FULL_DUPLEX_STREAMED", "the GIE EPP answers after the body"
    assert override["request_trailer_mode"] == "SEND"
    patches = document["spec"]["configPatches"]
    assert patches[0]["patch"]["operation"] == "REPLACE"
    (cluster,) = [p["patch"]["value"] for p in patches if p["applyTo"] == "CLUSTER"]
    ip = kubectl.run(
        "get", "service", EPP, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout.strip()
    assert cluster["type"] == "STATIC"
    assert json.dumps(cluster).count(ip) == 1
    assert cluster["transport_socket"]["name"] == "envoy.transport_sockets.tls", "the GIE EPP serves TLS"
    routes = [p for p in patches if p["applyTo"] == "HTTP_ROUTE"]
    assert routes[0]["match"] == {"context": "GATEWAY"}


def test_other_ext_proc_users_filters_are_stored_exactly_as_written(
    webhook: WebhookServer, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply(dump(service(namespace, BBR, 9004, app_protocol="kubernetes.io/h2c")))
    written = [bbr_filter(namespace), sidecar_filter(namespace)]
    result = kubectl.apply(dump(*written), check=False)
    assert result.returncode == 0, f"{result.stderr}\n{webhook.log_tail()}"
    for document in written:
        kept = stored(kubectl, namespace, document["metadata"]["name"])
        assert kept["spec"] == document["spec"]
        assert "extproc-guard.io/epp-service" not in (kept["metadata"].get("annotations") or {})


def reconcile_once(control_plane: ControlPlaneInfo, namespace: str) -> subprocess.CompletedProcess[str]:
    argv = reconcile_argv(control_plane, namespace, "--once")
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_a_cluster_added_by_the_next_object_of_the_same_apply_is_found(
    webhook: WebhookServer, control_plane: ControlPlaneInfo, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply(dump(service(namespace, EPP, 9002)))
    ip = kubectl.run(
        "get", "service", EPP, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout.strip()
    split_filter = epp_filter(namespace, "epp-ext-proc", cluster="epp-split", host=None)
    split_cluster = {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "epp-cluster", "namespace": namespace},
        "spec": {"configPatches": [cluster_patch("epp-split", f"{EPP}.{namespace}.svc.cluster.local")]},
    }
    result = kubectl.apply(dump(split_filter, split_cluster), check=False)
    assert result.returncode == 0, f"filter first, cluster second must apply: {result.stderr}"

    cluster_doc = stored(kubectl, namespace, "epp-cluster")
    value = cluster_doc["spec"]["configPatches"][0]["patch"]["value"]
    assert value["type"] == "STATIC", "the cluster's own document is corrected as the EPP's cluster"
    assert json.dumps(value).count(ip) == 1

    audit = reconcile_once(control_plane, namespace)
    assert "EPX007" not in audit.stdout + audit.stderr, audit.stdout + audit.stderr
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_the_reconciler_leaves_other_ext_proc_users_filters_alone(
    control_plane: ControlPlaneInfo, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply(dump(service(namespace, BBR, 9004, app_protocol="kubernetes.io/h2c")))
    written = [bbr_filter(namespace), sidecar_filter(namespace)]
    kubectl.apply(dump(*written))
    before = {d["metadata"]["name"]: stored(kubectl, namespace, d["metadata"]["name"]) for d in written}

    audit = reconcile_once(control_plane, namespace)
    assert audit.returncode == 0, audit.stdout + audit.stderr

    for name, document in before.items():
        after = stored(kubectl, namespace, name)
        assert after["metadata"]["resourceVersion"] == document["metadata"]["resourceVersion"], name
        assert after["spec"] == document["spec"]
