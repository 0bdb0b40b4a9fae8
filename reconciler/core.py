"""The reconciler: keeps stored EnvoyFilters in their corrected form over time.

Three entry points, each one explicit step so the run loop (and tests) drive it:
- `audit()` lists every EnvoyFilter in scope a page at a time (each page judged and written before the next
  is read, so memory stays flat however many filters there are), runs the policy and applies the engine's
  minimal JSON Patch,
  guarded by a `test` op on the resourceVersion read: a concurrent write makes the patch fail instead of
  being overwritten, and the reconciler re-reads and retries on the fresh object (bounded). Unfixable
  findings become Events and a PolicyReport per namespace.
- `reconcile_change()` looks at one EnvoyFilter the watch saw change, unless the change is a version the
  reconciler already looked at or wrote itself (the echo of its own patch).
- `repair_drift()` re-checks the filters pinned to a Service (the `extproc-guard.io/epp-service`
  annotation) whose address changed since the engine last saw it, and patches them.
- Fights: an object written back to the bad form after a fix is reported (Event, metric, a log line
  naming the writer from managedFields) and left alone for an exponentially growing back-off.

Every write is gated by `may_write` (the Lease) and skipped in dry-run mode, which logs what would change.
The Kubernetes client blocks, so every call runs in a thread; one lock keeps audits and repairs apart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from policies import (
    EMPTY_CONTEXT,
    ContextSource,
    Finding,
    FixedContext,
    PatchOp,
    Policy,
    ServiceAddress,
    ServiceRef,
    ServiceResolver,
    evaluate,
)
from reconciler.api import (
    ENVOY_FILTERS,
    ConflictError,
    KubeAPIError,
    KubeObjects,
    NotFoundError,
    object_ref,
    resource_version,
)
from reconciler.events import Reason, describe_findings
from reconciler.fights import UNKNOWN_WRITER, Decision, FightTracker, Verdict, find_writer
from reconciler.metrics import ReconcileMetrics
from reconciler.plan import (
    Plan,
    PortMove,
    RecordingResolver,
    answer_of,
    follow_port,
    plan_of,
    port_move,
    provenance_of,
)
from reconciler.policyreport import FilterResult
from reconciler.reports import Reporter
from reconciler.settings import ReconcileSettings
from reconciler.watch import FilterChange

logger = logging.getLogger(__name__)


ObjectKey = tuple[str, str]


class Action(StrEnum):
    CLEAN = "clean"
    FIXED = "fixed"
    WOULD_FIX = "would-fix"
    BACKING_OFF = "backing-off"
    NOT_LEADER = "not-leader"
    GAVE_UP = "gave-up"
    GONE = "gone"
    ERROR = "error"
    NOT_APPLICABLE = "not-applicable"


UNREPORTED = frozenset({Action.NOT_APPLICABLE, Action.GONE, Action.ERROR, Action.NOT_LEADER, Action.GAVE_UP})
"""Outcomes that say nothing about the object's findings: left out of the PolicyReport."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one EnvoyFilter in one step."""

    namespace: str
    name: str
    action: Action
    patch: tuple[PatchOp, ...] = ()
    remaining: tuple[Finding, ...] = ()
    uid: str = ""
    attempts: int = 1
    writer: str = ""
    retry_in: float | None = None
    """For BACKING_OFF: seconds until the back-off ends and the object may be fixed again."""

    @property
    def unfixed(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.remaining if f.enforced)


@dataclass(frozen=True, slots=True)
class AuditResult:
    """What an audit did: an outcome per filter the policy applies to, and how many it does not apply to
    (those are only counted, so a large cluster's audit keeps little per object)."""

    outcomes: tuple[Outcome, ...]
    errors: tuple[str, ...]
    not_applicable: int = 0

    def by_action(self, action: Action) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.action is action)


@dataclass(slots=True)
class _AuditRun:
    """One audit's bookkeeping while it streams through the pages."""

    tracked: set[ObjectKey]
    seen: set[ObjectKey] = field(default_factory=set)
    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    objects: int = 0
    not_applicable: int = 0

    def add(self, outcome: Outcome) -> None:
        self.objects += 1
        if outcome.action is Action.NOT_APPLICABLE:
            self.not_applicable += 1
        else:
            self.outcomes.append(outcome)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _always() -> bool:
    return True


