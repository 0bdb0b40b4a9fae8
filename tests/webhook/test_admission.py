"""AdmissionReview parsing, verdicts and the response shape (no network: the pure half of the webhook)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest

from policies.findings import Finding, Level
from policies.patch import PatchOp
from policies.policy import load_policy
from webhook.admission import (
    MAX_WARNING_CHARS,
    MalformedReviewError,
    Outcome,
    Verdict,
    Webhook,
    build_response,
    clip_warning,
    document_of,
    format_warning,
    parse_review,
    review_request,
)

ENVOYFILTER_KIND = {"group": "networking.istio.io", "version": "v1alpha3", "kind": "EnvoyFilter"}


def review(**request: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": ENVOYFILTER_KIND,
        "resource": {"group": "networking.istio.io", "version": "v1alpha3", "resource": "envoyfilters"},
        "name": "epp-ext-proc",
        "namespace": "llm-d-inference-scheduler",
        "operation": "CREATE",
        "userInfo": {"username": "operator"},
        "object": {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter", "metadata": {}},
        "dryRun": False,
    }
    body.update(request)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": body}


def encoded(document: Any) -> bytes:
    return json.dumps(document).encode()


def finding(rule: str, level: Level, *, fixable: bool = True, path: str = "/spec/configPatches/0") -> Finding:
    return Finding(
        rule=rule,
        slug=f"slug-{rule.lower()}",
        level=level,
        path=path,
        message=f"what {rule} found.",
        fix=f"what {rule} wants.",
        fixable=fixable,
    )


@dataclass(frozen=True)
class Result:
    """An engine result as the webhook reads it (field names of `policies.engine.Evaluation`)."""

    applicable: bool = True
    findings: tuple[Finding, ...] = ()
    patch: tuple[PatchOp, ...] = ()


POLICY = load_policy("exclusions: {namespaces: [kube-system]}")


def test_a_valid_review_parses_into_typed_fields() -> None:
    request = parse_review(encoded(review(dryRun=True)))
    assert request.uid == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert request.is_envoyfilter
    assert request.operation == "CREATE"
    assert request.dry_run is True
    assert request.object_name == "llm-d-inference-scheduler/epp-ext-proc"


MALFORMED = [
    pytest.param(b"not json", "not JSON", id="not-json"),
    pytest.param(b"[1, 2]", "JSON object", id="json-array"),
    pytest.param(encoded({**review(), "apiVersion": "admission.k8s.io/v1beta1"}), "apiVersion", id="v1beta1"),
    pytest.param(encoded({**review(), "kind": "Pod"}), "kind must be", id="wrong-kind"),
    pytest.param(
        encoded({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}), "request", id="no-request"
    ),
    pytest.param(encoded(review(uid="")), "request.uid", id="empty-uid"),
    pytest.param(
        encoded({**review(), "request": {**review()["request"], "uid": None}}), "request.uid", id="null-uid"
    ),
    pytest.param(encoded(review(operation="PATCH")), "request.operation", id="unknown-operation"),
    pytest.param(encoded(review(object=None)), "request.object is required", id="create-without-object"),
    pytest.param(b"[" * 5000, "not JSON", id="deeply-nested"),
]


@pytest.mark.parametrize(("body", "reason"), MALFORMED)
def test_malformed_reviews_are_refused_with_one_plain_line(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedReviewError, match=reason) as caught:
        parse_review(body)
    assert "\n" not in str(caught.value)


def test_the_response_echoes_api_version_kind_and_uid() -> None:
    request = parse_review(encoded(review()))
    response = build_response(request, Verdict(outcome=Outcome.ALLOWED))
    assert response == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": request.uid, "allowed": True},
    }


def test_a_patch_is_base64_json_patch() -> None:
    request = parse_review(encoded(review()))
    ops = (PatchOp("replace", "/spec/configPatches/0/patch/operation", "REPLACE"),)
    response = build_response(request, Verdict(outcome=Outcome.PATCHED, patch=ops))["response"]
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == [
        {"op": "replace", "path": "/spec/configPatches/0/patch/operation", "value": "REPLACE"}
    ]


def test_a_denial_is_a_403_status_naming_rules_paths_and_fixes() -> None:
    request = parse_review(encoded(review()))
    evaluation = Result(
        findings=(
            finding("EPX007", Level.ENFORCE, fixable=False, path="/spec/configPatches/0/patch/value"),
            finding("EPX009", Level.WARN),
        )
    )
    verdict = review_request(request, webhook=Webhook.VALIDATE, evaluate=lambda _: evaluation, policy=POLICY)
    response = build_response(request, verdict)["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    message = response["status"]["message"]
    assert "EPX007" in message
    assert "/spec/configPatches/0/patch/value" in message
    assert "what EPX007 wants." in message
    assert "EPX009" not in message, "warn findings do not deny"
    assert response["warnings"] == [
        "EPX009 slug-epx009 at /spec/configPatches/0: what EPX009 found. Fix: what EPX009 wants."
    ]


def test_validate_allows_with_warnings_when_only_warn_rules_fire() -> None:
    request = parse_review(encoded(review()))
    evaluation = Result(findings=(finding("EPX012", Level.WARN),))
    verdict = review_request(request, webhook=Webhook.VALIDATE, evaluate=lambda _: evaluation, policy=POLICY)
    assert verdict.allowed
    assert verdict.outcome is Outcome.ALLOWED
    assert verdict.warnings == (
        "EPX012 slug-epx012 at /spec/configPatches/0: what EPX012 found. Fix: what EPX012 wants.",
    )


def test_mutate_returns_the_engine_patch_even_when_unfixable_findings_remain() -> None:
    request = parse_review(encoded(review()))
    ops = (PatchOp("replace", "/spec/configPatches/0/patch/operation", "REPLACE"),)
    evaluation = Result(
        findings=(finding("EPX001", Level.ENFORCE), finding("EPX007", Level.ENFORCE, fixable=False)),
        patch=ops,
    )
    verdict = review_request(request, webhook=Webhook.MUTATE, evaluate=lambda _: evaluation, policy=POLICY)
    assert verdict.allowed
    assert verdict.patch == ops
    assert verdict.rules == ("EPX001",)


SKIPPED = [
    pytest.param({"operation": "DELETE", "object": None}, id="delete"),
    pytest.param({"operation": "CONNECT", "object": None}, id="connect"),
    pytest.param({"kind": {"group": "", "version": "v1", "kind": "ConfigMap"}}, id="other-kind"),
    pytest.param(
        {"kind": {"group": "example.com", "version": "v1", "kind": "EnvoyFilter"}}, id="other-group"
    ),
    pytest.param({"namespace": "kube-system"}, id="excluded-namespace"),
    pytest.param(
        {"object": {"kind": "EnvoyFilter", "metadata": {"annotations": {"extproc-guard.io/ignore": "true"}}}},
        id="opt-out-annotation",
    ),
]


@pytest.mark.parametrize("fields", SKIPPED)
@pytest.mark.parametrize("webhook", list(Webhook), ids=[w.value for w in Webhook])
def test_reviews_out_of_scope_are_allowed_untouched_without_running_the_engine(
    fields: dict[str, Any], webhook: Webhook
) -> None:
    request = parse_review(encoded(review(**fields)))

    def engine(_: Any) -> Result:
        raise AssertionError("the engine must not run")

    verdict = review_request(request, webhook=webhook, evaluate=engine, policy=POLICY)
    assert verdict == Verdict(outcome=Outcome.SKIPPED)


@pytest.mark.parametrize("webhook", list(Webhook), ids=[w.value for w in Webhook])
def test_an_envoyfilter_the_engine_does_not_judge_is_skipped_like_one_out_of_scope(webhook: Webhook) -> None:
    request = parse_review(encoded(review()))
    verdict = review_request(
        request, webhook=webhook, evaluate=lambda _: Result(applicable=False), policy=POLICY
    )
    assert verdict == Verdict(outcome=Outcome.SKIPPED)


@pytest.mark.parametrize("webhook", list(Webhook), ids=[w.value for w in Webhook])
def test_an_engine_failure_denies_at_validate_and_changes_nothing_at_mutate(webhook: Webhook) -> None:
    request = parse_review(encoded(review()))

    def engine(_: Any) -> Result:
        raise RecursionError("maximum recursion depth exceeded")

    verdict = review_request(request, webhook=webhook, evaluate=engine, policy=POLICY)
    assert verdict.outcome is Outcome.ERROR
    assert verdict.patch == ()
    assert verdict.allowed is (webhook is Webhook.MUTATE)
    assert "RecursionError" in (verdict.message if webhook is Webhook.VALIDATE else verdict.warnings[0])


def test_the_request_namespace_fills_an_object_without_one() -> None:
    request = parse_review(encoded(review(object={"kind": "EnvoyFilter", "metadata": {"name": "f"}})))
    assert document_of(request)["metadata"] == {"name": "f", "namespace": "llm-d-inference-scheduler"}
    assert request.object == {"kind": "EnvoyFilter", "metadata": {"name": "f"}}, "the original is not changed"


def test_the_engine_judges_the_object_in_the_namespace_the_exclusions_were_judged_in() -> None:
    named = {"kind": "EnvoyFilter", "metadata": {"name": "f", "namespace": "kube-system"}}
    request = parse_review(encoded(review(object=named)))
    assert document_of(request)["metadata"]["namespace"] == "llm-d-inference-scheduler"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("short", id="short"),
        pytest.param("x " * 200, id="long"),
        pytest.param("a\nb\tc", id="control"),
    ],
)
def test_warnings_are_one_line_of_at_most_256_characters(text: str) -> None:
    clipped = clip_warning(text)
    assert len(clipped) <= MAX_WARNING_CHARS
    assert "\n" not in clipped
    assert "\t" not in clipped


def test_a_warning_keeps_the_rule_the_path_and_the_fix_when_the_message_is_long() -> None:
    path = "/spec/configPatches/0/patch/value/typed_config/processing_mode/request_header_mode"
    long = Finding(
        rule="EPX016",
        slug="ext-proc-role-undecided",
        level=Level.WARN,
        path=path,
        message="cannot tell whose filter this is " * 20,
        fix="annotate extproc-guard.io/role: epp or other",
        fixable=False,
    )
    warning = format_warning(long)
    assert len(warning) <= MAX_WARNING_CHARS == 256
    assert warning.startswith(f"EPX016 ext-proc-role-undecided at {path}: cannot tell")
    assert warning.endswith("Fix: annotate extproc-guard.io/role: epp or other")
