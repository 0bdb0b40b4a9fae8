"""The repair's copy on write and its partial rebuilds: the given document never changes, and a rebuild
that reuses the untouched config patches sees exactly what a fresh read sees."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from policies.context import Context
from policies.engine import _touched_patches, evaluate
from policies.model import EnvoyFilter
from policies.patch import PatchOp, apply_op, apply_patch
from policies.pieces import locate_ext_proc
from policies.policy import default_policy
from policies.workload import workload_of
from tests.policies.filters import EXT_PROC, Shape, build, resolver

BAD = Shape(
    operation="INSERT_BEFORE",
    global_mode={"request_header_mode": "SEND", "request_body_mode": "STREAMED"},
    cluster_type="STRICT_DNS",
)


def _bad() -> dict[str, Any]:
    return build(BAD)


def test_copy_on_write_leaves_the_original_alone_and_shares_what_no_op_touches() -> None:
    document = _bad()
    before = copy.deepcopy(document)
    ops = [
        PatchOp("replace", "/spec/configPatches/0/patch/operation", "REPLACE"),
        PatchOp("add", "/metadata/annotations", {"a": "b"}),
        PatchOp("add", "/spec/configPatches/0/patch/value/extra", {"x": [1, 2]}),
        PatchOp("add", "/spec/configPatches/-", {"applyTo": "HTTP_ROUTE"}),
    ]
    working = dict(document)
    owned = {id(working)}
    for op in ops:
        apply_op(working, op, owned=owned)
    assert document == before
    assert working == apply_patch(before, ops)
    assert working["spec"]["configPatches"][1] is document["spec"]["configPatches"][1]
    assert working["spec"]["configPatches"][0] is not document["spec"]["configPatches"][0]


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        ([("replace", "/spec/configPatches/0/patch/operation")], frozenset({0})),
        ([("add", "/metadata/annotations/x"), ("replace", "/spec/configPatches/2/match")], frozenset({2})),
        ([("add", "/spec/configPatches/-")], frozenset()),
        ([("add", "/spec/configPatches/3")], frozenset()),
        ([("add", "/spec/configPatches/1")], None),
        ([("remove", "/spec/configPatches/1")], None),
        ([("replace", "/spec/configPatches")], None),
        ([("replace", "/spec")], None),
        ([("add", "/spec/workloadSelector")], None),
    ],
)
def test_touched_patches(paths: list[tuple[str, str]], expected: frozenset[int] | None) -> None:
    ops = [PatchOp(op, path, {}) for op, path in paths]  # type: ignore[arg-type]
    assert _touched_patches(ops, 3) == expected


def test_a_rebuild_that_reuses_untouched_patches_equals_a_fresh_read() -> None:
    document = _bad()
    first = locate_ext_proc(EnvoyFilter.of(document), EXT_PROC)
    assert first is not None
    working = dict(document)
    owned = {id(working)}
    op = PatchOp("replace", "/spec/configPatches/0/patch/value/typed_config/processing_mode", {})
    apply_op(working, op, owned=owned)
    touched = _touched_patches([op], len(document["spec"]["configPatches"]))
    assert touched == frozenset({0})
    reuse = {i: e for i, e in enumerate(first.entries) if e is not None and i not in touched}
    rebuilt = locate_ext_proc(EnvoyFilter.of(working), EXT_PROC, reuse=reuse)
    fresh = locate_ext_proc(EnvoyFilter.of(copy.deepcopy(working)), EXT_PROC)
    assert rebuilt == fresh
    assert rebuilt is not None
    assert rebuilt.entries[1] is first.entries[1]


def test_a_reused_entry_that_is_not_the_same_object_is_read_again() -> None:
    document = _bad()
    first = locate_ext_proc(EnvoyFilter.of(document), EXT_PROC)
    assert first is not None
    changed = copy.deepcopy(document)
    changed["spec"]["configPatches"][0]["patch"]["operation"] = "MERGE"
    reuse = {i: e for i, e in enumerate(first.entries) if e is not None}
    rebuilt = locate_ext_proc(EnvoyFilter.of(changed), EXT_PROC, reuse=reuse)
    assert rebuilt is not None
    assert rebuilt.filters[0].patch.operation == "MERGE"


def test_the_fixed_document_is_a_tree_of_its_own() -> None:
    document = _bad()
    result = evaluate(document, policy=default_policy(), resolver=resolver())
    assert result.patch
    fixed = result.fixed
    fixed["spec"]["configPatches"][1]["patch"]["value"]["name"] = "changed"
    assert document["spec"]["configPatches"][1]["patch"]["value"]["name"] != "changed"
    assert (
        apply_patch(document, result.patch)
        == evaluate(document, policy=default_policy(), resolver=resolver()).fixed
    )


def test_a_document_of_its_own_context_reuses_what_the_index_read_and_is_judged_as_a_copy_is() -> None:
    bad = _bad()
    other = build(Shape(cluster_type="STRICT_DNS"))
    other["metadata"]["name"] = "second"
    context = Context(envoy_filters=(bad, other))
    policy = default_policy()
    workload = workload_of(context, EnvoyFilter.of(bad), policy.filter_name)
    assert workload.entries_read(bad)
    assert workload.entries_read(copy.deepcopy(bad)) is None
    for document in (bad, other):
        judged = evaluate(document, policy=policy, resolver=resolver(), context=context)
        copied = evaluate(copy.deepcopy(document), policy=policy, resolver=resolver(), context=context)
        assert judged.findings
        assert judged == copied
