"""Every rule: a failing shape, a passing shape and the fix, in both Envoy JSON spellings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from policies.engine import Evaluation, evaluate
from policies.findings import Level
from policies.patch import PatchOp, split_pointer
from policies.policy import Policy, default_policy, load_policy
from policies.resolver import StaticResolver
from tests.policies.filters import (
    CLUSTER_IP,
    EXT_PROC,
    HEADERS_GLOBAL,
    HEADERS_ROUTE,
    HTTP_OPTIONS,
    NAMESPACE,
    SERVICE,
    SPELLINGS,
    Shape,
    build,
    cluster_value,
    filter_config,
    global_mode,
    key,
    resolver,
    resolves,
    route_mode,
    socket_address,
    spelled,
)

GIE_ROUTE = {
    "request_header_mode": "SEND",
    "request_body_mode": "FULL_DUPLEX_STREAMED",
    "response_header_mode": "SEND",
    "response_body_mode": "FULL_DUPLEX_STREAMED",
    "request_trailer_mode": "SEND",
    "response_trailer_mode": "SEND",
}
GIE_GOOD = Shape(route_mode=dict(GIE_ROUTE), tls=True)

Check = Callable[[dict[str, Any], str], None]


def gie_policy() -> Policy:
    return load_policy("profile: gie-epp")


@dataclass(frozen=True)
class Case:
    """A rule's failing shape (the changes to the good one), and what its fix must produce."""

    rule: str
    bad: dict[str, Any]
    fixed: Check | None
    good: Shape = field(default_factory=Shape)
    policy: Callable[[], Policy] = default_policy
    resolve: Callable[[], StaticResolver] = resolver
    level: Level = Level.ENFORCE


def replaced_and_matched(document: dict[str, Any], spelling: str) -> None:
    patch = document["spec"]["configPatches"][0]
    assert patch["patch"]["operation"] == "REPLACE"
    assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == EXT_PROC


def bodies_none(document: dict[str, Any], spelling: str) -> None:
    assert global_mode(document, spelling)[key(spelling, "request_body_mode")] == "NONE"
    assert route_mode(document, spelling)[key(spelling, "request_body_mode")] == "NONE"


def pinned_static(document: dict[str, Any], spelling: str) -> None:
    assert cluster_value(document)["type"] == "STATIC"
    socket = socket_address(document, spelling)
    assert socket == {"address": CLUSTER_IP, key(spelling, "port_value"): 9002}
    annotations = document["metadata"]["annotations"]
    assert annotations["extproc-guard.io/epp-service"] == f"{NAMESPACE}/{SERVICE}"


def global_skip(document: dict[str, Any], spelling: str) -> None:
    assert global_mode(document, spelling)[key(spelling, "request_header_mode")] == "SKIP"
    assert route_mode(document, spelling)[key(spelling, "request_header_mode")] == "SEND"


def route_patch_added(document: dict[str, Any], spelling: str) -> None:
    added = document["spec"]["configPatches"][2]
    assert added["applyTo"] == "HTTP_ROUTE"
    assert added["match"] == {"context": "GATEWAY"}
    assert added["patch"]["operation"] == "MERGE"
    assert route_mode(document, spelling) == spelled(HEADERS_ROUTE, spelling)
    assert global_mode(document, spelling)[key(spelling, "request_header_mode")] == "SKIP"


def speaks_http2(document: dict[str, Any], spelling: str) -> None:
    options = cluster_value(document)[key(spelling, "typed_extension_protocol_options")][HTTP_OPTIONS]
    assert options["@type"] == f"type.googleapis.com/{HTTP_OPTIONS}"
    assert options[key(spelling, "explicit_http_config")] == {key(spelling, "http2_protocol_options"): {}}


def live_address(document: dict[str, Any], spelling: str) -> None:
    assert socket_address(document, spelling)["address"] == CLUSTER_IP


def plaintext(document: dict[str, Any], spelling: str) -> None:
    assert key(spelling, "transport_socket") not in cluster_value(document)


def upstream_tls(document: dict[str, Any], spelling: str) -> None:
    socket = cluster_value(document)[key(spelling, "transport_socket")]
    assert socket["name"] == "envoy.transport_sockets.tls"
    assert socket[key(spelling, "typed_config")]["@type"].endswith("tls.v3.UpstreamTlsContext")


def route_mode_complete(document: dict[str, Any], spelling: str) -> None:
    assert route_mode(document, spelling) == spelled(HEADERS_ROUTE, spelling)