class Reconciler:
    def __init__(
        self,
        kube: KubeObjects,
        *,
        policy: Policy,
        resolver: ServiceResolver,
        settings: ReconcileSettings,
        metrics: ReconcileMetrics,
        may_write: Callable[[], bool] = _always,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utc_now,
        context: ContextSource | None = None,
    ) -> None:
        self._kube = kube
        self._policy = policy
        self._resolver = resolver
        self._context: ContextSource = context if context is not None else FixedContext(EMPTY_CONTEXT)
        self._settings = settings
        self._metrics = metrics
        self._may_write = may_write
        self._clock = clock
        self._lock = asyncio.Lock()
        self._fights = FightTracker(
            threshold=settings.fight_threshold,
            backoff_initial_seconds=settings.backoff_initial_seconds,
            backoff_max_seconds=settings.backoff_max_seconds,
        )
        self._reporter = Reporter(kube, metrics=metrics, instance=settings.identity, wall=wall)
        self._versions: dict[ObjectKey, str] = {}
        self._pinned_to: dict[ObjectKey, ServiceRef] = {}
        self._seen: dict[ServiceRef, ServiceAddress | None] = {}
        self._last_known: dict[ServiceRef, ServiceAddress] = {}

    @property
    def writes_allowed(self) -> bool:
        return not self._settings.dry_run and self._may_write()

    def is_pinned(self, ref: ServiceRef) -> bool:
        return ref in self._pinned_to.values()

    def version_seen(self, namespace: str, name: str) -> str | None:
        """The resourceVersion of the object the reconciler last looked at or wrote (None = never)."""
        return self._versions.get((namespace, name))

    def pinned(self) -> dict[ServiceRef, ServiceAddress | None]:
        """The Services filters are pinned to, with the address the engine last used for each."""
        refs = set(self._pinned_to.values())
        return {ref: self._seen.get(ref) for ref in sorted(refs)}

    # -- audit -----------------------------------------------------------------------------------------
    async def audit(self) -> AuditResult:
        """List every EnvoyFilter in scope and reconcile each; then write the PolicyReports.

        The list is read a page at a time, and each page is judged and written (patches, Events) before
        the next one is asked for, so memory does not grow with the number of filters: what an audit keeps
        per object is its outcome, and only for filters the policy applies to (the others are counted)."""
        async with self._lock:
            started = self._clock()
            run = _AuditRun(tracked=self._tracked_keys())
            scopes: tuple[str | None, ...] = self._settings.namespaces or (None,)
            for namespace in scopes:
                try:
                    token: str | None = None
                    while True:
                        token = await self._audit_page(namespace, token, run)
                        if token is None:
                            break
                except KubeAPIError as error:
                    self._metrics.errors.labels("list").inc()
                    run.errors.append(str(error))
                    logger.warning("audit: %s", error)
            outcomes = run.outcomes
            self._metrics.audited.inc(run.objects)
            errors = [
                *run.errors,
                *(f"{o.namespace}/{o.name}: {o.action}" for o in outcomes if o.action is Action.ERROR),
            ]
            if not errors:
                self._forget_unseen(run.tracked - run.seen)
            self._metrics.unfixable.set(sum(1 for o in outcomes if o.unfixed))
            self._metrics.backing_off.set(self._fights.in_backoff(now=self._clock()))
            if self.writes_allowed:
                await self._reporter.write_reports(self._filter_results(outcomes))
            if not errors:
                self._metrics.last_success.set(time.time())
            counts = {a.value: n for a in Action if (n := sum(1 for o in outcomes if o.action is a))}
            if run.not_applicable:
                counts[Action.NOT_APPLICABLE.value] = run.not_applicable
            logger.info(
                "audit done objects=%d %s errors=%d seconds=%.1f",
                run.objects,
                counts,
                len(errors),
                self._clock() - started,
            )
            return AuditResult(tuple(outcomes), tuple(errors), not_applicable=run.not_applicable)

    async def _audit_page(self, namespace: str | None, token: str | None, run: _AuditRun) -> str | None:
        """Read one page, reconcile each object on it, and return the next page's token (None = done).

        Up to `audit_concurrency` objects of the page are in flight at once, so the writes of one (a patch,
        an Event) overlap the judging of the next instead of queueing behind it; the page's outcomes keep
        its order. The page is let go when this returns, before the next one is read."""
        page = await asyncio.to_thread(self._kube.list_page, ENVOY_FILTERS, namespace, token)
        slots = asyncio.Semaphore(max(1, self._settings.audit_concurrency))

        async def reconcile(obj: dict[str, Any]) -> Outcome:
            async with slots:
                return await self._reconcile_guarded(obj, cause="audit")

        for obj in page.items:
            key = object_ref(obj)
            if key in run.tracked:
                run.seen.add(key)
        for outcome in await asyncio.gather(*(reconcile(obj) for obj in page.items)):
            run.add(outcome)
        return page.next_token

    def _tracked_keys(self) -> set[ObjectKey]:
        """Objects the reconciler keeps state for (versions, pins, fights, reported violations)."""
        keys = set(self._versions) | set(self._pinned_to) | self._reporter.objects()
        keys.update(_object_key(key) for key in self._fights.tracked())
        return keys

    def _forget_unseen(self, gone: set[ObjectKey]) -> None:
        """After a complete audit: drop the state of objects it did not see (they no longer exist)."""
        for key in gone:
            self._forget(key)
        self._reporter.forget_objects(gone)

    def _filter_results(self, outcomes: list[Outcome]) -> dict[str, list[FilterResult]]:
        by_namespace: dict[str, list[FilterResult]] = {}
        for outcome in outcomes:
            if outcome.action in UNREPORTED:
                continue
            by_namespace.setdefault(outcome.namespace, []).append(
                FilterResult(outcome.namespace, outcome.name, outcome.uid, outcome.remaining)
            )
        return by_namespace

    # -- one changed object (the watch) -----------------------------------------------------------------
    async def reconcile_change(self, change: FilterChange) -> Outcome | None:
        """Look at one EnvoyFilter the watch saw change; None when there is nothing new to look at: the
        version is one this reconciler already looked at, or the one its own patch wrote. A change with
        no resourceVersion is always looked at (a back-off that ended)."""
        key = change.key
        async with self._lock:
            if change.deleted:
                self._forget(key)
                return None
            if change.resource_version and change.resource_version == self._versions.get(key):
                return None
            outcome = await self._reconcile_key(key, cause="watch")
            self._metrics.audited.inc()
            self._metrics.backing_off.set(self._fights.in_backoff(now=self._clock()))
            return outcome

    def _forget(self, key: ObjectKey) -> None:
        self._versions.pop(key, None)
        self._pinned_to.pop(key, None)
        self._fights.forget(f"{key[0]}/{key[1]}")

    # -- drift repair ----------------------------------------------------------------------------------
    def drifted(self) -> list[ServiceRef]:
        """Pinned Services whose address differs from the one the engine last pinned filters to."""
        return [ref for ref, seen in self.pinned().items() if answer_of(self._resolver, ref) != seen]

    async def repair_drift(self) -> tuple[Outcome, ...]:
        """Re-check and patch the filters pinned to every Service whose address changed."""
        async with self._lock:
            outcomes: list[Outcome] = []
            for ref in self.drifted():
                current = answer_of(self._resolver, ref)
                previous = self._seen.get(ref)
                self._seen[ref] = current
                if current is None:
                    logger.warning("drift: service %s is gone; its filters wait for it to return", ref)
                    continue
                logger.info(
                    "drift: service %s moved from %s to %s", ref, _address(previous), _address(current)
                )
                move = port_move(self._last_known.get(ref), current)
                for key in sorted(k for k, pinned in self._pinned_to.items() if pinned == ref):
                    outcomes.append(await self._reconcile_key(key, cause="drift", move=move))
            return tuple(outcomes)

    async def _reconcile_key(self, key: ObjectKey, *, cause: str, move: PortMove | None = None) -> Outcome:
        try:
            obj = await asyncio.to_thread(self._kube.get_object, ENVOY_FILTERS, *key)
        except NotFoundError:
            self._forget(key)
            return Outcome(key[0], key[1], Action.GONE)
        except KubeAPIError as error:
            self._metrics.errors.labels("get").inc()
            logger.warning("%s: %s", cause, error)
            return Outcome(key[0], key[1], Action.ERROR)
        return await self._reconcile_guarded(obj, cause=cause, move=move)

    # -- one object ------------------------------------------------------------------------------------
    def _evaluate(self, obj: Mapping[str, Any], move: PortMove | None = None) -> Plan:
        recorder = RecordingResolver(self._resolver)
        context = self._context.context_for(_namespace_of(obj))
        plan = plan_of(evaluate(obj, policy=self._policy, resolver=recorder, context=context))
        if move is not None and plan.applicable:
            plan = follow_port(plan, move, policy=self._policy, resolver=recorder, context=context)
        key = object_ref(obj)
        ref = provenance_of(plan.fixed) if plan.applicable else None
        if ref is None:
            self._pinned_to.pop(key, None)
        else:
            self._pinned_to[key] = ref
            if ref in recorder.answers:
                answer = recorder.answers[ref]
                self._seen[ref] = answer
                if answer is not None:
                    self._last_known[ref] = answer
        return plan

    async def _reconcile_guarded(
        self, obj: dict[str, Any], *, cause: str, move: PortMove | None = None
    ) -> Outcome:
        """One object's trouble (an engine bug, an odd object) is that object's error, not the audit's."""
        try:
            return await self._reconcile(obj, cause=cause, move=move)
        except Exception as error:
            namespace, name = object_ref(obj)
            self._metrics.errors.labels("reconcile").inc()
            logger.exception("envoyfilter %s/%s not reconciled: %s", namespace, name, type(error).__name__)
            return Outcome(namespace, name, Action.ERROR)

    async def _reconcile(self, obj: dict[str, Any], *, cause: str, move: PortMove | None = None) -> Outcome:
        namespace, name = object_ref(obj)
        attempts = 0
        while attempts <= self._settings.conflict_retries:
            attempts += 1
            plan = self._evaluate(obj, move)
            uid = str((obj.get("metadata") or {}).get("uid") or "")
            if not plan.applicable:
                return Outcome(namespace, name, Action.NOT_APPLICABLE, uid=uid)
            version = resource_version(obj)
            self._versions[(namespace, name)] = version
            key = f"{namespace}/{name}"
            if not plan.patch:
                self._fights.observe_clean(key, version)
                await self._settle(obj, plan.remaining)
                return Outcome(namespace, name, Action.CLEAN, remaining=plan.remaining, uid=uid)
            decision = self._fights.observe_bad(key, version, now=self._clock())
            if decision.verdict is not Verdict.FIX:
                writer = await self._report_fight(obj, plan, decision)
                retry_in = max(0.0, (decision.retry_at or 0.0) - self._clock())
                return Outcome(
                    namespace,
                    name,
                    Action.BACKING_OFF,
                    remaining=plan.findings,
                    uid=uid,
                    writer=writer,
                    retry_in=retry_in,
                )
            rules = sorted({f.rule for f in plan.findings if f.fixable})
            if self._settings.dry_run:
                self._metrics.would_fix.inc()
                logger.info(
                    "dry-run: would patch envoyfilter %s/%s rules=%s patch=%s",
                    namespace,
                    name,
                    ",".join(rules),
                    json.dumps([op.to_json() for op in plan.patch], sort_keys=True),
                )
                return Outcome(namespace, name, Action.WOULD_FIX, plan.patch, plan.remaining, uid)
            if not self._may_write():
                return Outcome(namespace, name, Action.NOT_LEADER, plan.patch, plan.findings, uid)
            try:
                written = await asyncio.to_thread(
                    self._kube.patch_object,
                    ENVOY_FILTERS,
                    namespace,
                    name,
                    expected_version=version,
                    ops=plan.patch,
                )
            except ConflictError as error:
                self._metrics.conflicts.inc()
                logger.info("patch of %s/%s refused (%s); reading it again", namespace, name, error.reason)
                try:
                    obj = await asyncio.to_thread(self._kube.get_object, ENVOY_FILTERS, namespace, name)
                except NotFoundError:
                    return Outcome(namespace, name, Action.GONE, attempts=attempts)
                except KubeAPIError as read_error:
                    self._metrics.errors.labels("get").inc()
                    logger.warning("%s", read_error)
                    return Outcome(namespace, name, Action.ERROR, attempts=attempts)
                continue
            except NotFoundError:
                return Outcome(namespace, name, Action.GONE, attempts=attempts)
            except KubeAPIError as error:
                self._metrics.errors.labels("patch").inc()
                logger.warning("%s", error)
                return Outcome(namespace, name, Action.ERROR, attempts=attempts)
            written_version = resource_version(written)
            self._fights.record_fix(key, written_version)
            self._versions[(namespace, name)] = written_version
            self._metrics.fixed.labels(cause).inc()
            logger.info(
                "fixed envoyfilter %s/%s cause=%s rules=%s ops=%d resource_version=%s",
                namespace,
                name,
                cause,
                ",".join(rules),
                len(plan.patch),
                written_version,
            )
            note = f"extproc-guard patched {len(plan.patch)} field(s) to the corrected form ({cause}): "
            await self._reporter.record_event(
                written, reason=Reason.FIXED, note=note + ", ".join(rules), action="Fix", warning=False
            )
            await self._settle(written, plan.remaining)
            return Outcome(namespace, name, Action.FIXED, plan.patch, plan.remaining, uid, attempts)
        logger.warning(
            "gave up on envoyfilter %s/%s after %d conflicting writes; the next audit tries again",
            namespace,
            name,
            attempts,
        )
        return Outcome(namespace, name, Action.GAVE_UP, attempts=attempts)

    async def _settle(self, obj: Mapping[str, Any], remaining: tuple[Finding, ...]) -> None:
        if self.writes_allowed:
            await self._reporter.record_violations(obj, (f for f in remaining if f.enforced))

    async def _report_fight(self, obj: Mapping[str, Any], plan: Plan, decision: Decision) -> str:
        namespace, name = object_ref(obj)
        managed = (obj.get("metadata") or {}).get("managedFields") or []
        found = find_writer(
            [m for m in managed if isinstance(m, Mapping)],
            [op.path for op in plan.patch],
            own_manager=self._settings.field_manager,
        )
        writer = found.manager if found is not None else UNKNOWN_WRITER
        if decision.verdict is not Verdict.FIGHT:
            return writer
        self._metrics.fights.labels(writer).inc()
        changes = describe_findings(f for f in plan.findings if f.fixable)
        logger.warning(
            "fight: envoyfilter %s/%s was written back to the bad form %d times after a fix, by field "
            "manager %r; change that writer (its template or code) so it writes the corrected form: %s; "
            "backing off %.0fs before the next fix",
            namespace,
            name,
            decision.reverts,
            str(found) if found is not None else writer,
            changes,
            decision.backoff_seconds,
        )
        if self.writes_allowed:
            note = (
                f"Written back to the bad form {decision.reverts} times after a fix, by field manager "
                f"{writer!r}. Change that writer to produce the corrected form; extproc-guard backs off "
                f"{decision.backoff_seconds:.0f}s. Needed: {changes}"
            )
            await self._reporter.record_event(
                obj, reason=Reason.WRITER_FIGHT, note=note, action="BackOff", warning=True
            )
        return writer


def _object_key(fight_key: str) -> ObjectKey:
    """The (namespace, name) of a fight tracker's `NAMESPACE/NAME` key."""
    namespace, _, name = fight_key.partition("/")
    return namespace, name


def _namespace_of(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    return namespace if isinstance(namespace, str) else ""


def _address(address: ServiceAddress | None) -> str:
    if address is None:
        return "nothing"
    ports = ",".join(str(p) for p in address.ports)
    return f"{address.cluster_ip}:{ports}" if ports else address.cluster_ip
