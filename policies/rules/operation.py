"""EPX001 ext-proc-operation and EPX012 replace-target-missing: how the ext_proc filter enters the chain."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

from policies.model import as_mapping
from policies.patch import PatchOp
from policies.pieces import FilterPiece
from policies.rules.base import Rule, Violation, set_key
from policies.subject import Subject

HCM: Final = "envoy.filters.network.http_connection_manager"
INSERTING: Final = frozenset({"INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "ADD"})
REPLACE_TARGET_ANNOTATION: Final = "extproc-guard.io/replace-target"
"""Set to `verified` (by the reconciler, after looking at the gateway) when the gateway has the filter."""


def _wrong_operation(piece: FilterPiece, filter_name: str) -> str | None:
    operation = piece.patch.operation
    if operation in INSERTING:
        target = piece.patch.sub_filter_name
        where = f" relative to {target}" if target else ""
        return f"uses {operation}{where}"
    if operation == "REPLACE" and piece.patch.sub_filter_name != filter_name:
        return f"REPLACEs {piece.patch.sub_filter_name or 'no named sub-filter'} instead of {filter_name}"
    if operation not in ("REPLACE", "MERGE"):
        return f"uses operation {operation or '(none)'}"
    return None


def check_operation(subject: Subject) -> Iterator[Violation]:
    filter_name = subject.policy.filter_name
    for piece in subject.pieces.filters:
        problem = _wrong_operation(piece, filter_name)
        if problem is None:
            continue
        yield Violation(
            path=piece.patch.path + "/patch/operation",
            message=(
                f"the HTTP_FILTER patch that installs {filter_name} {problem}: a second ext_proc filter "
                f"lands next to the one the gateway already has (or in the wrong place), so the gateway "
                f"runs the wrong one or none; use operation REPLACE matching subFilter {filter_name}"
            ),
            fix=f"set operation REPLACE and match.listener.filterChain.filter.subFilter.name {filter_name}",
            fixable=True,
        )


def _ensure_sub_filter(piece: FilterPiece, filter_name: str) -> Iterator[PatchOp]:
    """Ops that make `match.listener.filterChain.filter.subFilter.name` the filter name."""
    chain: list[tuple[str, Any]] = [
        ("match", {}),
        ("listener", {}),
        ("filterChain", {}),
        ("filter", {"name": HCM}),
        ("subFilter", {}),
    ]
    parent: Any = piece.patch.raw
    path = piece.patch.path
    for depth, (key, seed) in enumerate(chain):
        child = as_mapping(parent).get(key)
        if not isinstance(child, dict):
            nested: dict[str, Any] = {"name": filter_name}
            for inner_key, inner_seed in reversed(chain[depth + 1 :]):
                nested = {**inner_seed, inner_key: nested}
            yield set_key(path, parent, key, {**seed, **nested})
            return
        parent, path = child, f"{path}/{key}"
    yield set_key(path, parent, "name", filter_name)


def fix_operation(subject: Subject) -> Iterator[PatchOp]:
    filter_name = subject.policy.filter_name
    for piece in subject.pieces.filters:
        if _wrong_operation(piece, filter_name) is None:
            continue
        if piece.patch.operation != "REPLACE":
            yield set_key(piece.patch.path + "/patch", piece.patch.patch, "operation", "REPLACE")
        if piece.patch.sub_filter_name != filter_name:
            yield from _ensure_sub_filter(piece, filter_name)


def check_replace_target(subject: Subject) -> Iterable[Violation]:
    if subject.envoy_filter.annotations.get(REPLACE_TARGET_ANNOTATION) == "verified":
        return
    filter_name = subject.policy.filter_name
    for piece in subject.pieces.filters:
        if piece.patch.operation != "REPLACE" or piece.patch.sub_filter_name != filter_name:
            continue
        yield Violation(
            path=piece.patch.path + "/patch/operation",
            message=(
                f"REPLACE on {filter_name} does nothing when the gateway has no filter of that name "
                f"(Istio adds it only for an attached InferencePool with "
                f"ENABLE_GATEWAY_API_INFERENCE_EXTENSION on); confirm the gateway's config has it, then "
                f"annotate {REPLACE_TARGET_ANNOTATION}: verified"
            ),
            fix="check the gateway's filter chain for the filter (the reconciler does this live)",
            fixable=False,
        )


EPX001 = Rule("EPX001", "ext-proc-operation", check_operation, fix_operation)
EPX012 = Rule("EPX012", "replace-target-missing", check_replace_target)
