"""The one entry point every adapter calls: evaluate a document against a policy.

    evaluate(document, *, policy, resolver) -> Evaluation

- `document` is a plain JSON-like mapping (one YAML/JSON document, or an AdmissionReview's object).
- `Evaluation.applicable` is False for anything that is not a networking.istio.io EnvoyFilter with ext_proc
  content (or that the policy excludes); then `findings` and `patch` are empty and `fixed == document`.
- `Evaluation.findings` are the findings of the *given* document (what `check` prints), in rule-id order,
  `off` rules omitted.
- `Evaluation.patch` is a minimal RFC 6902 patch (only paths a rule owns) that turns the document into its
  corrected form; `Evaluation.fixed` is that corrected document; `Evaluation.remaining` are the findings of
  `fixed` (what is still wrong after the fix: the webhook denies those at `enforce`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.context import EMPTY_CONTEXT, Context
from policies.diff import copy_tree, diff_documents
from policies.findings import Finding, Level
from policies.model import DocumentError, EnvoyFilter, read_envoy_filter
from policies.patch import PatchOp, apply_op, split_pointer
from policies.pieces import locate_ext_proc
from policies.policy import Policy
from policies.resolver import ServiceResolver
from policies.rules import RULES, Rule, Violation
from policies.rules.base import fix_nothing
from policies.subject import Subject
from policies.workload import Workload, workload_of

__all__ = ["DocumentError", "Evaluation", "evaluate"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Repair:
    patch: tuple[PatchOp, ...]
    fixed: Callable[[], dict[str, Any]]
    """The corrected document, a tree of its own (the working copy shares unchanged subtrees with the
    given document, so it is copied when first asked for; the mutating webhook never asks)."""
    remaining: Callable[[], tuple[Finding, ...]]
    """Checks the fixed document when called (the mutating webhook never asks)."""


def _same_document(document: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: document


def _known(findings: tuple[Finding, ...]) -> Callable[[], tuple[Finding, ...]]:
    return lambda: findings


@dataclass(frozen=True, eq=False)
class Evaluation:
    """What the policy says about one document, and its corrected form.

    `patch`, `fixed` and `remaining` are computed on first use (`check` reads only `findings`, the mutating
    webhook `findings` and `patch`), from the document as given: do not change the document, or `fixed`,
    before reading them.
    """

    applicable: bool
    namespace: str
    name: str
    findings: tuple[Finding, ...]
    _repair: Callable[[], _Repair] = field(repr=False)
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    """What was computed on first use (kept explicitly: a compiled build of the engine would turn
    `functools.cached_property` into a plain property and repair again on every read)."""

    @property
    def _repaired(self) -> _Repair:
        known: _Repair | None = self._memo.get("repair")
        if known is None:
            known = self._memo["repair"] = self._repair()
        return known

    @property
    def patch(self) -> tuple[PatchOp, ...]:
        """A minimal RFC 6902 patch (only rule-owned paths) from the document to its corrected form."""
        return self._repaired.patch

    @property
    def fixed(self) -> dict[str, Any]:
        """The corrected document (the given document itself when nothing changes)."""
        known: dict[str, Any] | None = self._memo.get("fixed")
        if known is None:
            known = self._memo["fixed"] = self._repaired.fixed()
        return known

    @property
    def remaining(self) -> tuple[Finding, ...]:
        """The findings of `fixed`: what the fix could not repair."""
        known: tuple[Finding, ...] | None = self._memo.get("remaining")
        if known is None:
            known = self._memo["remaining"] = self._repaired.remaining()
        return known

    @property
    def enforced(self) -> tuple[Finding, ...]:
        """Findings of the given document at `enforce`."""
        return tuple(f for f in self.findings if f.enforced)

    @property
    def unfixed(self) -> tuple[Finding, ...]:
        """Findings still at `enforce` after the fix (what the webhook denies)."""
        return tuple(f for f in self.remaining if f.enforced)

    @property
    def changed(self) -> bool:
        return bool(self.patch)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Evaluation):
            return NotImplemented
        return (
            self.applicable == other.applicable
            and self.namespace == other.namespace
            and self.name == other.name
            and self.findings == other.findings
            and self.patch == other.patch
            and self.fixed == other.fixed
            and self.remaining == other.remaining
        )

    __hash__ = None  # type: ignore[assignment]


def _subject(
    document: Mapping[str, Any],
    policy: Policy,
    resolver: ServiceResolver,
    context: Context,
    workload: Workload,
    *,
    decided: Subject | None = None,
    touched: frozenset[int] | None = None,
) -> Subject | None:
    """The subject of `document`. `decided` is the subject of the same document before a fix: its roles
    (by piece path) and profile carry over, since they are decided on the document as written and a fix
    must not change them (the property tests check that a fresh evaluation of the fixed document agrees);
    and its config patches are reused except the `touched` ones (None: every one may have changed)."""
    envoy_filter = read_envoy_filter(document)
    if envoy_filter is None:
        return None
    reuse = None
    if decided is not None and touched is not None:
        reuse = decided.pieces.entries_by_index(touched)
    pieces = locate_ext_proc(
        envoy_filter, policy.filter_name, used_clusters=workload.used_cluster_names(), reuse=reuse
    )
    if pieces is None:
        return None
    if decided is None:
        return Subject(pieces, policy, resolver, context, _workload=workload)
    return Subject(
        pieces,
        policy,
        resolver,
        context,
        _roles=dict(decided.decided_roles),
        _workload=workload,
        _profile=decided.decided_profile,
    )


def existing_path(document: Mapping[str, Any], path: str) -> str:
    """The longest prefix of `path` that names a node of `document` (a finding about a field that is not
    written yet points at the object that should hold it, so adapters can always place it on a line)."""
    node: Any = document
    for depth, token in enumerate(split_pointer(path)):
        if (type(node) is dict or isinstance(node, Mapping)) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return "/".join(path.split("/")[: depth + 1])
    return path


def _to_finding(rule: Rule, level: Level, violation: Violation, document: Mapping[str, Any]) -> Finding:
    if violation.cap is Level.WARN and level is Level.ENFORCE:
        level = Level.WARN
    role = violation.role
    return Finding(
        rule=rule.id,
        slug=rule.slug,
        level=level,
        path=existing_path(document, violation.path),
        message=violation.message,
        fix=violation.fix,
        fixable=violation.fixable,
        role=role.role.value if role is not None else "",
        role_why=role.why if role is not None else "",
    )


def _owned_prefixes(subject: Subject) -> tuple[str, ...]:
    """The paths a fix may touch: the EPP's own patches, route entries and clusters, and the metadata."""
    epp = subject.epp
    owned = [piece.patch.path for piece in epp.filters]
    owned += [route.path for route in epp.routes]
    owned += [cluster.path for cluster in epp.epp_clusters]
    owned.append("/metadata/annotations")
    return tuple(owned)


