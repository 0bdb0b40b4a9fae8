"""PolicyReports (wgpolicyk8s.io/v1alpha2, the format Kyverno and Kubewarden write): one per namespace.

Pure: the reconciler hands in what it found for each EnvoyFilter of a namespace; this module builds the
report object. Each finding still present after the fix is a `fail` (enforce) or `warn` result; a filter
with none is one `pass` result, so the report lists every filter the reconciler looked at.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policies import Finding, Level

REPORT_NAME = "extproc-guard"
POLICY_NAME = "extproc-guard"
SOURCE = "extproc-guard"
API_VERSION = "wgpolicyk8s.io/v1alpha2"
MANAGED_BY = {"app.kubernetes.io/managed-by": "extproc-guard"}


@dataclass(frozen=True, slots=True)
class FilterResult:
    """What the reconciler concluded about one EnvoyFilter: the findings left after its fix."""

    namespace: str
    name: str
    uid: str
    findings: tuple[Finding, ...]


def _resource(result: FilterResult) -> dict[str, Any]:
    resource = {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "namespace": result.namespace,
        "name": result.name,
    }
    if result.uid:
        resource["uid"] = result.uid
    return resource


def _finding_result(result: FilterResult, finding: Finding, timestamp: Mapping[str, int]) -> dict[str, Any]:
    failed = finding.level is Level.ENFORCE
    return {
        "policy": POLICY_NAME,
        "rule": f"{finding.rule} {finding.slug}",
        "result": "fail" if failed else "warn",
        "severity": "high" if failed else "medium",
        "scored": True,
        "source": SOURCE,
        "message": f"{finding.message} Fix: {finding.fix}" if finding.fix else finding.message,
        "timestamp": dict(timestamp),
        "resources": [_resource(result)],
        "properties": {"path": finding.path, "fixable": str(finding.fixable).lower()},
    }


def _pass_result(result: FilterResult, timestamp: Mapping[str, int]) -> dict[str, Any]:
    return {
        "policy": POLICY_NAME,
        "rule": "ext-proc-path",
        "result": "pass",
        "scored": True,
        "source": SOURCE,
        "message": "the ext_proc path passes every rule of the policy",
        "timestamp": dict(timestamp),
        "resources": [_resource(result)],
    }


def build_results(filters: Iterable[FilterResult], *, now_seconds: int) -> list[dict[str, Any]]:
    """Report results in a stable order (by filter name, then rule id and path)."""
    timestamp = {"seconds": now_seconds, "nanos": 0}
    results: list[dict[str, Any]] = []
    for result in sorted(filters, key=lambda r: r.name):
        reported = [f for f in result.findings if f.level is not Level.OFF]
        if not reported:
            results.append(_pass_result(result, timestamp))
            continue
        for finding in sorted(reported, key=lambda f: (f.rule, f.path)):
            results.append(_finding_result(result, finding, timestamp))
    return results


def summarize(results: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    summary = {"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0}
    for result in results:
        summary[str(result["result"])] += 1
    return summary


def build_policy_report(
    namespace: str, filters: Iterable[FilterResult], *, now_seconds: int
) -> dict[str, Any]:
    """The namespace's PolicyReport object (without a resourceVersion: the writer adds it)."""
    results = build_results(filters, now_seconds=now_seconds)
    return {
        "apiVersion": API_VERSION,
        "kind": "PolicyReport",
        "metadata": {"name": REPORT_NAME, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "summary": summarize(results),
        "results": results,
    }


def report_content(report: Mapping[str, Any]) -> Any:
    """What a report says, without timestamps: two reports with equal content need no write."""
    results = [
        {key: value for key, value in result.items() if key != "timestamp"}
        for result in report.get("results") or ()
        if isinstance(result, Mapping)
    ]
    return {"summary": report.get("summary"), "results": results}
