"""Malformed input never makes the engine raise: any shape inside a filter is skipped or reported."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.engine import evaluate
from policies.patch import apply_patch
from policies.policy import default_policy, load_policy
from policies.resolver import StaticResolver
from tests.policies.filters import DNS_FORMS, Shape, build, resolver, resolves

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
SHAPES = (
    Shape(),
    Shape(spelling="camel"),
    Shape(
        operation="INSERT_BEFORE",
        cluster_type="STRICT_DNS",
        address=DNS_FORMS[0],
        http2=False,
        annotate=False,
    ),
    Shape(spelling="camel", route_mode=None, global_mode=None, tls=True),
)
POLICIES = (default_policy(), load_policy("profile: gie-epp"))


def subtree_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths.extend(subtree_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths.extend(subtree_paths(item, (*prefix, index)))
    return paths


@st.composite
def broken_filters(draw: st.DrawFn) -> dict[str, Any]:
    document = build(draw(st.sampled_from(SHAPES)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([p for p in subtree_paths(document) if len(p) >= 1]))
        parent = document
        for token in path[:-1]:
            parent = parent[token]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSONISH)
    return document


@settings(max_examples=400, deadline=None)
@given(broken_filters(), st.sampled_from(POLICIES), st.booleans())
def test_evaluate_never_raises_and_its_patch_always_applies(
    document: dict[str, Any], policy: Any, resolvable: bool
) -> None:
    before = copy.deepcopy(document)
    result = evaluate(document, policy=policy, resolver=resolver() if resolvable else StaticResolver({}))
    for findings, where in ((result.findings, document), (result.remaining, result.fixed)):
        for finding in findings:
            assert finding.message
            assert resolves(where, finding.path), finding.path
    assert apply_patch(document, result.patch) == result.fixed
    assert jsonpatch.apply_patch(document, [op.to_json() for op in result.patch]) == result.fixed
    assert evaluate(result.fixed, policy=policy, resolver=resolver()).applicable in (True, False)
    assert document == before


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("apiVersion", []),
        ("apiVersion", {"group": "networking.istio.io"}),
        ("kind", ["EnvoyFilter"]),
        ("metadata", []),
        ("metadata", "epp-ext-proc"),
        ("spec", ["configPatches"]),
    ],
    ids=["apiVersion-list", "apiVersion-map", "kind-list", "metadata-list", "metadata-string", "spec-list"],
)
def test_a_top_level_field_of_the_wrong_type_is_not_an_error(key: str, value: Any) -> None:
    document = build(SHAPES[2])
    document[key] = value
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert apply_patch(document, result.patch) == result.fixed
