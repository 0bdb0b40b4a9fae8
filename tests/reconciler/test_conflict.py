"""Concurrent writers, against a fake Kubernetes API that speaks the real REST protocol (no kube-apiserver
runs in these tests): a JSON Patch whose `test` op on the resourceVersion fails is answered 422, as the
apiserver does, and the object is left as the other writer wrote it."""

from __future__ import annotations

from collections.abc import Callable

from reconciler.core import Action
from reconciler.settings import ReconcileSettings
from tests.documents import load_document
from tests.reconciler.conftest import NAMESPACE, OPERATOR, ReconcilerFactory, without_server_fields
from tests.reconciler.fakeapi import FakeKubeAPI

OTHER_WRITER = "kubectl-edit"


def write_concurrently(fake_api: FakeKubeAPI, *, again: bool) -> Callable[[], None]:
    """A hook the fake runs just before it handles the reconciler's patch: another writer gets there first
    (it adds an annotation and keeps the bad form), so the reconciler's read is stale."""
    writes = {"count": 0}

    def hook() -> None:
        writes["count"] += 1
        current = without_server_fields(fake_api.envoy_filter(NAMESPACE, "epp-ext-proc"))
        current["metadata"].setdefault("annotations", {})["example.com/edited"] = str(writes["count"])
        current["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["message_timeout"] = "7s"
        fake_api.store_envoy_filter(current, manager=OTHER_WRITER)
        if again:
            fake_api.before_patch.append(hook)

    return hook


async def test_a_conflicting_write_is_retried_on_the_fresh_object_and_keeps_the_other_change(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)
    fake_api.before_patch.append(write_concurrently(fake_api, again=False))

    result = await make_reconciler().audit()

    (outcome,) = result.outcomes
    assert outcome.action is Action.FIXED
    assert outcome.attempts == 2
    statuses = [r.status for r in fake_api.writes(plural="envoyfilters", user_agent="replica-a")]
    assert statuses == [422, 200]
    stored = fake_api.envoy_filter(NAMESPACE, "epp-ext-proc")
    assert stored["metadata"]["annotations"]["example.com/edited"] == "1"
    ext_proc = stored["spec"]["configPatches"][0]["patch"]
    assert ext_proc["value"]["typed_config"]["message_timeout"] == "7s"
    assert ext_proc["operation"] == "REPLACE"


async def test_a_writer_that_always_wins_the_race_is_never_overwritten_and_retries_are_bounded(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)
    fake_api.before_patch.append(write_concurrently(fake_api, again=True))
    reconciler = make_reconciler(settings=ReconcileSettings(conflict_retries=3))

    result = await reconciler.audit()

    (outcome,) = result.outcomes
    assert outcome.action is Action.GAVE_UP
    assert outcome.attempts == 4
    patches = fake_api.writes(plural="envoyfilters", user_agent="replica-a")
    assert [r.status for r in patches] == [422, 422, 422, 422]
    stored = fake_api.envoy_filter(NAMESPACE, "epp-ext-proc")
    assert stored["metadata"]["annotations"]["example.com/edited"] == "4"
    assert stored["spec"]["configPatches"][0]["patch"]["operation"] == "INSERT_BEFORE"
