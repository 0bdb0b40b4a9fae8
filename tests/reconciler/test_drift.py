"""Drift repair when the EPP Service is deleted and recreated with a new ClusterIP, against a fake Kubernetes
API that speaks the real REST protocol (Service list + watch stream, EnvoyFilter get/patch; no
kube-apiserver runs in these tests). The reconciler reads Services through the webhook's real informer
cache (`kube.services.ServiceCache`) on its own thread."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from kubernetes import client

from kube.services import ServiceCache
from kube.settings import KubeSettings
from reconciler.api import build_api_client
from reconciler.core import Action, Reconciler
from reconciler.runner import repair_on_drift
from tests.documents import load_document
from tests.polling import wait_until_async
from tests.reconciler.conftest import EPP, EPP_IP, NAMESPACE, OPERATOR, ReconcilerFactory
from tests.reconciler.fakeapi import EVENTS, FakeKubeAPI

NEW_IP = "10.96.200.7"
WAIT_SECONDS = 20.0


def pinned_address(fake_api: FakeKubeAPI) -> tuple[str, int]:
    cluster = fake_api.envoy_filter(NAMESPACE, "epp-ext-proc")["spec"]["configPatches"][1]["patch"]["value"]
    socket = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    return socket["address"], socket["port_value"]


@pytest.fixture
def cache(fake_api: FakeKubeAPI, kubeconfig: Path) -> Iterator[ServiceCache]:
    fake_api.services.put(EPP.namespace, EPP.name, EPP_IP, (9002,))
    api_client = build_api_client(
        kubeconfig=kubeconfig, context=None, user_agent="extproc-guard-reconciler/test"
    )
    service_cache = ServiceCache(client.CoreV1Api(api_client), KubeSettings(kubeconfig=kubeconfig))
    service_cache.start()
    try:
        yield service_cache
    finally:
        service_cache.stop(5.0)


@pytest.fixture
async def reconciler(
    fake_api: FakeKubeAPI, cache: ServiceCache, make_reconciler: ReconcilerFactory
) -> Reconciler:
    """A reconciler reading Services through the synced cache, after its first audit of the seed's bad
    filter (which pins that filter to the EPP Service)."""
    assert await asyncio.to_thread(cache.wait_synced, WAIT_SECONDS)
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)
    built = make_reconciler(resolver=cache)
    await built.audit()
    return built


# The cache thread changes what the conditions read, so poll more often than the process-level tests.
wait_for = partial(wait_until_async, timeout=WAIT_SECONDS)


async def test_a_recreated_service_with_a_new_cluster_ip_is_repaired_in_every_pinned_filter(
    fake_api: FakeKubeAPI, reconciler: Reconciler
) -> None:
    assert pinned_address(fake_api) == (EPP_IP, 9002)
    assert reconciler.drifted() == []

    fake_api.services.delete(EPP.namespace, EPP.name)
    fake_api.services.put(EPP.namespace, EPP.name, NEW_IP, (9002,))
    await wait_for(lambda: reconciler.drifted() == [EPP], "the cache saw the new ClusterIP")
    outcomes = await reconciler.repair_drift()

    assert [(o.name, o.action) for o in outcomes] == [("epp-ext-proc", Action.FIXED)]
    assert [op.path.rsplit("/", 1)[-1] for op in outcomes[0].patch] == ["address"]
    assert pinned_address(fake_api) == (NEW_IP, 9002)
    assert reconciler.drifted() == []
    assert await reconciler.repair_drift() == ()


async def test_a_deleted_service_leaves_filters_alone_until_it_returns(
    fake_api: FakeKubeAPI, reconciler: Reconciler
) -> None:
    writes = len(fake_api.writes(plural="envoyfilters"))

    fake_api.services.delete(EPP.namespace, EPP.name)
    await wait_for(lambda: reconciler.drifted() == [EPP], "the cache saw the deletion")

    assert await reconciler.repair_drift() == ()
    assert len(fake_api.writes(plural="envoyfilters")) == writes
    assert pinned_address(fake_api) == (EPP_IP, 9002)


async def test_the_drift_loop_repairs_a_cluster_ip_change_without_an_audit(
    fake_api: FakeKubeAPI, reconciler: Reconciler
) -> None:
    stop = asyncio.Event()
    loop = asyncio.ensure_future(
        repair_on_drift(reconciler, may_write=lambda: True, wake=asyncio.Event(), poll=0.05, stop=stop)
    )
    try:
        fake_api.services.delete(EPP.namespace, EPP.name)
        fake_api.services.put(EPP.namespace, EPP.name, NEW_IP, (9002,))
        await wait_for(lambda: pinned_address(fake_api)[0] == NEW_IP, "the drift loop re-pinned the filter")
    finally:
        stop.set()
        await asyncio.wait_for(loop, WAIT_SECONDS)
    notes = [str(e["note"]) for e in fake_api.objects_of(*EVENTS) if e["reason"] == "Fixed"]
    assert sum("(drift)" in note for note in notes) == 1


async def test_a_single_port_service_recreated_on_another_port_takes_its_filters_along(
    fake_api: FakeKubeAPI, reconciler: Reconciler
) -> None:

    fake_api.services.delete(EPP.namespace, EPP.name)
    await wait_for(lambda: reconciler.drifted() == [EPP], "the cache saw the deletion")
    assert await reconciler.repair_drift() == ()
    fake_api.services.put(EPP.namespace, EPP.name, NEW_IP, (9003,))
    await wait_for(lambda: reconciler.drifted() == [EPP], "the cache saw the new address")
    (outcome,) = await reconciler.repair_drift()

    assert outcome.action is Action.FIXED
    assert pinned_address(fake_api) == (NEW_IP, 9003)
    assert outcome.unfixed == ()


async def test_a_port_change_to_a_multi_port_service_is_reported_not_guessed(
    fake_api: FakeKubeAPI, reconciler: Reconciler
) -> None:

    fake_api.services.delete(EPP.namespace, EPP.name)
    fake_api.services.put(EPP.namespace, EPP.name, NEW_IP, (9003, 9090))
    await wait_for(lambda: reconciler.drifted() == [EPP], "the cache saw the new address")
    (outcome,) = await reconciler.repair_drift()

    assert outcome.action is Action.FIXED
    assert pinned_address(fake_api) == (NEW_IP, 9002)
    assert [f.rule for f in outcome.unfixed] == ["EPX007"]
    (violation,) = [e for e in fake_api.objects_of(*EVENTS) if e["reason"] == "PolicyViolation"]
    assert "EPX007" in str(violation["note"])
