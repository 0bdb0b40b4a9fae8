"""What the reconciler tells people: Events on EnvoyFilters and one PolicyReport per namespace.

Writes are deduplicated so an interval audit does not repeat itself: a PolicyViolation Event is recorded
when an object's unfixable findings change, a PolicyReport is written when its content (timestamps aside)
changes. A failed write is logged and counted; it never stops an audit. Blocking calls run in a thread.

A cluster without the PolicyReport CRD answers 404; findings then go to Events and the log only, and each
later call (once per full audit) checks again with one request, so a CRD installed after start is used
from the next audit on, without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from policies import Finding
from reconciler.api import (
    EVENTS,
    POLICY_REPORTS,
    ConflictError,
    KubeAPIError,
    KubeObjects,
    NotFoundError,
    object_ref,
)
from reconciler.events import Reason, build_event, describe_findings
from reconciler.metrics import ReconcileMetrics
from reconciler.policyreport import REPORT_NAME, FilterResult, build_policy_report, report_content

logger = logging.getLogger(__name__)


class Reporter:
    def __init__(
        self,
        kube: KubeObjects,
        *,
        metrics: ReconcileMetrics,
        instance: str,
        wall: Callable[[], datetime],
    ) -> None:
        self._kube = kube
        self._metrics = metrics
        self._instance = instance
        self._wall = wall
        self._violations: dict[tuple[str, str], frozenset[tuple[str, str]]] = {}
        self._reports: dict[str, bytes] = {}
        """The digest of each namespace's last written report content (not the content: a report lists
        every filter of its namespace)."""
        self._reports_unavailable = False

    async def record_event(
        self, obj: Mapping[str, Any], *, reason: Reason, note: str, action: str, warning: bool
    ) -> bool:
        namespace, _name = object_ref(obj)
        body = build_event(
            obj,
            reason=reason,
            note=note,
            action=action,
            warning=warning,
            instance=self._instance,
            now=self._wall(),
            suffix=uuid.uuid4().hex[:16],
        )
        try:
            await asyncio.to_thread(self._kube.create_object, EVENTS, namespace, body)
        except KubeAPIError as error:
            self._metrics.errors.labels("event").inc()
            logger.warning("event %s on %s/%s not recorded: %s", reason, *object_ref(obj), error)
            return False
        return True

    async def record_violations(self, obj: Mapping[str, Any], unfixed: Iterable[Finding]) -> None:
        """A PolicyViolation Event when the object's unfixable findings differ from the last ones seen."""
        findings = tuple(unfixed)
        key = object_ref(obj)
        mark = frozenset((f.rule, f.path) for f in findings)
        if self._violations.get(key, frozenset()) == mark:
            return
        if not findings:
            self._violations.pop(key, None)
            return
        note = "The policy cannot fix this; change the EnvoyFilter: " + describe_findings(findings)
        if await self.record_event(
            obj, reason=Reason.POLICY_VIOLATION, note=note, action="Audit", warning=True
        ):
            self._violations[key] = mark

    def objects(self) -> set[tuple[str, str]]:
        """The objects whose violations were recorded (the only per-object state kept here)."""
        return set(self._violations)

    def forget_objects(self, keys: Iterable[tuple[str, str]]) -> None:
        for key in keys:
            self._violations.pop(key, None)

    @property
    def reports_served(self) -> bool:
        """False since a write found no PolicyReport resource (until a later write finds it again)."""
        return not self._reports_unavailable

    async def write_reports(self, by_namespace: Mapping[str, list[FilterResult]]) -> None:
        """One PolicyReport per namespace seen now or reported before (emptied when its filters left).

        Called once per full audit; while the CRD is missing, the first namespace's write is the check."""
        now_seconds = int(self._wall().timestamp())
        for namespace in sorted(set(by_namespace) | set(self._reports)):
            report = build_policy_report(namespace, by_namespace.get(namespace, []), now_seconds=now_seconds)
            content = report_content(report)
            digest = content_digest(content)
            if self._reports.get(namespace) == digest:
                continue
            try:
                written = await asyncio.to_thread(self._upsert, namespace, report, content)
            except NotFoundError:
                if not self._reports_unavailable:
                    logger.warning(
                        "PolicyReports are not served by this cluster (install the wgpolicyk8s.io/v1alpha2 "
                        "CRD); findings go to Events and the log only, and each audit checks again"
                    )
                self._reports_unavailable = True
                return
            except KubeAPIError as error:
                self._metrics.errors.labels("policyreport").inc()
                logger.warning("policyreport %s/%s not written: %s", namespace, REPORT_NAME, error)
                continue
            if self._reports_unavailable:
                self._reports_unavailable = False
                logger.info("PolicyReports are served by this cluster now; writing them")
            if written == "conflict":
                continue  # another writer moved it meanwhile: the next audit compares again
            if written == "written":
                logger.info(
                    "policyreport %s/%s written summary=%s", namespace, REPORT_NAME, report["summary"]
                )
            self._reports[namespace] = digest

    def _upsert(self, namespace: str, report: dict[str, Any], content: Any) -> str:
        """Create or replace the report; "written", "unchanged" or "conflict"."""
        try:
            current = self._kube.get_object(POLICY_REPORTS, namespace, REPORT_NAME)
        except NotFoundError:
            try:
                self._kube.create_object(POLICY_REPORTS, namespace, report)
            except ConflictError:
                return "conflict"
            return "written"
        if report_content(current) == content:
            return "unchanged"
        metadata = {**(current.get("metadata") or {}), "labels": report["metadata"]["labels"]}
        try:
            self._kube.replace_object(POLICY_REPORTS, {**report, "metadata": metadata})
        except ConflictError:
            return "conflict"
        return "written"


def content_digest(content: Any) -> bytes:
    """A fingerprint of a report's content, to tell whether it changed since it was written."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).digest()
