"""The control plane serves the real CRDs, taken from the Go modules pinned in `controlplane/crds.pins`:
Istio's schema and validation rules and the InferencePool's defaults and rules are enforced by the
apiserver, where a hand-written CRD with a free-form `spec` would accept anything."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.documents import load_document, renamed
from tests.e2e.cluster import E2E_DIR, Kubectl
from tests.e2e.seeds import dump

pytestmark = pytest.mark.e2e

PINS = E2E_DIR / "controlplane" / "crds.pins"
GIE_MODULE = "sigs.k8s.io/gateway-api-inference-extension"


def pinned_version(module: str) -> str:
    """The version crds.pins gives `module`."""
    for line in PINS.read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == module:
            return fields[1]
    raise AssertionError(f"crds.pins pins no {module}")


def seed_filter(name: str, namespace: str) -> dict[str, Any]:
    return renamed(load_document("seed-bad.yaml"), name, namespace)


def rejection(kubectl: Kubectl, document: dict[str, Any]) -> str:
    """Apply `document`, expecting the apiserver to refuse it; kubectl's error output."""
    result = kubectl.apply(dump(document), check=False)
    assert result.returncode != 0, f"the apiserver stored it: {result.stdout}"
    return result.stderr


def test_an_envoyfilter_with_an_unknown_apply_to_is_rejected_by_istios_enum(
    kubectl: Kubectl, namespace: str
) -> None:
    document = seed_filter("bad-apply-to", namespace)
    document["spec"]["configPatches"][0]["applyTo"] = "HTTP_FILTERS"
    message = rejection(kubectl, document)
    assert 'spec.configPatches[0].applyTo: Unsupported value: "HTTP_FILTERS"' in message
    assert '"HTTP_FILTER"' in message
    assert '"LISTENER_FILTER"' in message


def test_an_envoyfilter_with_an_unknown_spec_field_is_rejected_by_istios_schema(
    kubectl: Kubectl, namespace: str
) -> None:
    document = seed_filter("unknown-field", namespace)
    document["spec"]["configPatchez"] = document["spec"].pop("configPatches")
    message = rejection(kubectl, document)
    assert 'unknown field "spec.configPatchez"' in message


def test_an_envoyfilter_with_target_refs_and_a_workload_selector_breaks_istios_rule(
    kubectl: Kubectl, namespace: str
) -> None:
    document = seed_filter("two-selectors", namespace)
    document["spec"]["targetRefs"] = [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "inference-gateway"}
    ]
    message = rejection(kubectl, document)
    assert "only one of targetRefs or workloadSelector can be set" in message


def test_an_envoyfilter_keeps_unknown_fields_inside_a_patch_value(kubectl: Kubectl, namespace: str) -> None:
    document = seed_filter("free-form-value", namespace)
    document["spec"]["configPatches"][0]["patch"]["value"]["not_an_envoy_field"] = {"kept": True}
    kubectl.apply(dump(document))
    stored = kubectl.get_json("envoyfilter", "free-form-value", "-n", namespace)
    assert stored["spec"] == document["spec"]


def destination_rule(name: str, namespace: str, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "host": "gaie-inference-scheduling-epp.llm-d-inference-scheduler.svc.cluster.local",
            "trafficPolicy": {"tls": {"mode": mode, "insecureSkipVerify": True}},
        },
    }


def test_a_destination_rule_with_simple_tls_is_stored(kubectl: Kubectl, namespace: str) -> None:
    document = destination_rule("epp-tls", namespace, "SIMPLE")
    kubectl.apply(dump(document))
    stored = kubectl.get_json("destinationrules.networking.istio.io", "epp-tls", "-n", namespace)
    assert stored["spec"] == document["spec"]


def test_a_destination_rule_with_an_unknown_tls_mode_is_rejected(kubectl: Kubectl, namespace: str) -> None:
    message = rejection(kubectl, destination_rule("epp-tls-bad", namespace, "STRICT"))
    assert 'spec.trafficPolicy.tls.mode: Unsupported value: "STRICT"' in message


def inference_pool(name: str, namespace: str, picker: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "vllm-llama3-8b-instruct"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": picker,
        },
    }


def test_an_inference_pool_with_an_endpoint_picker_ref_is_stored_with_the_crds_defaults(
    kubectl: Kubectl, namespace: str
) -> None:
    picker = {"name": "gaie-inference-scheduling-epp", "port": {"number": 9002}}
    kubectl.apply(dump(inference_pool("pool", namespace, picker)))
    stored = kubectl.get_json("inferencepools.inference.networking.k8s.io", "pool", "-n", namespace)
    expected = copy.deepcopy(picker) | {"group": "", "kind": "Service", "failureMode": "FailClose"}
    assert stored["spec"]["endpointPickerRef"] == expected
    assert stored["spec"]["targetPorts"] == [{"number": 8000}]
    assert stored["spec"]["appProtocol"] == "http"


def test_an_inference_pool_whose_service_picker_has_no_port_breaks_the_crds_rule(
    kubectl: Kubectl, namespace: str
) -> None:
    message = rejection(kubectl, inference_pool("no-port", namespace, {"name": "epp"}))
    assert "port is required when kind is 'Service' or unspecified" in message


def test_the_inference_pool_crd_comes_from_the_pinned_module_version(kubectl: Kubectl) -> None:
    crd = kubectl.get_json("crd", "inferencepools.inference.networking.k8s.io")
    bundle = crd["metadata"]["annotations"]["inference.networking.k8s.io/bundle-version"]
    assert bundle == pinned_version(GIE_MODULE)
