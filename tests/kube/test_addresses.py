"""The one Service decoder, for each Service shape, in both forms the client hands over: plain JSON (the
cache's list and watch) and a `V1Service` (the resolver's GET, deserialized by the real client)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from kube.addresses import address_of, plain_json, ref_of
from policies import ServiceAddress, ServiceLookupError, ServiceNotFound, ServiceRef

REF = ServiceRef("llm-d", "epp")


def service(spec: dict[str, Any] | None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "epp", "namespace": "llm-d", "resourceVersion": "7"},
    }
    if spec is not None:
        document["spec"] = spec
    return document


def as_model(document: dict[str, Any]) -> Any:
    """The `V1Service` the client's own deserializer makes of this JSON, as a GET returns it."""
    with client.ApiClient(client.Configuration()) as api:
        return api.deserialize(json.dumps(document), "V1Service", "application/json")


FORMS = [pytest.param(lambda d: d, id="json"), pytest.param(as_model, id="V1Service")]

ADDRESSES = [
    pytest.param(
        {"type": "ClusterIP", "clusterIP": "10.96.45.12", "ports": [{"port": 9002}, {"port": 9090}]},
        ServiceAddress("10.96.45.12", (9002, 9090)),
        id="cluster-ip",
    ),
    pytest.param(
        {"clusterIP": "10.96.0.7", "ports": [{"name": "grpc", "port": 9002, "targetPort": "grpc"}]},
        ServiceAddress("10.96.0.7", (9002,)),
        id="cluster-ip-type-defaulted",
    ),
    pytest.param(
        {"type": "NodePort", "clusterIP": "10.96.0.8", "ports": [{"port": 80, "nodePort": 30080}]},
        ServiceAddress("10.96.0.8", (80,)),
        id="node-port",
    ),
    pytest.param(
        {"type": "LoadBalancer", "clusterIP": "fd00:10:96::a", "ports": [{"port": 443}]},
        ServiceAddress("fd00:10:96::a", (443,)),
        id="load-balancer-ipv6",
    ),
    pytest.param(
        {"type": "ClusterIP", "clusterIP": "10.96.0.9"},
        ServiceAddress("10.96.0.9", ()),
        id="no-ports",
    ),
]

REFUSALS = [
    pytest.param(
        {"type": "ClusterIP", "clusterIP": "None", "ports": [{"port": 9002}]}, "headless", id="headless"
    ),
    pytest.param({"type": "ClusterIP", "ports": [{"port": 9002}]}, "headless", id="no-cluster-ip"),
    pytest.param(
        {"type": "ExternalName", "externalName": "epp.example.com"},
        "ExternalName Service \\(it names epp.example.com\\)",
        id="external-name",
    ),
    pytest.param(
        {"type": "ExternalName", "externalName": "epp.example.com", "clusterIP": "10.96.0.1"},
        "ExternalName",
        id="external-name-with-stale-cluster-ip",
    ),
    pytest.param(None, "has no spec", id="no-spec"),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("spec", "expected"), ADDRESSES)
def test_a_service_with_a_cluster_ip_gives_its_ip_and_ports(
    form: Any, spec: dict[str, Any], expected: ServiceAddress
) -> None:
    assert address_of(REF, form(service(spec))) == expected


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("spec", "reason"), REFUSALS)
def test_a_service_without_a_pinnable_ip_is_not_found_with_the_reason(
    form: Any, spec: dict[str, Any] | None, reason: str
) -> None:
    answer = address_of(REF, form(service(spec)))
    assert isinstance(answer, ServiceNotFound)
    assert answer.ref == REF
    with pytest.raises(ServiceLookupError, match=reason):
        raise answer


def test_what_is_not_a_service_object_has_no_address() -> None:
    assert isinstance(address_of(REF, None), ServiceNotFound)
    assert isinstance(address_of(REF, {"spec": "text"}), ServiceNotFound)
    odd_ports = {"clusterIP": "10.0.0.1", "ports": [{"port": "80"}, "x", {"name": "no-number"}, {"port": 81}]}
    assert address_of(REF, service(odd_ports)) == ServiceAddress("10.0.0.1", (81,))


@pytest.mark.parametrize("form", FORMS)
def test_the_namespace_and_name_are_read_from_either_form(form: Any) -> None:
    assert ref_of(form(service({"clusterIP": "10.0.0.1"}))) == REF


def test_an_object_without_namespace_or_name_has_no_ref() -> None:
    assert ref_of({"metadata": {"name": "epp"}}) is None
    assert ref_of({"kind": "Service"}) is None
    assert ref_of(client.V1Service(metadata=client.V1ObjectMeta(namespace="llm-d"))) is None


def test_a_model_becomes_the_json_it_came_from() -> None:
    document = service({"type": "ClusterIP", "clusterIP": "10.96.45.12", "ports": [{"port": 9002}]})
    back = plain_json(as_model(document))
    assert back["metadata"] == document["metadata"]
    assert back["spec"]["clusterIP"] == "10.96.45.12"
    assert back["spec"]["ports"] == [{"port": 9002}]
