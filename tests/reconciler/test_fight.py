"""A writer that keeps undoing the fix (an operator whose template still says INSERT_BEFORE), against a fake
Kubernetes API that speaks the real REST protocol and keeps managedFields (no kube-apiserver runs here).
The clock is a fake one that the test moves: back-off is driven by explicit steps, never by sleeping."""

from __future__ import annotations

import logging

import pytest

from reconciler.core import Action, Reconciler
from reconciler.metrics import ReconcileMetrics
from reconciler.settings import ReconcileSettings
from tests.documents import load_document
from tests.reconciler.conftest import NAMESPACE, OPERATOR, FakeClock, ReconcilerFactory
from tests.reconciler.fakeapi import EVENTS, FakeKubeAPI


def operator_reverts(fake_api: FakeKubeAPI) -> None:
    """The operator's reconcile loop writes its template back (a full Update as its own field manager)."""
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)


def fight_events(fake_api: FakeKubeAPI) -> list[dict[str, object]]:
    return [e for e in fake_api.objects_of(*EVENTS) if e["reason"] == "WriterFight"]


async def audit_action(reconciler: Reconciler) -> Action:
    (outcome,) = (await reconciler.audit()).outcomes
    return outcome.action


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics() -> ReconcileMetrics:
    return ReconcileMetrics()


@pytest.fixture
def reconciler(make_reconciler: ReconcilerFactory, clock: FakeClock, metrics: ReconcileMetrics) -> Reconciler:
    settings = ReconcileSettings(fight_threshold=2, backoff_initial_seconds=30.0, backoff_max_seconds=300.0)
    return make_reconciler(settings=settings, clock=clock, metrics=metrics)


async def test_a_single_revert_is_fixed_again_without_calling_it_a_fight(
    fake_api: FakeKubeAPI, reconciler: Reconciler
) -> None:
    operator_reverts(fake_api)
    assert await audit_action(reconciler) is Action.FIXED
    operator_reverts(fake_api)

    assert await audit_action(reconciler) is Action.FIXED
    assert fight_events(fake_api) == []


async def test_a_fighting_writer_is_named_in_an_event_and_a_metric_and_backed_off(
    fake_api: FakeKubeAPI,
    reconciler: Reconciler,
    clock: FakeClock,
    metrics: ReconcileMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    operator_reverts(fake_api)
    assert await audit_action(reconciler) is Action.FIXED
    operator_reverts(fake_api)
    assert await audit_action(reconciler) is Action.FIXED
    operator_reverts(fake_api)

    with caplog.at_level(logging.WARNING, logger="reconciler.core"):
        assert await audit_action(reconciler) is Action.BACKING_OFF

    (event,) = fight_events(fake_api)
    assert event["type"] == "Warning"
    assert OPERATOR in str(event["note"])
    assert event["regarding"] == {
        **event["regarding"],  # type: ignore[dict-item]
        "kind": "EnvoyFilter",
        "name": "epp-ext-proc",
        "namespace": NAMESPACE,
    }
    assert (
        metrics.registry.get_sample_value("extproc_guard_reconcile_fights_total", {"writer": OPERATOR}) == 1.0
    )
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fight:")]
    assert OPERATOR in line
    assert "change that writer" in line
    assert "EPX001" in line
    assert fake_api.envoy_filter(NAMESPACE, "epp-ext-proc")["spec"]["configPatches"][0]["patch"][
        "operation"
    ] == ("INSERT_BEFORE")


async def test_back_off_stops_the_patch_loop_and_doubles_after_each_further_revert(
    fake_api: FakeKubeAPI, reconciler: Reconciler, clock: FakeClock
) -> None:
    operator_reverts(fake_api)
    await reconciler.audit()
    operator_reverts(fake_api)
    await reconciler.audit()
    operator_reverts(fake_api)
    await reconciler.audit()  # fight: back off 30 s
    patches = len(fake_api.successful_patches())

    actions = [await audit_action(reconciler) for _ in range(5)]
    clock.advance(29)
    actions.append(await audit_action(reconciler))

    assert set(actions) == {Action.BACKING_OFF}
    assert len(fake_api.successful_patches()) == patches
    assert len(fight_events(fake_api)) == 1

    clock.advance(2)
    assert await audit_action(reconciler) is Action.FIXED
    operator_reverts(fake_api)
    assert await audit_action(reconciler) is Action.BACKING_OFF
    clock.advance(31)
    assert await audit_action(reconciler) is Action.BACKING_OFF  # the second back-off is 60 s
    clock.advance(30)
    assert await audit_action(reconciler) is Action.FIXED
    assert len(fake_api.successful_patches()) == patches + 2
    assert len(fight_events(fake_api)) == 2


async def test_a_writer_fixed_at_the_source_ends_the_fight(
    fake_api: FakeKubeAPI, reconciler: Reconciler, clock: FakeClock
) -> None:
    for _ in range(3):
        operator_reverts(fake_api)
        await reconciler.audit()
    fake_api.store_envoy_filter(
        load_document("seed-corrected.yaml"), manager=OPERATOR
    )  # the operator was fixed

    assert await audit_action(reconciler) is Action.CLEAN
    operator_reverts(fake_api)  # a later one-off bad write is fixed at once again
    assert await audit_action(reconciler) is Action.FIXED
