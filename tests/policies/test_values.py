"""The engine's value objects that are built many times per review (patch operations, violations,
findings, config-patch entries): immutable, equal and hashable by value, and they survive pickling (the
`check` workers send findings back) and copying, with the interpreted and the compiled build alike
(`tests/test_compiled_engine.py` runs this file against the compiled build).

They are slotted dataclasses with `Final` fields and an explicit `__init__` and `__reduce__` instead of
frozen dataclasses: a dataclass-generated `__init__` runs as Python even in the compiled build, and there a
frozen dataclass does not unpickle.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import pickle
from pathlib import Path
from typing import Any

import pytest

from policies.build import engine_build
from policies.findings import Finding, Level
from policies.model import read_config_patch
from policies.patch import PatchOp
from policies.pieces import EntryPieces
from policies.role import Role, RoleDecision
from policies.rules.base import Violation

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {
    PatchOp: "policies/patch.py",
    Violation: "policies/rules/base.py",
    Finding: "policies/findings.py",
    EntryPieces: "policies/pieces.py",
}

HASHABLE: list[Any] = [
    PatchOp("replace", "/spec/configPatches/0/patch/operation", "REPLACE"),
    PatchOp("remove", "/spec/configPatches/0"),
    Violation("/spec", "message", "fix", True),
    Violation("/spec", "message", "fix", False, Level.WARN, RoleDecision(Role.EPP, "why")),
    Finding("EPX001", "insert-before", Level.ENFORCE, "/spec", "message", "fix", True),
    Finding("EPX002", "streamed", Level.WARN, "/spec", "message", "fix", False, "other", "why"),
]
PICKLED: list[Any] = [
    PatchOp("add", "/metadata/annotations", {"extproc-guard.io/epp-service": "ns/epp"}),
    Violation("/spec", "message", "fix", True, Level.WARN),
    *(value for value in HASHABLE if isinstance(value, Finding)),
]
"""What crosses processes or gets copied: findings (the `check` workers), patch operations, violations
without a role decision."""

# Another value for each field, of the field's type.
CHANGED: dict[str, Any] = {
    "op": "add",
    "path": "/other",
    "value": {"changed": True},
    "message": "other message",
    "fix": "other fix",
    "fixable": None,  # negated below
    "cap": Level.OFF,
    "rule": "EPX099",
    "slug": "other-slug",
    "level": Level.OFF,
    "role_why": "other why",
}


def _changed(value: Any, name: str) -> Any:
    current = getattr(value, name)
    if name == "fixable":
        return not current
    if name == "role":
        return "undecided" if isinstance(value, Finding) else RoleDecision(Role.OTHER, "changed")
    return CHANGED[name]


@pytest.mark.parametrize("value", PICKLED, ids=lambda v: type(v).__name__)
def test_a_value_survives_pickling_and_copying(value: Any) -> None:
    for other in (pickle.loads(pickle.dumps(value)), copy.copy(value), copy.deepcopy(value)):
        assert type(other) is type(value)
        assert other == value
        assert repr(other) == repr(value)


@pytest.mark.parametrize("value", HASHABLE, ids=lambda v: type(v).__name__)
def test_equality_and_hash_follow_every_field(value: Any) -> None:
    for field in dataclasses.fields(value):
        other = _changed(value, field.name)
        changed = dataclasses.replace(value, **{field.name: other})
        assert changed != value, field.name
        assert getattr(changed, field.name) == other
        assert dataclasses.replace(value, **{field.name: getattr(value, field.name)}) == value
    again = dataclasses.replace(value)
    assert hash(again) == hash(value)
    assert len({value, again}) == 1


@pytest.mark.parametrize("kind", list(SOURCES), ids=lambda kind: kind.__name__)
def test_every_field_is_final_and_read_only_in_the_compiled_build(kind: type) -> None:
    tree = ast.parse((ROOT / SOURCES[kind]).read_text(encoding="utf-8"))
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == kind.__name__]
    annotated = {
        statement.target.id: ast.unparse(statement.annotation)
        for statement in node.body
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
    }
    assert set(annotated) == {field.name for field in dataclasses.fields(kind)}
    assert all(text.startswith("Final[") for text in annotated.values()), annotated
    if kind is EntryPieces:
        value = EntryPieces(read_config_patch(0, {"applyTo": "CLUSTER", "patch": {"operation": "ADD"}}))
    else:
        value = next(v for v in HASHABLE if type(v) is kind)
    first = dataclasses.fields(kind)[0].name
    if engine_build() == "compiled":  # the interpreted build relies on mypy (Final) alone
        with pytest.raises(AttributeError):
            setattr(value, first, getattr(value, first))


def test_defaults_are_the_documented_ones() -> None:
    assert PatchOp("remove", "/a").value is None
    violation = Violation("/a", "m", "f", True)
    assert (violation.cap, violation.role) == (None, None)
    finding = Finding("EPX001", "s", Level.ENFORCE, "/a", "m", "f", True)
    assert (finding.role, finding.role_why) == ("", "")
    entry = EntryPieces(read_config_patch(0, {}))
    assert (entry.filters, entry.routes, entry.cluster) == ((), (), None)
