"""What the reconciler does with one plan: a computed plan, the Services it pins, a port to follow.

- `Plan` is the engine's verdict with the patch and the corrected document computed (the engine computes
  them lazily; the reconciler always needs them).
- `RecordingResolver` remembers the address the engine was given for each Service, so drift repair
  compares against exactly what a filter was pinned to.
- `follow_port` extends the fix when a single-port EPP Service was recreated on another port: the one
  change the engine cannot decide alone (EPX007: it never saw the old port), but the reconciler can.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from policies import (
    EMPTY_CONTEXT,
    Context,
    Evaluation,
    Finding,
    PatchOp,
    Policy,
    ServiceAddress,
    ServiceLookupError,
    ServiceRef,
    ServiceResolver,
    apply_patch,
    evaluate,
    split_pointer,
)

logger = logging.getLogger(__name__)

PROVENANCE_ANNOTATION = "extproc-guard.io/epp-service"
PORT_RULE = "EPX007"


@dataclass(frozen=True, slots=True)
class Plan:
    """The engine's verdict on one object, with everything computed: what is wrong, the patch, the result."""

    applicable: bool
    namespace: str
    name: str
    findings: tuple[Finding, ...]
    patch: tuple[PatchOp, ...]
    fixed: dict[str, Any]
    remaining: tuple[Finding, ...]


def plan_of(evaluation: Evaluation) -> Plan:
    if not evaluation.applicable:
        return Plan(False, evaluation.namespace, evaluation.name, (), (), {}, ())
    return Plan(
        True,
        evaluation.namespace,
        evaluation.name,
        evaluation.findings,
        evaluation.patch,
        evaluation.fixed,
        evaluation.remaining,
    )


class RecordingResolver:
    """Passes lookups through and remembers each answer, so the reconciler knows the exact address the
    engine pinned a filter to (None = the Service had no usable address)."""

    def __init__(self, inner: ServiceResolver) -> None:
        self._inner = inner
        self.answers: dict[ServiceRef, ServiceAddress | None] = {}

    def lookup(self, ref: ServiceRef) -> ServiceAddress:
        try:
            address = self._inner.lookup(ref)
        except ServiceLookupError:
            self.answers[ref] = None
            raise
        self.answers[ref] = address
        return address


def answer_of(resolver: ServiceResolver, ref: ServiceRef) -> ServiceAddress | None:
    try:
        return resolver.lookup(ref)
    except ServiceLookupError:
        return None


def provenance_of(document: Mapping[str, Any]) -> ServiceRef | None:
    """The Service named by the provenance annotation (`NAMESPACE/NAME`), if any."""
    annotations = (document.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(PROVENANCE_ANNOTATION) if isinstance(annotations, Mapping) else None
    if not isinstance(value, str):
        return None
    namespace, slash, name = value.strip().partition("/")
    return ServiceRef(namespace, name) if slash and namespace and name else None


@dataclass(frozen=True, slots=True)
class PortMove:
    """A single-port Service recreated on another port: the one case where the new port is no guess."""

    old: int
    new: int


def port_move(previous: ServiceAddress | None, current: ServiceAddress | None) -> PortMove | None:
    if previous is None or current is None or len(previous.ports) != 1 or len(current.ports) != 1:
        return None
    if previous.ports == current.ports:
        return None
    return PortMove(previous.ports[0], current.ports[0])


def _value_at(document: Any, path: str) -> Any:
    node = document
    for token in split_pointer(path):
        if isinstance(node, Mapping) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


def follow_port(
    plan: Plan, move: PortMove, *, policy: Policy, resolver: ServiceResolver, context: Context = EMPTY_CONTEXT
) -> Plan:
    """Add the port to the engine's fix when the EPP Service moved from its one port to another one.

    The engine leaves a port that is not a port of the Service to a person (EPX007: no safe guess).
    The reconciler saw the Service before and after, so a filter still on the old single port
    follows the Service to its new single port; anything else stays EPX007.
    """
    ops = [
        PatchOp("replace", f.path, move.new)
        for f in plan.remaining
        if f.rule == PORT_RULE
        and f.path.endswith("/port_value")
        and _value_at(plan.fixed, f.path) == move.old
    ]
    if not ops:
        return plan
    fixed = apply_patch(plan.fixed, ops)
    logger.info(
        "drift: envoyfilter %s/%s follows its Service from port %d to %d",
        plan.namespace,
        plan.name,
        move.old,
        move.new,
    )
    after = evaluate(fixed, policy=policy, resolver=resolver, context=context)
    return replace(plan, patch=plan.patch + tuple(ops), fixed=fixed, remaining=after.findings)
