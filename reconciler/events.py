"""Kubernetes Events (events.k8s.io/v1) the reconciler records on an EnvoyFilter. Pure builders."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from policies import Finding
from reconciler.settings import REPORTING_CONTROLLER

NOTE_LIMIT = 1024
"""The API refuses an Event whose note is longer."""


class Reason(StrEnum):
    FIXED = "Fixed"
    POLICY_VIOLATION = "PolicyViolation"
    WRITER_FIGHT = "WriterFight"


def micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339 in UTC with microseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def describe_findings(findings: Iterable[Finding]) -> str:
    """`EPX007 grpc-cluster-ref at /spec/...: message Fix: ...; ...` in one line."""
    parts = []
    for finding in findings:
        text = f"{finding.rule} {finding.slug} at {finding.path}: {finding.message}"
        if finding.fix:
            text += f" Fix: {finding.fix}"
        parts.append(text)
    return "; ".join(parts)


def clip(text: str, limit: int = NOTE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_event(
    obj: Mapping[str, Any],
    *,
    reason: Reason,
    note: str,
    action: str,
    warning: bool,
    instance: str,
    now: datetime,
    suffix: str,
) -> dict[str, Any]:
    """An Event about `obj` (an EnvoyFilter as read from the API), named `OBJECT.SUFFIX` as kubectl and
    client-go name theirs (the API refuses a `generateName` ending in a dot)."""
    metadata = obj.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "default")
    name = str(metadata.get("name") or "")
    regarding = {
        "apiVersion": str(obj.get("apiVersion") or "networking.istio.io/v1alpha3"),
        "kind": str(obj.get("kind") or "EnvoyFilter"),
        "namespace": namespace,
        "name": name,
    }
    for key in ("uid", "resourceVersion"):
        if metadata.get(key):
            regarding[key] = str(metadata[key])
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{suffix}"[:253], "namespace": namespace},
        "eventTime": micro_time(now),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance[:128],
        "action": action,
        "reason": str(reason),
        "type": "Warning" if warning else "Normal",
        "note": clip(note),
        "regarding": regarding,
    }
