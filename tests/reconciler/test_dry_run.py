"""Dry-run mode against a fake Kubernetes API that speaks the real REST protocol (no kube-apiserver runs in
these tests): every request is recorded, so "writes nothing" is checked on the wire."""

from __future__ import annotations

import logging

import pytest

from reconciler.core import Action
from reconciler.settings import ReconcileSettings
from tests.documents import load_document
from tests.reconciler.conftest import NAMESPACE, OPERATOR, ReconcilerFactory, static_epp
from tests.reconciler.fakeapi import FakeKubeAPI


async def test_dry_run_reports_what_would_change_and_writes_nothing(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)
    fake_api.store_envoy_filter(load_document("unfixable.yaml"), manager=OPERATOR)
    before = fake_api.envoy_filter(NAMESPACE, "epp-ext-proc")
    reconciler = make_reconciler(settings=ReconcileSettings(dry_run=True))

    with caplog.at_level(logging.INFO, logger="reconciler.core"):
        result = await reconciler.audit()

    actions = {o.name: o.action for o in result.outcomes}
    assert actions == {"epp-ext-proc": Action.WOULD_FIX, "epp-ext-proc-unfixable": Action.WOULD_FIX}
    assert fake_api.writes() == []
    assert fake_api.envoy_filter(NAMESPACE, "epp-ext-proc") == before
    (line,) = [r.getMessage() for r in caplog.records if "epp-ext-proc rules=" in r.getMessage()]
    assert line.startswith("dry-run: would patch envoyfilter llm-d-inference-scheduler/epp-ext-proc")
    assert '"/spec/configPatches/0/patch/operation"' in line


async def test_dry_run_drift_repair_writes_nothing(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    fake_api.store_envoy_filter(load_document("seed-corrected.yaml"), manager=OPERATOR)
    moving = {"resolver": static_epp()}

    class Switching:
        def lookup(self, ref):  # type: ignore[no-untyped-def]
            return moving["resolver"].lookup(ref)

    reconciler = make_reconciler(resolver=Switching(), settings=ReconcileSettings(dry_run=True))
    await reconciler.audit()
    moving["resolver"] = static_epp("10.96.0.99")

    (outcome,) = await reconciler.repair_drift()

    assert outcome.action is Action.WOULD_FIX
    assert fake_api.writes() == []