def _owned(op: PatchOp, prefixes: tuple[str, ...], patch_count: int) -> bool:
    path = op.path
    if any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes):
        return True
    tokens = split_pointer(path)
    if tokens[:2] == ["spec", "configPatches"] and len(tokens) == 3:
        return tokens[2] == "-" or (tokens[2].isdigit() and int(tokens[2]) >= patch_count)
    return path in ("/metadata", "/metadata/annotations")


_ACTIVE: dict[tuple[int, bool], tuple[Policy, list[tuple[Rule, Level]]]] = {}


def _active_rules(policy: Policy, *, fixing_only: bool = False) -> list[tuple[Rule, Level]]:
    """The rules the policy turns on, with their levels (remembered per policy object)."""
    key = (id(policy), fixing_only)
    known = _ACTIVE.get(key)
    if known is not None and known[0] is policy:
        return known[1]
    active: list[tuple[Rule, Level]] = []
    for rule in RULES:
        level = policy.level(rule.id)
        if level is not Level.OFF and not (fixing_only and rule.fix is fix_nothing):
            active.append((rule, level))
    if len(_ACTIVE) >= 64:
        _ACTIVE.clear()
    _ACTIVE[key] = (policy, active)
    return active


def _check(subject: Subject, active: list[tuple[Rule, Level]]) -> list[tuple[Rule, Level, list[Violation]]]:
    return [(rule, level, list(rule.check(subject))) for rule, level in active]


def _findings(
    results: list[tuple[Rule, Level, list[Violation]]], document: Mapping[str, Any]
) -> tuple[Finding, ...]:
    return tuple(
        _to_finding(rule, level, v, document) for rule, level, violations in results for v in violations
    )


def _repair(
    document: Mapping[str, Any],
    subject: Subject,
    results: list[tuple[Rule, Level, list[Violation]]],
) -> tuple[dict[str, Any], Subject] | None:
    """Run every fixable rule's fix in id order on a working copy; the copy and its subject, or None when
    nothing changed."""
    working: dict[str, Any] | None = None
    owned: set[int] = set()
    current = subject
    for rule, _level, violations in results:
        if rule.fix is fix_nothing:
            continue
        if working is not None:
            violations = list(rule.check(current))
        if not any(v.fixable for v in violations):
            continue
        ops = list(rule.fix(current))
        if not ops:
            continue
        if working is None:
            working = dict(document)  # copy on write: only the containers the fixes change are copied
            owned = {id(working)}
        touched = _touched_patches(ops, current.envoy_filter.patch_count)
        for op in ops:
            apply_op(working, op, owned=owned)
        rebuilt = _subject(
            working,
            current.policy,
            current.resolver,
            current.context,
            current.workload,
            decided=current,
            touched=touched,
        )
        if rebuilt is None:
            logger.warning("rule %s removed the ext_proc content it fixed; fix dropped", rule.id)
            return None
        current = rebuilt
    return None if working is None else (working, current)


