"""PolicyReport and Event bodies: pure builders, no API."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from policies.findings import Finding, Level
from reconciler.events import NOTE_LIMIT, Reason, build_event, micro_time
from reconciler.policyreport import FilterResult, build_policy_report, report_content

NOW = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def finding(rule: str, level: Level, path: str = "/spec/configPatches/1") -> Finding:
    return Finding(
        rule=rule, slug="slug", level=level, path=path, message="what is wrong.", fix="do this", fixable=False
    )


def test_each_remaining_finding_is_a_result_and_a_clean_filter_is_one_pass() -> None:
    filters = [
        FilterResult(
            "ns", "broken", "uid-1", (finding("EPX007", Level.ENFORCE), finding("EPX009", Level.WARN))
        ),
        FilterResult("ns", "clean", "uid-2", ()),
    ]

    report = build_policy_report("ns", filters, now_seconds=1767268800)

    assert report["apiVersion"] == "wgpolicyk8s.io/v1alpha2"
    assert report["metadata"] == {
        "name": "extproc-guard",
        "namespace": "ns",
        "labels": {"app.kubernetes.io/managed-by": "extproc-guard"},
    }
    assert [(r["resources"][0]["name"], r["result"]) for r in report["results"]] == [
        ("broken", "fail"),
        ("broken", "warn"),
        ("clean", "pass"),
    ]
    assert report["summary"] == {"pass": 1, "fail": 1, "warn": 1, "error": 0, "skip": 0}
    failed = report["results"][0]
    assert failed["rule"] == "EPX007 slug"
    assert failed["message"] == "what is wrong. Fix: do this"
    assert failed["properties"] == {"path": "/spec/configPatches/1", "fixable": "false"}
    assert failed["timestamp"] == {"seconds": 1767268800, "nanos": 0}


def test_report_content_ignores_timestamps_only() -> None:
    filters = [FilterResult("ns", "broken", "", (finding("EPX007", Level.ENFORCE),))]
    earlier = build_policy_report("ns", filters, now_seconds=1)
    later = build_policy_report("ns", filters, now_seconds=2)
    changed = build_policy_report("ns", [FilterResult("ns", "broken", "", ())], now_seconds=2)

    assert report_content(earlier) == report_content(later)
    assert report_content(earlier) != report_content(changed)


@pytest.mark.parametrize(
    ("warning", "kind"), [(True, "Warning"), (False, "Normal")], ids=["warning", "normal"]
)
def test_an_event_regards_the_filter_and_carries_the_reconciler_as_reporter(warning: bool, kind: str) -> None:
    obj = {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "f", "namespace": "ns", "uid": "u", "resourceVersion": "7"},
    }

    event = build_event(
        obj,
        reason=Reason.FIXED,
        note="n",
        action="Fix",
        warning=warning,
        instance="pod-1",
        now=NOW,
        suffix="abc",
    )

    assert event["metadata"] == {"name": "f.abc", "namespace": "ns"}
    assert event["type"] == kind
    assert event["eventTime"] == "2026-01-01T12:00:00.123456Z"
    assert event["reportingController"] == "extproc-guard.io/reconciler"
    assert event["regarding"] == {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "namespace": "ns",
        "name": "f",
        "uid": "u",
        "resourceVersion": "7",
    }


def test_a_long_note_is_clipped_to_what_the_api_accepts() -> None:
    obj = {"metadata": {"name": "f", "namespace": "ns"}}

    event = build_event(
        obj,
        reason=Reason.POLICY_VIOLATION,
        note="x" * 5000,
        action="Audit",
        warning=True,
        instance="i",
        now=NOW,
        suffix="s",
    )

    assert len(event["note"]) == NOTE_LIMIT
    assert event["note"].endswith("...")
    assert micro_time(NOW) == event["eventTime"]