def global_mode_complete(document: dict[str, Any], spelling: str) -> None:
    assert global_mode(document, spelling) == spelled(HEADERS_GLOBAL, spelling)


def gie_body_modes(document: dict[str, Any], spelling: str) -> None:
    expected = {**HEADERS_ROUTE, **{k: v for k, v in GIE_ROUTE.items() if k != "response_header_mode"}}
    assert route_mode(document, spelling) == spelled(expected, spelling)


PARTIAL_ROUTE = {"request_header_mode": "SEND", "request_body_mode": "NONE"}

CASES = {
    "EPX001-insert-before-router": Case(
        "EPX001",
        {"operation": "INSERT_BEFORE", "sub_filter": "envoy.filters.http.router"},
        replaced_and_matched,
    ),
    "EPX001-add-without-sub-filter": Case(
        "EPX001", {"operation": "ADD", "sub_filter": None}, replaced_and_matched
    ),
    "EPX002-streamed-body": Case(
        "EPX002",
        {
            "global_mode": {**HEADERS_GLOBAL, "request_body_mode": "STREAMED"},
            "route_mode": {**HEADERS_ROUTE, "request_body_mode": "STREAMED"},
        },
        bodies_none,
    ),
    "EPX003-strict-dns-host": Case(
        "EPX003",
        {
            "cluster_type": "STRICT_DNS",
            "address": f"{SERVICE}.{NAMESPACE}.svc.cluster.local",
            "annotate": False,
        },
        pinned_static,
    ),
    "EPX003-static-with-host-name": Case(
        "EPX003", {"address": f"{SERVICE}.{NAMESPACE}.svc", "annotate": False}, pinned_static
    ),
    "EPX004-global-send": Case(
        "EPX004", {"global_mode": {**HEADERS_GLOBAL, "request_header_mode": "SEND"}}, global_skip
    ),
    "EPX004-no-route-override": Case("EPX004", {"route_mode": None}, route_patch_added),
    "EPX005-no-http2": Case("EPX005", {"http2": False}, speaks_http2),
    "EPX006-stale-cluster-ip": Case("EPX006", {"address": "10.96.0.99"}, live_address),
    "EPX006-no-service-annotation": Case("EPX006", {"annotate": False}, None),
    "EPX007-undefined-cluster": Case("EPX007", {"cluster_name": "other-cluster"}, None),
    "EPX007-port-not-a-service-port": Case("EPX007", {"port": 9003}, None),
    "EPX008-bad-duration": Case("EPX008", {"timeout": "10 seconds"}, None),
    "EPX008-bad-enum": Case(
        "EPX008", {"route_mode": {**HEADERS_ROUTE, "response_body_mode": "SOMETIMES"}}, None
    ),
    "EPX009-failure-mode-allow": Case("EPX009", {"failure_mode_allow": True}, None, level=Level.WARN),
    "EPX010-tls-for-headers-epp": Case("EPX010", {"tls": True}, plaintext),
    "EPX010-plaintext-for-gie-epp": Case(
        "EPX010", {"tls": False}, upstream_tls, good=GIE_GOOD, policy=gie_policy
    ),
    "EPX011-partial-route-mode": Case("EPX011", {"route_mode": dict(PARTIAL_ROUTE)}, route_mode_complete),
    "EPX011-no-global-mode": Case("EPX011", {"global_mode": None}, global_mode_complete),
    "EPX012-replace-unverified": Case("EPX012", {"replace_verified": False}, None, level=Level.WARN),
    "EPX013-body-none-for-gie-epp": Case(
        "EPX013", {"route_mode": dict(HEADERS_ROUTE)}, gie_body_modes, good=GIE_GOOD, policy=gie_policy
    ),
}


def run(shape: Shape, case: Case) -> Evaluation:
    return evaluate(build(shape), policy=case.policy(), resolver=case.resolve())


def rules_of(findings: Any) -> set[str]:
    return {finding.rule for finding in findings}


