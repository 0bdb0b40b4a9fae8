"""The reviewer's memo: an answer is reused only for a body that differs from an earlier one in its uid."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from policies.policy import default_policy
from policies.resolver import StaticResolver
from tests.documents import load_document
from tests.webhook.webhookrig import STATIC_SERVICES, review_of
from webhook.admission import Webhook, build_response, parse_review
from webhook.reviewer import Answer, Refusal, Reviewer, log_value, summarize


def compact(review: dict[str, Any]) -> bytes:
    return json.dumps(review, separators=(",", ":")).encode()


def reviewer(generation: list[int] | None = None) -> Reviewer:
    counter = generation if generation is not None else [0]
    return Reviewer(default_policy(), StaticResolver(STATIC_SERVICES), generation=lambda: counter[0])


def answer(subject: Reviewer, body: bytes, webhook: Webhook = Webhook.MUTATE) -> dict[str, Any]:
    request = parse_review(body)
    reply = subject.review(body, webhook=webhook)
    assert isinstance(reply, Answer)
    decoded: dict[str, Any] = json.loads(reply.payload)
    assert decoded == build_response(request, reply.verdict), "a reused answer is what build_response gives"
    assert reply.summary == summarize(request, reply.verdict), "the reused log fields are this body's"
    return decoded


def test_a_body_that_differs_only_in_uid_reuses_the_answer_with_its_own_uid() -> None:
    subject = reviewer()
    bad = load_document("seed-bad.yaml")
    first = answer(subject, compact(review_of(bad, uid="first")))
    second = answer(subject, compact(review_of(bad, uid="second")))
    assert (subject.misses, subject.hits) == (1, 1)
    assert second["response"]["uid"] == "second"
    assert second["response"]["patch"] == first["response"]["patch"]


def test_a_body_spelled_with_spaces_is_reused_too() -> None:
    subject = reviewer()
    bad = load_document("seed-bad.yaml")
    answer(subject, json.dumps(review_of(bad, uid="a")).encode())
    answer(subject, json.dumps(review_of(bad, uid="b")).encode())
    assert subject.hits == 1


def test_a_different_object_or_webhook_is_evaluated_again() -> None:
    subject = reviewer()
    bad = load_document("seed-bad.yaml")
    answer(subject, compact(review_of(bad, uid="a")))
    answer(subject, compact(review_of(load_document("seed-corrected.yaml"), uid="b")))
    answer(subject, compact(review_of(bad, uid="c")), Webhook.VALIDATE)
    assert (subject.misses, subject.hits) == (3, 0)


def test_a_resolver_change_is_evaluated_again() -> None:
    generation = [0]
    subject = reviewer(generation)
    bad = load_document("seed-bad.yaml")
    answer(subject, compact(review_of(bad, uid="a")))
    generation[0] += 1
    answer(subject, compact(review_of(bad, uid="b")))
    assert (subject.misses, subject.hits) == (2, 0)


def test_a_uid_that_also_appears_in_the_object_is_not_memoized() -> None:
    subject = reviewer()
    bad = load_document("seed-bad.yaml")
    bad["metadata"]["labels"] = {"x": "y"}
    review = review_of(bad, uid="same")
    review["request"]["object"]["spec"]["uid"] = "same"
    answer(subject, compact(review))
    answer(subject, compact(review))
    assert (subject.misses, subject.hits) == (2, 0)


def test_a_uid_member_in_the_object_ahead_of_the_requests_never_stands_for_it() -> None:
    subject = reviewer()

    def body(object_uid: str) -> bytes:
        review = review_of(load_document("seed-bad.yaml"), uid="same")
        request = review["request"]
        request["object"]["metadata"]["uid"] = object_uid
        review["request"] = {"object": request.pop("object"), **request}  # the object's uid comes first
        return compact(review)

    answer(subject, body("same"))
    reply = answer(subject, body("other"))
    assert reply["response"]["uid"] == "same"


def test_a_body_that_differs_only_in_uid_is_recalled_without_parsing_and_matches_a_fresh_answer() -> None:
    subject = reviewer()
    bad = load_document("seed-bad.yaml")
    answer(subject, compact(review_of(bad, uid="first")))
    body = compact(review_of(bad, uid="705ab4f5-6393-11e8-b7cc-42010a800002"))
    recalled = subject.recall(body, webhook=Webhook.MUTATE)
    assert recalled is not None
    fresh = reviewer().review(body, webhook=Webhook.MUTATE)
    assert recalled == fresh
    assert json.loads(recalled.payload)["response"]["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert (subject.misses, subject.hits) == (1, 1)


def _with_uid_literal(body: bytes, literal: bytes) -> bytes:
    assert body.count(b'"uid":"first"') == 1
    return body.replace(b'"uid":"first"', b'"uid":' + literal)


NOT_RECALLED = [
    pytest.param(lambda body: _with_uid_literal(body, b'"a\\u0062"'), id="escaped-uid"),
    pytest.param(lambda body: _with_uid_literal(body, b'""'), id="empty-uid"),
    pytest.param(lambda body: _with_uid_literal(body, b"7"), id="number-uid"),
    pytest.param(lambda body: _with_uid_literal(body, b"null"), id="null-uid"),
    pytest.param(lambda body: body.replace(b'"CREATE"', b'"UPDATE"'), id="other-operation"),
    pytest.param(lambda body: body.replace(b'"dryRun":false', b'"dryRun":true'), id="dry-run"),
    pytest.param(lambda body: body + b" ", id="other-spacing"),
]


@pytest.mark.parametrize("change", NOT_RECALLED)
def test_a_body_that_differs_in_more_than_a_plain_uid_is_not_recalled(
    change: Callable[[bytes], bytes],
) -> None:
    subject = reviewer()
    body = compact(review_of(load_document("seed-bad.yaml"), uid="first"))
    answer(subject, body)
    changed = change(body)
    assert changed != body
    assert subject.recall(changed, webhook=Webhook.MUTATE) is None


def test_nothing_is_recalled_for_another_webhook_or_after_a_resolver_change() -> None:
    generation = [0]
    subject = reviewer(generation)
    bad = load_document("seed-bad.yaml")
    assert subject.recall(compact(review_of(bad, uid="a")), webhook=Webhook.MUTATE) is None, "nothing yet"
    answer(subject, compact(review_of(bad, uid="a")))
    assert subject.recall(compact(review_of(bad, uid="b")), webhook=Webhook.VALIDATE) is None
    generation[0] += 1
    assert subject.recall(compact(review_of(bad, uid="c")), webhook=Webhook.MUTATE) is None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(
            compact({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}), id="no-request"
        ),
        pytest.param(
            compact(review_of(load_document("seed-bad.yaml"), operation="PATCH")), id="unknown-operation"
        ),
    ],
)
@pytest.mark.parametrize("webhook", list(Webhook), ids=[w.value for w in Webhook])
def test_a_body_that_is_not_a_review_is_a_refusal_with_one_plain_line(body: bytes, webhook: Webhook) -> None:
    result = reviewer().review(body, webhook=webhook)
    assert isinstance(result, Refusal)
    assert result.status == 400
    assert result.reason
    assert "\n" not in result.reason


def test_a_dry_run_gets_the_same_answer_but_applies_no_patch() -> None:
    subject = reviewer()
    bad = load_document("seed-bad.yaml")
    real = subject.review(compact(review_of(bad, uid="u")), webhook=Webhook.MUTATE)
    dry = subject.review(compact(review_of(bad, uid="u", dry_run=True)), webhook=Webhook.MUTATE)
    assert isinstance(real, Answer)
    assert isinstance(dry, Answer)
    assert dry.payload == real.payload
    assert real.patch_applied
    assert not dry.patch_applied


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("705ab4f5-6393-11e8-b7cc-42010a800002", "705ab4f5-6393-11e8-b7cc-42010a800002"),
        ("llm-d/epp-ext-proc", "llm-d/epp-ext-proc"),
        ("x\nreview webhook=mutate uid=forged", '"x\\nreview webhook=mutate uid=forged"'),
        ("a b", '"a b"'),
        ("k=v", '"k=v"'),
        ("", '""'),
    ],
    ids=["uuid", "namespaced-name", "newline", "space", "equals", "empty"],
)
def test_log_fields_from_a_review_cannot_forge_or_split_a_log_line(text: str, logged: str) -> None:
    assert log_value(text) == logged
