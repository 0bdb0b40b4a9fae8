"""The incident's filter: evaluate(seed-bad) yields exactly the seed's corrected form."""

from __future__ import annotations

import jsonpatch
import pytest

from policies.engine import evaluate
from policies.patch import apply_patch
from policies.policy import default_policy, load_policy
from policies.resolver import StaticResolver
from tests.documents import load_document
from tests.policies import filters


@pytest.fixture
def resolver() -> StaticResolver:
    return filters.resolver()


def test_seed_bad_is_fixed_into_exactly_the_corrected_form(resolver: StaticResolver) -> None:
    result = evaluate(load_document("seed-bad.yaml"), policy=default_policy(), resolver=resolver)
    assert result.applicable
    assert result.fixed == load_document("seed-corrected.yaml")


def test_seed_bad_findings_name_every_incident_problem(resolver: StaticResolver) -> None:
    result = evaluate(load_document("seed-bad.yaml"), policy=default_policy(), resolver=resolver)
    rules = [finding.rule for finding in result.findings]
    assert rules == ["EPX001", "EPX002", "EPX002", "EPX003", "EPX004", "EPX005", "EPX011", "EPX011"]
    assert all(finding.fixable for finding in result.findings)


def test_seed_patch_applies_the_same_with_our_code_and_jsonpatch(resolver: StaticResolver) -> None:
    document = load_document("seed-bad.yaml")
    result = evaluate(document, policy=default_policy(), resolver=resolver)
    ops = [op.to_json() for op in result.patch]
    assert apply_patch(document, result.patch) == result.fixed
    assert jsonpatch.apply_patch(document, ops) == result.fixed
    assert document == load_document("seed-bad.yaml"), "evaluate must not change its input"


def test_corrected_seed_has_only_the_replace_target_warning(resolver: StaticResolver) -> None:
    result = evaluate(load_document("seed-corrected.yaml"), policy=default_policy(), resolver=resolver)
    assert [(f.rule, f.level.value) for f in result.findings] == [("EPX012", "warn")]
    assert result.patch == ()


def test_seed_without_a_known_service_is_not_pinned_to_a_guess() -> None:
    result = evaluate(load_document("seed-bad.yaml"), policy=default_policy(), resolver=StaticResolver({}))
    dns = [finding for finding in result.findings if finding.rule == "EPX003"]
    assert len(dns) == 1
    assert not dns[0].fixable
    assert "--service" in dns[0].message
    cluster = result.fixed["spec"]["configPatches"][1]["patch"]["value"]
    assert cluster["type"] == "STRICT_DNS"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"]["address"].endswith(".svc.cluster.local")
    assert "annotations" not in result.fixed["metadata"]


def test_seed_bad_under_gie_epp_streams_bodies_only_where_the_epp_runs(resolver: StaticResolver) -> None:
    result = evaluate(
        load_document("seed-bad.yaml"), policy=load_policy("profile: gie-epp"), resolver=resolver
    )
    assert [f.rule for f in result.remaining] == ["EPX012"]
    patches = result.fixed["spec"]["configPatches"]
    assert patches[0]["patch"]["value"]["typed_config"]["processing_mode"] == {
        "request_header_mode": "SKIP",
        "request_body_mode": "NONE",
        "response_header_mode": "SKIP",
        "response_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    override = patches[2]["patch"]["value"]["typed_per_filter_config"]["envoy.filters.http.ext_proc"][
        "overrides"
    ]
    assert override["processing_mode"] == {
        "request_header_mode": "SEND",
        "request_body_mode": "FULL_DUPLEX_STREAMED",
        "response_header_mode": "SEND",
        "response_body_mode": "FULL_DUPLEX_STREAMED",
        "request_trailer_mode": "SEND",
        "response_trailer_mode": "SEND",
    }
    assert patches[1]["patch"]["value"]["transport_socket"]["name"] == "envoy.transport_sockets.tls"
