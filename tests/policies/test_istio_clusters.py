"""Istio's own `outbound|PORT|SUBSET|FQDN` clusters: Istio defines them from the Service, so EPX007 checks
the Service has the port, HTTP/2 comes from the port's appProtocol or name, and TLS from a DestinationRule."""

from __future__ import annotations

from typing import Any

import pytest

from policies.findings import Level
from tests.policies.shapes import (
    BBR,
    MERGE_EPP,
    SEMANTIC,
    destination_rule,
    inference_pool,
    inputs,
    load_shape,
    only,
    rules_of,
    service_document,
)

CLUSTER_NAME_PATH = "/spec/configPatches/0/patch/value/typed_config/grpc_service/envoy_grpc/cluster_name"


def merge(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [*load_shape("istio-merge"), *extra]


def picker_service(*ports: dict[str, Any]) -> dict[str, Any]:
    return service_document(MERGE_EPP, "10.96.30.7", ports)


# EPX007: the Service must have the cluster's port -------------------------------------------------------


def test_an_istio_cluster_whose_service_has_the_port_is_defined() -> None:
    documents = merge(picker_service({"name": "grpc", "port": 9002}))
    assert "EPX007" not in rules_of(inputs(documents).evaluate(documents[0]).findings)


def test_an_istio_cluster_whose_service_lacks_the_port_is_denied() -> None:
    documents = merge(picker_service({"name": "grpc", "port": 9090}, {"name": "metrics", "port": 9091}))
    (missing,) = only(inputs(documents).evaluate(documents[0]).findings, "EPX007")
    assert missing.level is Level.ENFORCE
    assert missing.path == CLUSTER_NAME_PATH
    assert "Service models/tinyllama-epp has no port 9002 (9090, 9091)" in missing.message
    assert not missing.fixable


@pytest.mark.parametrize(
    ("settled", "level"), [(True, Level.ENFORCE), (False, Level.WARN)], ids=["settled", "admission"]
)
def test_an_istio_cluster_whose_service_does_not_exist_is_denied_only_when_settled(
    settled: bool, level: Level
) -> None:
    """At admission the Service may come later in the same apply, as a cluster of another EnvoyFilter may."""
    documents = merge()
    result = inputs(documents, absent=[MERGE_EPP], settled=settled).evaluate(documents[0])
    (missing,) = only(result.findings, "EPX007")
    assert missing.level is level
    assert "Service models/tinyllama-epp does not exist in the cluster" in missing.message
    if not settled:
        assert "resolves once it is stored" in missing.message


def test_an_istio_cluster_whose_service_is_not_in_the_inputs_is_not_judged() -> None:
    documents = merge()
    assert "EPX007" not in rules_of(inputs(documents).evaluate(documents[0]).findings)


def test_a_declared_service_port_answers_for_an_istio_cluster() -> None:
    documents = merge()
    result = inputs(documents, declared={MERGE_EPP: "10.96.30.7:9090"}).evaluate(documents[0])
    (missing,) = only(result.findings, "EPX007")
    assert "has no port 9002 (9090)" in missing.message


def test_another_users_istio_cluster_without_the_port_is_denied_too() -> None:
    documents = [*load_shape("semantic-router"), service_document(SEMANTIC, "10.96.30.8", [{"port": 8080}])]
    result = inputs(documents).evaluate(documents[0])
    (missing,) = only(result.findings, "EPX007")
    assert missing.level is Level.ENFORCE
    assert missing.role == "other"
    assert result.patch == ()


def test_a_named_cluster_that_looks_like_istios_but_is_added_is_judged_as_a_cluster() -> None:
    """A document may ADD a cluster under Istio's naming; the DNS rule then judges the added cluster."""
    name = "outbound|9002||granite-picker.llm-serving.svc.cluster.local"
    documents = load_shape("epp-split", {"granite-picker-grpc": name})
    assert "EPX007" not in rules_of(inputs(documents).evaluate(documents[0]).findings)
    assert "EPX003" in rules_of(inputs(documents).evaluate(documents[1]).findings)


# EPX005: HTTP/2 from the Service port ---------------------------------------------------------------------

PORT_PROTOCOLS = {
    "grpc- name": ({"name": "grpc-picker", "port": 9002}, False),
    "grpc name": ({"name": "grpc", "port": 9002}, False),
    "h2c name": ({"name": "h2c", "port": 9002}, False),
    "http2- name": ({"name": "http2-picker", "port": 9002}, False),
    "h2c appProtocol": ({"name": "http", "port": 9002, "appProtocol": "kubernetes.io/h2c"}, False),
    "grpc appProtocol": ({"port": 9002, "appProtocol": "grpc"}, False),
    "unnamed port: nothing says": ({"port": 9002}, False),
    "http name": ({"name": "http", "port": 9002}, True),
    "http- name": ({"name": "http-picker", "port": 9002}, True),
    "tcp name": ({"name": "tcp", "port": 9002}, True),
    "grpc-web name": ({"name": "grpc-web", "port": 9002}, True),
    "http appProtocol on a grpc name": ({"name": "grpc", "port": 9002, "appProtocol": "http"}, True),
}


@pytest.mark.parametrize(("port", "denied"), PORT_PROTOCOLS.values(), ids=PORT_PROTOCOLS.keys())
def test_an_istio_cluster_is_denied_when_the_service_port_declares_no_http2(
    port: dict[str, Any], denied: bool
) -> None:
    documents = merge(picker_service(port))
    findings = only(inputs(documents).evaluate(documents[0]).findings, "EPX005")
    if not denied:
        assert findings == []
        return
    (finding,) = findings
    assert finding.level is Level.ENFORCE
    assert finding.path == CLUSTER_NAME_PATH
    assert "Service models/tinyllama-epp port 9002" in finding.message
    assert "appProtocol kubernetes.io/h2c" in finding.message
    assert not finding.fixable


def test_another_users_istio_cluster_on_an_http_port_is_denied_without_a_fix() -> None:
    documents = [*load_shape("bbr"), service_document(BBR, "10.96.30.9", [{"name": "http", "port": 9004}])]
    result = inputs(documents).evaluate(documents[0])
    (finding,) = only(result.findings, "EPX005")
    assert finding.level is Level.ENFORCE
    assert finding.role == "other"
    assert result.patch == ()


# EPX010: TLS from a DestinationRule ----------------------------------------------------------------------

POOL = inference_pool(MERGE_EPP, name="tinyllama")


@pytest.mark.parametrize(
    ("extra", "level"),
    [
        ((POOL, destination_rule(MERGE_EPP, "DISABLE")), Level.ENFORCE),
        ((POOL,), Level.WARN),
        ((POOL, destination_rule(MERGE_EPP, "SIMPLE")), None),
        ((POOL, destination_rule(MERGE_EPP, "MUTUAL")), None),
        ((destination_rule(MERGE_EPP, "SIMPLE"),), Level.ENFORCE),
        ((destination_rule(MERGE_EPP, "DISABLE"),), None),
        ((), None),
    ],
    ids=[
        "gie profile, DISABLE",
        "gie profile, no DestinationRule",
        "gie profile, SIMPLE",
        "gie profile, MUTUAL",
        "headers profile, SIMPLE",
        "headers profile, DISABLE",
        "headers profile, no DestinationRule",
    ],
)
def test_istio_cluster_tls_comes_from_the_destination_rule(
    extra: tuple[dict[str, Any], ...], level: Level | None
) -> None:
    documents = merge(*extra)
    findings = only(inputs(documents).evaluate(documents[0]).findings, "EPX010")
    if level is None:
        assert findings == []
        return
    (finding,) = findings
    assert finding.level is level
    assert finding.path == CLUSTER_NAME_PATH
    assert not finding.fixable
    if level is Level.WARN:
        assert (
            "no DestinationRule for tinyllama-epp.models.svc.cluster.local is in the context"
            in finding.message
        )


def test_a_port_level_tls_setting_wins_over_the_hosts() -> None:
    rule = destination_rule(MERGE_EPP, "DISABLE")
    rule["spec"]["trafficPolicy"]["portLevelSettings"] = [
        {"port": {"number": 9002}, "tls": {"mode": "SIMPLE"}}
    ]
    documents = merge(POOL, rule)
    assert "EPX010" not in rules_of(inputs(documents).evaluate(documents[0]).findings)


@pytest.mark.parametrize("mode", ["SIMPLE", "DISABLE"], ids=["simple", "disable"])
def test_tls_of_another_users_istio_cluster_is_not_judged(mode: str) -> None:
    documents = [*load_shape("bbr")[:1], destination_rule(BBR, mode)]
    assert "EPX010" not in rules_of(inputs(documents).evaluate(documents[0]).findings)


@pytest.mark.parametrize("kind", ["headless", "ExternalName"], ids=["headless", "external-name"])
def test_an_istio_cluster_of_a_service_without_cluster_ip_is_defined(kind: str) -> None:
    """Istio builds `outbound|...` clusters for headless and ExternalName Services too: only a STATIC pin
    needs a ClusterIP, so EPX007 has nothing to say about such a Service's Istio cluster."""
    from policies import Context, ServiceWithoutClusterIP, evaluate
    from policies.policy import default_policy

    class NoClusterIP:
        def lookup(self, ref: Any) -> Any:
            raise ServiceWithoutClusterIP(ref, f"is {kind} (no ClusterIP)")

    documents = merge()
    result = evaluate(documents[0], policy=default_policy(), resolver=NoClusterIP(), context=Context())
    assert "EPX007" not in rules_of(result.findings)
