"""Two reconciler processes' worth of loops (Lease, audit, drift) in one event loop, against a fake
Kubernetes API that speaks the real REST protocol (no kube-apiserver runs in these tests). Waits are
bounded polls on what the fake has stored; nothing asserts on time."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

from policies.policy import default_policy
from reconciler.runner import Parts, build_parts, run_reconciler
from reconciler.settings import LeaseSettings, ReconcileSettings
from tests.documents import load_document
from tests.polling import wait_until_async
from tests.reconciler.conftest import EPP, EPP_IP, NAMESPACE, OPERATOR
from tests.reconciler.fakeapi import LEASES, FakeKubeAPI

WAIT_SECONDS = 30.0


wait_for = partial(wait_until_async, timeout=WAIT_SECONDS, interval=0.05)


def settings_for(kubeconfig: Path, identity: str) -> ReconcileSettings:
    lease = LeaseSettings(
        name="extproc-guard-reconciler",
        namespace="extproc-guard-system",
        identity=identity,
        duration_seconds=3,
        renew_deadline_seconds=2.0,
        retry_seconds=0.1,
    )
    return ReconcileSettings(
        interval_seconds=3600.0,
        identity=identity,
        lease=lease,
        drift_poll_seconds=0.05,
        cache_sync_timeout_seconds=WAIT_SECONDS,
        kubeconfig=kubeconfig,
    )


class Running:
    def __init__(self, kubeconfig: Path, identity: str) -> None:
        self.settings = settings_for(kubeconfig, identity)
        self.parts: Parts = build_parts(self.settings, policy=default_policy(), services={})
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(run_reconciler(self.parts, self.settings, stop=self.stop))

    async def shut_down(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, WAIT_SECONDS)


def pinned_ip(fake_api: FakeKubeAPI) -> str:
    cluster = fake_api.envoy_filter(NAMESPACE, "epp-ext-proc")["spec"]["configPatches"][1]["patch"]["value"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    return str(endpoint["address"]["socket_address"]["address"])


def holder(fake_api: FakeKubeAPI) -> str:
    leases = fake_api.objects_of(*LEASES)
    return str(leases[0]["spec"]["holderIdentity"]) if leases else ""


def filter_writes(fake_api: FakeKubeAPI, identity: str) -> int:
    return len(fake_api.writes(plural="envoyfilters", user_agent=identity))


async def test_only_the_lease_holder_repairs_and_a_stopped_holder_hands_over_to_the_other(
    fake_api: FakeKubeAPI, kubeconfig: Path
) -> None:
    fake_api.services.put(EPP.namespace, EPP.name, EPP_IP, (9002,))
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)
    a = Running(kubeconfig, "replica-a")
    b: Running | None = None
    try:
        await wait_for(lambda: pinned_ip(fake_api) == EPP_IP, "replica-a fixed the filter")
        b = Running(kubeconfig, "replica-b")
        await wait_for(
            lambda: len([r for r in fake_api.requests if r.user_agent.endswith("/replica-b")]) >= 3,
            "replica-b is running and asking for the Lease",
        )

        fake_api.services.delete(EPP.namespace, EPP.name)
        fake_api.services.put(EPP.namespace, EPP.name, "10.96.1.1", (9002,))
        await wait_for(lambda: pinned_ip(fake_api) == "10.96.1.1", "the leader repaired the drift")

        assert holder(fake_api) == "replica-a"
        assert filter_writes(fake_api, "replica-b") == 0

        await a.shut_down()
        writes_of_a = filter_writes(fake_api, "replica-a")
        await wait_for(lambda: holder(fake_api) == "replica-b", "replica-b took the released Lease")
        fake_api.services.delete(EPP.namespace, EPP.name)
        fake_api.services.put(EPP.namespace, EPP.name, "10.96.2.2", (9002,))
        await wait_for(lambda: pinned_ip(fake_api) == "10.96.2.2", "the new leader repaired the drift")

        assert filter_writes(fake_api, "replica-b") >= 1
        assert filter_writes(fake_api, "replica-a") == writes_of_a
    finally:
        if not a.task.done():
            await a.shut_down()
        if b is not None:
            await b.shut_down()
    assert holder(fake_api) == ""