def _touched_patches(ops: list[PatchOp], patch_count: int) -> frozenset[int] | None:
    """The indexes of the config patches that `ops` change, when every other one keeps its index and
    content; None when an op changes the document above them (the list itself, `spec`, the root) or shifts
    them. Changes to `metadata` and patches appended at the end touch none of the existing ones."""
    touched: set[int] = set()
    for op in ops:
        tokens = split_pointer(op.path)
        if tokens and tokens[0] == "metadata":
            continue
        if len(tokens) < 3 or tokens[0] != "spec" or tokens[1] != "configPatches":
            return None
        index = tokens[2]
        if len(tokens) == 3:
            appended = op.op == "add" and (index == "-" or (index.isdigit() and int(index) >= patch_count))
            if not appended:
                return None
            continue
        if not index.isdigit():
            return None
        touched.add(int(index))
    return frozenset(touched)


def _not_applicable(envoy_filter: EnvoyFilter | None, document: dict[str, Any]) -> Evaluation:
    unchanged = _Repair(patch=(), fixed=_same_document(document), remaining=_known(()))
    return Evaluation(
        applicable=False,
        namespace=envoy_filter.namespace if envoy_filter else "",
        name=envoy_filter.name if envoy_filter else "",
        findings=(),
        _repair=lambda: unchanged,
    )


def _repaired(
    document: dict[str, Any],
    subject: Subject,
    active: list[tuple[Rule, Level]],
    results: list[tuple[Rule, Level, list[Violation]]],
    findings: tuple[Finding, ...],
) -> _Repair:
    repaired = None
    if any(violation.fixable for *_, violations in results for violation in violations):
        repaired = _repair(document, subject, results)
    if repaired is None:
        return _Repair(patch=(), fixed=_same_document(document), remaining=_known(findings))
    working, final = repaired
    patch = tuple(diff_documents(document, working))
    prefixes = _owned_prefixes(subject)
    count = subject.envoy_filter.patch_count
    foreign = [op.path for op in patch if not _owned(op, prefixes, count)]
    if foreign:
        logger.error("a fix would change %s, which no EPP piece owns; fix dropped", foreign[0])
        return _Repair(patch=(), fixed=_same_document(document), remaining=_known(findings))
    return _Repair(
        patch=patch,
        fixed=lambda: copy_tree(working),
        remaining=lambda: _findings(_check(final, active), working),
    )


def evaluate(
    document: Mapping[str, Any],
    *,
    policy: Policy,
    resolver: ServiceResolver,
    context: Context = EMPTY_CONTEXT,
    fixing_only: bool = False,
) -> Evaluation:
    """Check one document in its context; its fix is computed when first asked for. Raises
    `DocumentError` only for a document that is not a mapping.

    `fixing_only` checks only the rules that have a fix: what a mutating webhook needs, since it reports
    what it fixed and patches (its `findings` and `remaining` then leave the other rules out; the validating
    webhook, `check` and the reconciler judge with every rule)."""
    envoy_filter = read_envoy_filter(document)
    plain = document if isinstance(document, dict) else copy_tree(document)
    if envoy_filter is None or policy.excludes(envoy_filter.namespace, envoy_filter.annotations):
        return _not_applicable(envoy_filter, plain)
    envoy_filter = EnvoyFilter.of(plain)
    workload = workload_of(context, envoy_filter, policy.filter_name)
    pieces = locate_ext_proc(
        envoy_filter,
        policy.filter_name,
        used_clusters=workload.used_cluster_names(),
        reuse=workload.entries_read(plain),
    )
    if pieces is None:
        return _not_applicable(envoy_filter, plain)
    subject = Subject(pieces, policy, resolver, context, _workload=workload)
    active = _active_rules(policy, fixing_only=fixing_only)
    results = _check(subject, active)
    findings = _findings(results, plain)
    return Evaluation(
        applicable=True,
        namespace=envoy_filter.namespace,
        name=envoy_filter.name,
        findings=findings,
        _repair=lambda: _repaired(plain, subject, active, results, findings),
    )
