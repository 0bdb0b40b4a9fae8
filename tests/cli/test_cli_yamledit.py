"""The round-trip YAML edit behind `fix`: a diff of the output shows only the patched lines."""

from __future__ import annotations

import difflib
from typing import Any

import pytest
import yaml

from cli.yamledit import EditError, Indentation, edit_stream, guess_indentation
from policies.patch import PatchOp, apply_patch

SOURCE = """\
# top comment
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: f   # trailing comment
spec:
  configPatches:
  - applyTo: CLUSTER
    patch:
      operation: ADD
      value:
        type: STRICT_DNS                 # wrong type
        "quoted": "keep"
        z_last: 1
        a_first: 2
---
kind: Unrelated
data: {inline: flow, untouched: yes}
"""


def diff_lines(before: str, after: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def expected_after(text: str, edits: dict[int, list[PatchOp]]) -> list[Any]:
    documents = list(yaml.safe_load_all(text))
    return [apply_patch(doc, edits.get(i, [])) for i, doc in enumerate(documents)]


def test_a_replaced_scalar_is_the_only_changed_line_and_its_comment_stays() -> None:
    edits = {0: [PatchOp("replace", "/spec/configPatches/0/patch/value/type", "STATIC")]}
    after = edit_stream(SOURCE, edits, expected=expected_after(SOURCE, edits))
    assert diff_lines(SOURCE, after) == [
        "-        type: STRICT_DNS                 # wrong type",
        "+        type: STATIC                     # wrong type",
    ]


def test_added_members_append_without_touching_the_rest() -> None:
    edits = {
        0: [
            PatchOp("add", "/metadata/annotations", {"extproc-guard.io/epp-service": "ns/epp"}),
            PatchOp("replace", "/spec/configPatches/0/patch/value/quoted", "changed"),
        ]
    }
    after = edit_stream(SOURCE, edits, expected=expected_after(SOURCE, edits))
    assert diff_lines(SOURCE, after) == [
        "+  annotations:",
        "+    extproc-guard.io/epp-service: ns/epp",
        '-        "quoted": "keep"',
        '+        "quoted": "changed"',
    ]


def test_untouched_documents_come_back_byte_for_byte() -> None:
    edits = {0: [PatchOp("replace", "/kind", "EnvoyFilter")]}
    after = edit_stream(SOURCE, edits, expected=expected_after(SOURCE, edits))
    assert after.split("---\n", 1)[1] == SOURCE.split("---\n", 1)[1]


def test_an_operation_that_does_not_fit_raises_edit_error() -> None:
    with pytest.raises(EditError, match="document 1"):
        edit_stream(SOURCE, {0: [PatchOp("replace", "/spec/nothing/here", 1)]}, expected=[])


def test_an_output_that_does_not_match_the_expected_documents_raises_edit_error() -> None:
    edits = {0: [PatchOp("replace", "/kind", "X")]}
    with pytest.raises(EditError, match="does not match"):
        edit_stream(SOURCE, edits, expected=[{"kind": "something else"}])


@pytest.mark.parametrize(
    ("text", "indentation"),
    [
        ("a:\n  b:\n  - c: 1\n", Indentation(mapping=2, sequence=2, offset=0)),
        ("a:\n    b:\n      - c: 1\n", Indentation(mapping=4, sequence=4, offset=2)),
        ("a:\n  b:\n    - c: 1\n", Indentation(mapping=2, sequence=4, offset=2)),
        ("a: 1\n", Indentation(mapping=2, sequence=2, offset=0)),
    ],
    ids=["kubectl-style", "four-with-offset", "indented-dashes", "flat"],
)
def test_indentation_is_guessed_from_the_file(text: str, indentation: Indentation) -> None:
    assert guess_indentation(text) == indentation


def test_a_file_indented_with_four_spaces_keeps_its_indentation() -> None:
    text = "spec:\n    configPatches:\n      - applyTo: CLUSTER\n        patch:\n            operation: ADD\n"
    edits = {0: [PatchOp("replace", "/spec/configPatches/0/patch/operation", "MERGE")]}
    after = edit_stream(text, edits, expected=expected_after(text, edits))
    assert diff_lines(text, after) == ["-            operation: ADD", "+            operation: MERGE"]


def test_added_keys_that_cannot_be_plain_get_double_quotes() -> None:
    edits = {0: [PatchOp("add", "/spec/extra", {"@type": "type.googleapis.com/x", "plain": "@odd"})]}
    after = edit_stream(SOURCE, edits, expected=expected_after(SOURCE, edits))
    assert '    "@type": type.googleapis.com/x\n' in after
    assert '    plain: "@odd"\n' in after
