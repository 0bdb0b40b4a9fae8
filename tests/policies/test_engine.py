"""The `evaluate` contract: applicability, ordering, levels, malformed shapes and errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from policies.engine import DocumentError, evaluate
from policies.findings import Level
from policies.policy import default_policy, load_policy
from tests.policies.filters import NAMESPACE, Shape, build, resolver

NOT_APPLICABLE = {
    "a Service": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "epp"}},
    "an EnvoyFilter of another group": {**build(Shape()), "apiVersion": "example.com/v1"},
    "an EnvoyFilter without ext_proc": {
        **build(Shape()),
        "spec": {
            "configPatches": [
                {
                    "applyTo": "HTTP_FILTER",
                    "patch": {"operation": "INSERT_BEFORE", "value": {"name": "envoy.filters.http.lua"}},
                }
            ]
        },
    },
    "configPatches null": {**build(Shape()), "spec": {"configPatches": None}},
    "configPatches a string": {**build(Shape()), "spec": {"configPatches": "oops"}},
    "spec a list": {**build(Shape()), "spec": []},
    "no spec": {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter"},
    "an empty mapping": {},
}


@pytest.mark.parametrize("document", NOT_APPLICABLE.values(), ids=NOT_APPLICABLE.keys())
def test_documents_without_ext_proc_content_are_returned_unchanged(document: dict[str, Any]) -> None:
    before = copy.deepcopy(document)
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert not result.applicable
    assert result.findings == ()
    assert result.patch == ()
    assert result.remaining == ()
    assert result.fixed == before
    assert document == before


@pytest.mark.parametrize("version", ["v1alpha3", "v1beta1", "v1"], ids=["v1alpha3", "v1beta1", "v1"])
def test_every_istio_networking_version_is_evaluated(version: str) -> None:
    document = {**build(Shape(operation="INSERT_BEFORE")), "apiVersion": f"networking.istio.io/{version}"}
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert result.applicable
    assert [f.rule for f in result.findings] == ["EPX001"]


@pytest.mark.parametrize("document", [None, [], "EnvoyFilter", 3], ids=["none", "list", "string", "number"])
def test_a_document_that_is_not_a_mapping_raises_a_document_error(document: Any) -> None:
    with pytest.raises(DocumentError, match="must be a mapping"):
        evaluate(document, policy=default_policy(), resolver=resolver())


def test_malformed_patches_are_skipped_and_the_rest_still_evaluated() -> None:
    document = build(Shape(operation="INSERT_BEFORE"))
    document["spec"]["configPatches"][:0] = [None, "text", 7, {"applyTo": "HTTP_FILTER", "patch": None}]
    document["spec"]["configPatches"].append(
        {"applyTo": "CLUSTER", "patch": {"operation": "ADD", "value": []}}
    )
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert [(f.rule, f.path) for f in result.findings] == [
        ("EPX001", "/spec/configPatches/4/patch/operation")
    ]
    assert result.fixed["spec"]["configPatches"][4]["patch"]["operation"] == "REPLACE"
    assert result.fixed["spec"]["configPatches"][:4] == [
        None,
        "text",
        7,
        {"applyTo": "HTTP_FILTER", "patch": None},
    ]


@pytest.mark.parametrize(
    ("typed_config", "reason"),
    [(None, "no typed_config"), ("text", "expected a mapping"), ({"grpc_service": {}}, "@type")],
    ids=["missing", "a string", "without @type"],
)
def test_an_ext_proc_filter_with_a_malformed_typed_config_is_a_schema_finding(
    typed_config: Any, reason: str
) -> None:
    document = build(Shape())
    value = document["spec"]["configPatches"][0]["patch"]["value"]
    if typed_config is None:
        del value["typed_config"]
    else:
        value["typed_config"] = typed_config
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    schema = [f for f in result.findings if f.rule == "EPX008"]
    assert schema
    assert reason in schema[0].message
    assert "EPX008" in {f.rule for f in result.remaining}


def test_a_processing_mode_that_is_not_a_mapping_never_raises() -> None:
    document = build(Shape())
    document["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["processing_mode"] = "SEND"
    document["spec"]["configPatches"][1]["patch"]["value"]["load_assignment"] = {"endpoints": "x"}
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert "EPX008" in {f.rule for f in result.findings}
    assert result.patch is not None


def test_findings_come_in_rule_id_order() -> None:
    shape = Shape(
        operation="INSERT_BEFORE", failure_mode_allow=True, http2=False, route_mode=None, address="10.0.0.1"
    )
    result = evaluate(build(shape), policy=default_policy(), resolver=resolver())
    rules = [f.rule for f in result.findings]
    assert rules == sorted(rules)
    assert {"EPX001", "EPX004", "EPX005", "EPX006", "EPX009"} <= set(rules)


def test_rules_set_off_are_omitted_and_their_fixes_not_applied() -> None:
    policy = load_policy("rules: {EPX005: off, epp-clusterip-stale: off}")
    result = evaluate(build(Shape(http2=False, address="10.0.0.1")), policy=policy, resolver=resolver())
    assert result.findings == ()
    assert result.patch == ()


def test_rule_levels_come_from_the_policy() -> None:
    policy = load_policy("rules: {EPX005: warn, EPX009: enforce}")
    result = evaluate(build(Shape(http2=False, failure_mode_allow=True)), policy=policy, resolver=resolver())
    assert {(f.rule, f.level) for f in result.findings} == {("EPX005", Level.WARN), ("EPX009", Level.ENFORCE)}
    assert [f.rule for f in result.enforced] == ["EPX009"]
    assert [f.rule for f in result.unfixed] == ["EPX009"]


def test_excluded_namespace_is_left_alone() -> None:
    policy = load_policy(f"exclusions: {{namespaces: [{NAMESPACE}]}}")
    document = build(Shape(operation="INSERT_BEFORE"))
    result = evaluate(document, policy=policy, resolver=resolver())
    assert not result.applicable
    assert result.fixed == document
    assert result.namespace == NAMESPACE


@pytest.mark.parametrize(("value", "ignored"), [("true", True), ("True", True), ("false", False)], ids=str)
def test_opt_out_annotation_leaves_the_filter_alone(value: str, ignored: bool) -> None:
    document = build(Shape(operation="INSERT_BEFORE"))
    document["metadata"]["annotations"]["extproc-guard.io/ignore"] = value
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert result.applicable is not ignored
    assert bool(result.findings) is not ignored


def test_evaluation_names_the_document_and_never_changes_its_input() -> None:
    document = build(Shape(operation="INSERT_BEFORE", http2=False))
    before = copy.deepcopy(document)
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert (result.namespace, result.name) == (NAMESPACE, "epp-ext-proc")
    assert result.changed
    assert result.fixed != document
    assert document == before


def test_a_read_only_mapping_document_is_accepted() -> None:
    from types import MappingProxyType

    document = build(Shape(operation="INSERT_BEFORE"))
    result = evaluate(MappingProxyType(document), policy=default_policy(), resolver=resolver())
    assert [f.rule for f in result.findings] == ["EPX001"]
    assert result.fixed["spec"]["configPatches"][0]["patch"]["operation"] == "REPLACE"


def test_custom_filter_name_is_recognised_by_the_external_processor_type() -> None:
    document = build(Shape(operation="INSERT_FIRST"))
    document["spec"]["configPatches"][0]["patch"]["value"]["name"] = "epp.ext_proc"
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert [f.rule for f in result.findings] == ["EPX001"]


def test_evaluations_compare_by_value() -> None:
    first = evaluate(build(Shape(http2=False)), policy=default_policy(), resolver=resolver())
    second = evaluate(build(Shape(http2=False)), policy=default_policy(), resolver=resolver())
    third = evaluate(build(Shape()), policy=default_policy(), resolver=resolver())
    assert first == second
    assert first != third
