"""What an informer keeps of a whole object: `decode_object` keys it by namespace/name and drops the fields
no cache reads (`managedFields`, the last-applied annotation) without touching the object it was given."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kube.informer import LAST_APPLIED, decode_object, object_key, slim_object


def envoy_filter() -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {
            "name": "epp-ext-proc",
            "namespace": "istio-system",
            "resourceVersion": "41",
            "annotations": {LAST_APPLIED: '{"huge": "copy"}', "team": "inference"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"configPatches": [{"applyTo": "HTTP_FILTER"}]},
    }


def test_a_cached_object_keeps_everything_but_managed_fields_and_last_applied() -> None:
    original = envoy_filter()
    before = copy.deepcopy(original)
    decoded = decode_object(original)
    assert decoded is not None
    key, slim = decoded
    assert key == ("istio-system", "epp-ext-proc")
    assert "managedFields" not in slim["metadata"]
    assert slim["metadata"]["annotations"] == {"team": "inference"}
    assert slim["metadata"]["resourceVersion"] == "41"
    assert slim["spec"] == original["spec"]
    assert original == before


def test_an_object_without_annotations_keeps_its_metadata_shape() -> None:
    document = {"metadata": {"name": "x", "namespace": "y", "labels": {"a": "b"}}, "spec": {}}
    assert slim_object(document) == document


@pytest.mark.parametrize(
    ("document", "key"),
    [
        pytest.param({"metadata": {"name": "gw", "namespace": "ns"}}, ("ns", "gw"), id="namespaced"),
        pytest.param({"metadata": {"name": "pool-crd"}}, ("", "pool-crd"), id="cluster-scoped"),
        pytest.param({"metadata": {"namespace": "ns"}}, None, id="no-name"),
        pytest.param({"metadata": {"name": ""}}, None, id="empty-name"),
        pytest.param({"kind": "Status"}, None, id="no-metadata"),
    ],
)
def test_objects_are_keyed_by_namespace_and_name(
    document: dict[str, Any], key: tuple[str, str] | None
) -> None:
    assert object_key(document) == key
    assert (decode_object(document) is None) == (key is None)