def envoy_keys(op: PatchOp) -> Iterator[str]:
    """The Envoy field names an operation writes: path tokens below `patch/value` and keys of its value."""
    tokens = split_pointer(op.path)
    inside = [i for i in range(1, len(tokens)) if tokens[i] == "value" and tokens[i - 1] == "patch"]
    value = op.value
    if inside:
        yield from tokens[inside[0] + 1 :]
    elif isinstance(value, dict) and "patch" in value:
        value = value["patch"].get("value")
    else:
        return
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield from (k for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def assert_spelling(patch: tuple[PatchOp, ...], spelling: str) -> None:
    for op in patch:
        for name in envoy_keys(op):
            if "." in name or name.startswith("@") or name.isdigit():
                continue
            if spelling == "camel":
                assert "_" not in name, f"{op.path} writes {name!r} into a camelCase document"
            else:
                assert name == name.lower(), f"{op.path} writes {name!r} into a snake_case document"


@pytest.mark.parametrize("spelling", SPELLINGS, ids=SPELLINGS)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_rule_flags_its_broken_shape(case: Case, spelling: str) -> None:
    result = run(case.good.but(spelling=spelling, **case.bad), case)
    mine = [finding for finding in result.findings if finding.rule == case.rule]
    assert mine, f"{case.rule} did not flag {case.bad}"
    document = build(case.good.but(spelling=spelling, **case.bad))
    for finding in mine:
        assert finding.level is case.level
        assert finding.fixable is (case.fixed is not None)
        assert finding.message
        assert finding.fix
        assert resolves(document, finding.path), finding.path


@pytest.mark.parametrize("spelling", SPELLINGS, ids=SPELLINGS)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_rule_passes_the_good_shape(case: Case, spelling: str) -> None:
    result = run(case.good.but(spelling=spelling), case)
    assert case.rule not in rules_of(result.findings)
    assert result.findings == ()
    assert result.patch == ()


@pytest.mark.parametrize("spelling", SPELLINGS, ids=SPELLINGS)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_rule_fix_repairs_the_shape_in_the_documents_spelling(case: Case, spelling: str) -> None:
    result = run(case.good.but(spelling=spelling, **case.bad), case)
    if case.fixed is None:
        assert case.rule in rules_of(result.remaining), "an unfixable finding must survive the fix"
        return
    assert case.rule not in rules_of(result.remaining)
    case.fixed(result.fixed, spelling)
    assert_spelling(result.patch, spelling)
    again = evaluate(result.fixed, policy=case.policy(), resolver=case.resolve())
    assert again.patch == ()


@pytest.mark.parametrize("spelling", SPELLINGS, ids=SPELLINGS)
@pytest.mark.parametrize(
    "host",
    [
        f"{SERVICE}.{NAMESPACE}.svc.cluster.local",
        f"{SERVICE}.{NAMESPACE}.svc.cluster.local.",
        f"{SERVICE}.{NAMESPACE}.svc",
        f"{SERVICE}.{NAMESPACE}",
        SERVICE,
    ],
    ids=["fqdn", "fqdn-dot", "svc", "name-namespace", "name-only"],
)
def test_epp_service_is_found_from_every_dns_form(host: str, spelling: str) -> None:
    shape = Shape(spelling=spelling, cluster_type="LOGICAL_DNS", address=host, annotate=False)
    result = evaluate(build(shape), policy=default_policy(), resolver=resolver())
    assert [f.fixable for f in result.findings if f.rule == "EPX003"] == [True]
    pinned_static(result.fixed, spelling)


def test_cluster_domain_comes_from_the_policy() -> None:
    host = f"{SERVICE}.{NAMESPACE}.svc.corp.example"
    shape = Shape(cluster_type="STRICT_DNS", address=host, annotate=False)
    default = evaluate(build(shape), policy=default_policy(), resolver=resolver())
    assert [f.fixable for f in default.findings if f.rule == "EPX003"] == [False]
    corp = evaluate(build(shape), policy=load_policy("cluster_domain: corp.example"), resolver=resolver())
    pinned_static(corp.fixed, "snake")


@pytest.mark.parametrize("spelling", SPELLINGS, ids=SPELLINGS)
def test_unresolvable_service_is_a_clear_finding_and_no_guess(spelling: str) -> None:
    host = f"{SERVICE}.{NAMESPACE}.svc.cluster.local"
    shape = Shape(spelling=spelling, cluster_type="STRICT_DNS", address=host, annotate=False)
    result = evaluate(build(shape), policy=default_policy(), resolver=StaticResolver({}))
    (dns,) = [f for f in result.findings if f.rule == "EPX003"]
    assert not dns.fixable
    assert f"{NAMESPACE}/{SERVICE}" in dns.message
    assert "--service" in dns.message
    assert socket_address(result.fixed, spelling)["address"] == host
    assert cluster_value(result.fixed)["type"] == "STRICT_DNS"
    assert "extproc-guard.io/epp-service" not in result.fixed["metadata"].get("annotations", {})


def test_external_host_name_is_not_taken_for_a_service() -> None:
    shape = Shape(cluster_type="STRICT_DNS", address="epp.example.com", annotate=False)
    result = evaluate(build(shape), policy=default_policy(), resolver=resolver())
    (dns,) = [f for f in result.findings if f.rule == "EPX003"]
    assert not dns.fixable
    assert "not a Kubernetes Service name" in dns.message
    assert socket_address(result.fixed, "snake")["address"] == "epp.example.com"


def test_stale_address_is_followed_through_the_annotation() -> None:
    shape = Shape(address="10.96.0.99")
    result = evaluate(build(shape), policy=default_policy(), resolver=resolver(ip="10.96.7.7"))
    (stale,) = [f for f in result.findings if f.rule == "EPX006"]
    assert "10.96.7.7" in stale.message
    assert socket_address(result.fixed, "snake")["address"] == "10.96.7.7"


def test_resolver_without_ports_keeps_the_filters_port() -> None:
    shape = Shape(cluster_type="STRICT_DNS", address=f"{SERVICE}.{NAMESPACE}", port=9443, annotate=False)
    result = evaluate(build(shape), policy=default_policy(), resolver=resolver(ports=()))
    assert socket_address(result.fixed, "snake") == {"address": CLUSTER_IP, "port_value": 9443}
    assert "EPX007" not in rules_of(result.remaining)


def test_route_override_without_processing_mode_gets_a_full_one() -> None:
    document = build(Shape())
    entry = document["spec"]["configPatches"][2]["patch"]["value"]["typed_per_filter_config"][EXT_PROC]
    entry["overrides"] = {"grpc_service": {"envoy_grpc": {"cluster_name": "epp-cluster"}}}
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert "EPX004" in rules_of(result.findings)
    assert route_mode(result.fixed, "snake") == HEADERS_ROUTE
    assert result.remaining == ()


def test_disabled_route_override_is_not_a_place_to_send_headers() -> None:
    document = build(Shape(route_mode=None))
    document["spec"]["configPatches"].append(
        {
            "applyTo": "HTTP_ROUTE",
            "match": {"context": "GATEWAY", "routeConfiguration": {"vhost": {"route": {"name": "health"}}}},
            "patch": {
                "operation": "MERGE",
                "value": {"typed_per_filter_config": {EXT_PROC: {"@type": filter_type(), "disabled": True}}},
            },
        }
    )
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert "EPX004" in rules_of(result.findings)
    assert result.fixed["spec"]["configPatches"][2] == document["spec"]["configPatches"][2]
    assert route_mode(result.fixed, "snake", index=3) == HEADERS_ROUTE


def filter_type() -> str:
    return "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"


def test_http2_fix_replaces_an_http1_protocol_choice() -> None:
    document = build(Shape(http2=False))
    cluster_value(document)["typed_extension_protocol_options"] = {
        HTTP_OPTIONS: {"@type": f"type.googleapis.com/{HTTP_OPTIONS}", "auto_config": {}}
    }
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert "EPX005" in rules_of(result.findings)
    speaks_http2(result.fixed, "snake")
    assert "auto_config" not in cluster_value(result.fixed)["typed_extension_protocol_options"][HTTP_OPTIONS]
    assert result.remaining == ()


def test_legacy_cluster_http2_options_count_as_http2() -> None:
    document = build(Shape(http2=False))
    cluster_value(document)["http2_protocol_options"] = {}
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert "EPX005" not in rules_of(result.findings)


def test_schema_finding_names_the_field_path_in_the_documents_spelling() -> None:
    result = evaluate(
        build(Shape(spelling="camel", timeout="10x")), policy=default_policy(), resolver=resolver()
    )
    (schema,) = [f for f in result.findings if f.rule == "EPX008"]
    assert schema.path == "/spec/configPatches/0/patch/value/typedConfig/grpcService/timeout"
    assert "grpcService.timeout" in schema.message


def test_failure_mode_allow_warning_points_at_the_field() -> None:
    result = evaluate(build(Shape(failure_mode_allow=True)), policy=default_policy(), resolver=resolver())
    (warning,) = result.findings
    assert warning.path == "/spec/configPatches/0/patch/value/typed_config/failure_mode_allow"
    assert filter_config(result.fixed, "snake")["failure_mode_allow"] is True


def test_a_port_written_as_a_string_is_the_same_port() -> None:
    document = build(Shape())
    socket_address(document, "snake")["port_value"] = "9002"
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert result.findings == ()
