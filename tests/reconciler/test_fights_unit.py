"""Fight bookkeeping and naming the writer from managedFields: pure functions, no API."""

from __future__ import annotations

import pytest

from reconciler.fights import FightTracker, Verdict, find_writer

OWN = "extproc-guard-reconciler"
PATHS = ["/spec/configPatches/0/patch/operation", "/spec/configPatches/1/patch/value/type"]


def entry(manager: str, fields: dict[str, object], time: str, operation: str = "Update") -> dict[str, object]:
    return {
        "manager": manager,
        "operation": operation,
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    }


def test_the_owner_of_the_atomic_list_the_fix_changes_is_named_not_a_newer_label_writer() -> None:
    managed = [
        entry("schedulerinstall-controller", {"f:spec": {"f:configPatches": {}}}, "2026-01-01T00:00:01Z"),
        entry("kubectl-label", {"f:metadata": {"f:labels": {"f:tier": {}}}}, "2026-01-01T00:00:09Z"),
        entry(
            OWN,
            {"f:metadata": {"f:annotations": {"f:extproc-guard.io/epp-service": {}}}},
            "2026-01-01T00:00:05Z",
        ),
    ]

    writer = find_writer(managed, PATHS, own_manager=OWN)

    assert writer is not None
    assert writer.manager == "schedulerinstall-controller"
    assert str(writer) == "schedulerinstall-controller (Update)"


def test_the_deepest_owner_of_the_patched_fields_wins() -> None:
    managed = [
        entry("helm", {"f:spec": {"f:workloadSelector": {}}}, "2026-01-01T00:00:09Z"),
        entry("kustomize-controller", {"f:spec": {"f:configPatches": {}}}, "2026-01-01T00:00:01Z", "Apply"),
    ]

    writer = find_writer(managed, PATHS, own_manager=OWN)

    assert writer is not None
    assert (writer.manager, writer.operation) == ("kustomize-controller", "Apply")


def test_the_reconciler_itself_is_never_blamed() -> None:
    managed = [entry(OWN, {"f:spec": {"f:configPatches": {}}}, "2026-01-01T00:00:09Z")]

    assert find_writer(managed, PATHS, own_manager=OWN) is None


def test_without_an_owner_of_the_fields_the_newest_other_writer_is_named() -> None:
    managed = [
        entry("old", {"f:metadata": {"f:labels": {}}}, "2026-01-01T00:00:01Z"),
        entry("new", {"f:metadata": {"f:annotations": {}}}, "2026-01-01T00:00:02Z"),
    ]

    writer = find_writer(managed, PATHS, own_manager=OWN)

    assert writer is not None
    assert writer.manager == "new"


@pytest.fixture
def tracker() -> FightTracker:
    return FightTracker(threshold=2, backoff_initial_seconds=10.0, backoff_max_seconds=25.0)


def test_a_first_bad_sighting_is_fixed(tracker: FightTracker) -> None:
    assert tracker.observe_bad("ns/f", "1", now=0.0).verdict is Verdict.FIX


def test_the_same_reverted_version_is_counted_once(tracker: FightTracker) -> None:
    tracker.record_fix("ns/f", "2")
    first = tracker.observe_bad("ns/f", "3", now=0.0)
    again = tracker.observe_bad("ns/f", "3", now=0.0)

    assert (first.verdict, first.reverts) == (Verdict.FIX, 1)
    assert (again.verdict, again.reverts) == (Verdict.FIX, 1)


def test_a_bad_object_we_did_not_see_rewritten_is_no_revert(tracker: FightTracker) -> None:
    tracker.record_fix("ns/f", "2")

    decision = tracker.observe_bad("ns/f", "2", now=0.0)  # e.g. its Service moved: no one wrote it

    assert (decision.verdict, decision.reverts) == (Verdict.FIX, 0)


@pytest.mark.parametrize(
    ("reverts", "backoff"),
    [(2, 10.0), (3, 20.0), (4, 25.0), (5, 25.0)],
    ids=["first-fight", "doubles", "capped", "stays-capped"],
)
def test_back_off_doubles_per_revert_up_to_the_cap(
    tracker: FightTracker, reverts: int, backoff: float
) -> None:
    now = 0.0
    decision = None
    for n in range(reverts):
        tracker.record_fix("ns/f", f"fixed-{n}")
        now += 1000.0
        decision = tracker.observe_bad("ns/f", f"reverted-{n}", now=now)

    assert decision is not None
    assert decision.verdict is Verdict.FIGHT
    assert decision.backoff_seconds == backoff
    assert (
        tracker.observe_bad("ns/f", f"reverted-{reverts - 1}", now=now + backoff - 1).verdict is Verdict.WAIT
    )
    assert tracker.observe_bad("ns/f", f"reverted-{reverts - 1}", now=now + backoff).verdict is Verdict.FIX


def test_a_clean_version_written_by_someone_else_ends_the_fight(tracker: FightTracker) -> None:
    for n in range(2):
        tracker.record_fix("ns/f", f"fixed-{n}")
        tracker.observe_bad("ns/f", f"reverted-{n}", now=0.0)

    tracker.observe_clean("ns/f", "clean-from-writer")

    assert tracker.in_backoff(now=0.0) == 0
    assert tracker.observe_bad("ns/f", "bad-again", now=0.0).verdict is Verdict.FIX


def test_rewrites_while_backing_off_are_not_new_reverts(tracker: FightTracker) -> None:
    for n in range(2):
        tracker.record_fix("ns/f", f"fixed-{n}")
        decision = tracker.observe_bad("ns/f", f"reverted-{n}", now=0.0)
    assert decision.verdict is Verdict.FIGHT

    # The writer keeps writing its bad form; none of these undoes a fix of ours.
    later = [tracker.observe_bad("ns/f", f"rewritten-{n}", now=1.0) for n in range(5)]

    assert {(d.verdict, d.reverts, d.backoff_seconds) for d in later} == {(Verdict.WAIT, 2, 10.0)}
    assert tracker.observe_bad("ns/f", "rewritten-5", now=10.0).verdict is Verdict.FIX
