"""Fuzzing the admission endpoints over real HTTPS: whatever arrives, no 5xx, no hang, a well-formed answer.

A 200 is always a JSON AdmissionReview echoing the uid; anything else is a 4xx with one plain line.
Examples are derandomized so every run sends the same bodies.
"""

from __future__ import annotations

import copy
import http.client
import json
import math
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.documents import load_document
from tests.webhook.webhookrig import (
    Pki,
    ServerThread,
    client_context,
    review_of,
)

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SEED = load_document("seed-bad.yaml")

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def context(pki: Pki) -> ssl.SSLContext:
    return client_context(pki)


def pointers(value: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from pointers(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from pointers(child, (*prefix, index))


SEED_POINTERS = [p for p in pointers(SEED) if p]


@st.composite
def damaged_seeds(draw: st.DrawFn) -> dict[str, Any]:
    """The seed's bad filter with a few subtrees replaced by arbitrary JSON."""
    document = copy.deepcopy(SEED)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(SEED_POINTERS))
        parent: Any = document
        try:
            for token in path[:-1]:
                parent = parent[token]
            parent[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed this path
    return document


@st.composite
def reviews(draw: st.DrawFn) -> Any:
    obj = draw(damaged_seeds() | json_values | st.just(copy.deepcopy(SEED)))
    review = review_of(obj if isinstance(obj, dict) else {"spec": obj})
    request = review["request"]
    request["object"] = obj
    request["uid"] = draw(st.text(min_size=1, max_size=40) | st.just(request["uid"]))
    request["operation"] = draw(
        st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]) | st.text(max_size=8)
    )
    request["dryRun"] = draw(st.booleans() | json_values)
    for field in draw(
        st.lists(st.sampled_from(["kind", "namespace", "name", "oldObject", "uid"]), max_size=2)
    ):
        request[field] = draw(json_values)
    if draw(st.booleans()):
        review[draw(st.sampled_from(["apiVersion", "kind", "request"]))] = draw(json_values)
    return review


def post(port: int, context: ssl.SSLContext, path: str, body: bytes) -> tuple[int, str, bytes]:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def _reject_constant(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


def check_answer(status: int, content_type: str, body: bytes, sent: Any) -> None:
    assert status < 500, body
    if status == 200:
        assert content_type.startswith("application/json")
        answer = json.loads(body, parse_constant=_reject_constant)
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        response = answer["response"]
        assert response["uid"] == sent["request"]["uid"]
        assert isinstance(response["allowed"], bool)
        if not response["allowed"]:
            denial = response["status"]
            # Only a policy denial: the engine must never fail on a damaged object (the server would
            # still deny with code 500, but that is a bug to find here, not an answer to accept).
            assert denial["code"] == 403, denial
        for warning in response.get("warnings", []):
            assert len(warning) <= 256
    else:
        assert 400 <= status < 500
        assert content_type.startswith("text/plain")
        text = body.decode()
        assert text.endswith("\n")
        assert text.count("\n") == 1


def dump(value: Any) -> bytes:
    return json.dumps(value).encode()


@FUZZ
@given(review=reviews(), path=st.sampled_from(["/mutate", "/validate"]))
def test_fuzzed_reviews_get_a_well_formed_answer(
    review: Any, path: str, server: ServerThread, context: ssl.SSLContext
) -> None:
    status, content_type, body = post(server.port, context, path, dump(review))
    check_answer(status, content_type, body, review)


@FUZZ
@given(body=st.binary(max_size=300) | json_values.map(dump), path=st.sampled_from(["/mutate", "/validate"]))
def test_arbitrary_bodies_are_refused_with_a_plain_400(
    body: bytes, path: str, server: ServerThread, context: ssl.SSLContext
) -> None:
    status, content_type, answer = post(server.port, context, path, body)
    assert status == 400, answer
    check_answer(status, content_type, answer, None)


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(("spec", "configPatches", 1, "patch", "value", "connect_timeout"), id="in-the-cluster"),
        pytest.param(
            ("spec", "configPatches", 0, "patch", "value", "typed_config", "processing_mode"), id="as-a-mode"
        ),
        pytest.param(
            ("spec", "configPatches", 1, "patch", "value", "load_assignment"), id="as-the-endpoints"
        ),
    ],
)
@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_non_finite_numbers_in_the_object_never_make_invalid_json(
    where: tuple[str | int, ...], number: float, server: ServerThread, context: ssl.SSLContext
) -> None:
    document = copy.deepcopy(SEED)
    parent: Any = document
    for token in where[:-1]:
        parent = parent[token]
    parent[where[-1]] = number
    review = review_of(document)
    for path in ("/mutate", "/validate"):
        status, content_type, body = post(server.port, context, path, dump(review))
        check_answer(status, content_type, body, review)
