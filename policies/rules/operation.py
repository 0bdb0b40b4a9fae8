"""EPX001 ext-proc-operation and EPX012 replace-target-missing: how the EPP's ext_proc filter is installed.

Both judge only filters whose role is `epp`. EPX001's fix REPLACEs a filter of the patch's own name, so
another ext_proc filter of the gateway (body-based routing, an activator) is never the one replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

from policies.model import as_mapping
from policies.patch import PatchOp
from policies.pieces import FilterPiece
from policies.rules.base import Rule, Violation, for_role, set_key
from policies.subject import Subject

HCM: Final = "envoy.filters.network.http_connection_manager"
INSERTING: Final = frozenset({"INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "ADD"})
REPLACE_TARGET_ANNOTATION: Final = "extproc-guard.io/replace-target"
"""Set to `verified` (by the reconciler, after looking at the gateway) when the gateway has the filter."""
ISTIO_INFERENCE_FILTER: Final = "envoy.filters.http.ext_proc"
"""The filter istiod adds to a gateway for an attached InferencePool (with the inference extension on)."""


def own_name(piece: FilterPiece, subject: Subject) -> str:
    """The filter name the patch installs (its value's `name`), else the policy's filter name."""
    return piece.name or subject.policy.filter_name


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
    for piece in subject.epp.filters:
        filter_name = own_name(piece, subject)
        problem = _wrong_operation(piece, filter_name)
        if problem is None:
            continue
        violation = Violation(
            path=piece.patch.path + "/patch/operation",
            message=(
                f"the HTTP_FILTER patch that installs the EPP's {filter_name} {problem}: a second ext_proc "
                f"filter lands next to the one the gateway already has (or in the wrong place), so the "
                f"gateway runs the wrong one or none; use operation REPLACE matching subFilter {filter_name}"
            ),
            fix=f"set operation REPLACE and match.listener.filterChain.filter.subFilter.name {filter_name}",
            fixable=True,
        )
        yield for_role(subject, piece, violation, envoy_rejects=False)


def _nest(chain: list[tuple[str, dict[str, Any]]], leaf: dict[str, Any]) -> dict[str, Any]:
    """`chain` [(key, own fields)...] around `leaf`: each level holds its own fields and the next key."""
    nested = leaf
    for key, fields in chain[::-1]:  # (not `reversed`: the compiled build cannot take it here)
        nested = {key: {**fields, **nested}}
    return nested


def _ensure_sub_filter(piece: FilterPiece, filter_name: str) -> Iterator[PatchOp]:
    """Ops that make `match.listener.filterChain.filter.subFilter.name` the filter name, with the connection
    manager named on `filter` (where Istio matches it), creating the levels that are missing."""
    chain: list[tuple[str, dict[str, Any]]] = [
        ("match", {}),
        ("listener", {}),
        ("filterChain", {}),
        ("filter", {"name": HCM}),
        ("subFilter", {}),
    ]
    parent: Any = piece.patch.raw
    path = piece.patch.path
    for depth, (key, _fields) in enumerate(chain):
        child = as_mapping(parent).get(key)
        if not isinstance(child, dict):
            inner = _nest(chain[depth + 1 :], {"name": filter_name}) if depth + 1 < len(chain) else {}
            leaf = {"name": filter_name} if depth + 1 == len(chain) else inner
            yield set_key(path, parent, key, {**chain[depth][1], **leaf})
            return
        if key == "filter" and child.get("name") != HCM:
            yield set_key(f"{path}/{key}", child, "name", HCM)
        parent, path = child, f"{path}/{key}"
    yield set_key(path, parent, "name", filter_name)


def fix_operation(subject: Subject) -> Iterator[PatchOp]:
    for piece in subject.epp.filters:
        filter_name = own_name(piece, subject)
        if _wrong_operation(piece, filter_name) is None:
            continue
        if piece.patch.operation != "REPLACE":
            yield set_key(piece.patch.path + "/patch", piece.patch.patch, "operation", "REPLACE")
        if piece.patch.sub_filter_name != filter_name:
            yield from _ensure_sub_filter(piece, filter_name)


def _gateway_has(subject: Subject, filter_name: str) -> bool:
    """Whether something says the gateway already runs a filter of that name."""
    if subject.envoy_filter.annotations.get(REPLACE_TARGET_ANNOTATION) == "verified":
        return True
    if filter_name == ISTIO_INFERENCE_FILTER and subject.picker_pool() is not None:
        return True
    return subject.workload.has_filter(filter_name, _inserts)


def _inserts(piece: FilterPiece) -> bool:
    return piece.patch.operation in INSERTING


def check_replace_target(subject: Subject) -> Iterable[Violation]:
    for piece in subject.epp.filters:
        filter_name = own_name(piece, subject)
        if piece.patch.operation != "REPLACE" or piece.patch.sub_filter_name != filter_name:
            continue
        if _gateway_has(subject, filter_name):
            continue
        violation = Violation(
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
        yield for_role(subject, piece, violation, envoy_rejects=False)


EPX001 = Rule("EPX001", "ext-proc-operation", check_operation, fix_operation)
EPX012 = Rule("EPX012", "replace-target-missing", check_replace_target)
