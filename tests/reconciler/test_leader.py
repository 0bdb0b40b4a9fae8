"""Leader election with a coordination.k8s.io/v1 Lease, against a fake Kubernetes API that speaks the real
REST protocol (PUT with a stale resourceVersion is a 409; no kube-apiserver runs in these tests). Each
replica has its own fake clock, moved by the test: nothing sleeps."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from reconciler.api import KubeObjects, build_api_client
from reconciler.core import Action
from reconciler.leader import LeaseElector
from reconciler.settings import FIELD_MANAGER, LeaseSettings
from tests.documents import load_document
from tests.reconciler.conftest import OPERATOR, FakeClock, ReconcilerFactory, fixed_wall
from tests.reconciler.fakeapi import LEASES, FakeKubeAPI

LEASE = "extproc-guard-reconciler"
LEASE_NS = "extproc-guard-system"


class Replica:
    def __init__(self, kubeconfig: Path, identity: str) -> None:
        self.identity = identity
        self.clock = FakeClock()
        api_client = build_api_client(
            kubeconfig=kubeconfig, context=None, user_agent=f"extproc-guard-reconciler/{identity}"
        )
        settings = LeaseSettings(
            name=LEASE, namespace=LEASE_NS, identity=identity, duration_seconds=15, renew_deadline_seconds=10
        )
        self.elector = LeaseElector(
            KubeObjects(api_client, field_manager=FIELD_MANAGER), settings, clock=self.clock, wall=fixed_wall
        )

    async def step(self) -> bool:
        return await asyncio.to_thread(self.elector.step)

    async def release(self) -> bool:
        return await asyncio.to_thread(self.elector.release)


def lease_spec(fake_api: FakeKubeAPI) -> dict[str, object]:
    (lease,) = fake_api.objects_of(*LEASES)
    spec = lease["spec"]
    assert isinstance(spec, dict)
    return spec


@pytest.fixture
def replicas(kubeconfig: Path) -> tuple[Replica, Replica]:
    return Replica(kubeconfig, "replica-a"), Replica(kubeconfig, "replica-b")


async def test_the_first_replica_takes_the_lease_and_the_second_waits(
    fake_api: FakeKubeAPI, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas

    assert await a.step() is True
    assert await b.step() is False
    assert await a.step() is True  # renewal

    assert lease_spec(fake_api)["holderIdentity"] == "replica-a"
    assert a.elector.holds()
    assert not b.elector.holds()


async def test_two_replicas_never_both_write(
    fake_api: FakeKubeAPI, replicas: tuple[Replica, Replica], make_reconciler: ReconcilerFactory
) -> None:
    a, b = replicas
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)
    fake_api.store_envoy_filter(load_document("unfixable.yaml"), manager=OPERATOR)
    await a.step()
    await b.step()
    reconciler_a = make_reconciler(identity="replica-a", may_write=a.elector.holds)
    reconciler_b = make_reconciler(identity="replica-b", may_write=b.elector.holds)

    result_b = await reconciler_b.audit()
    result_a = await reconciler_a.audit()

    assert {o.action for o in result_b.outcomes} == {Action.NOT_LEADER}
    assert fake_api.writes(user_agent="replica-b") == []
    assert Action.FIXED in {o.action for o in result_a.outcomes}
    writers = {r.user_agent.rsplit("/", 1)[-1] for r in fake_api.writes() if r.plural != "leases"}
    assert writers == {"replica-a"}


async def test_release_on_shutdown_hands_the_lease_over_at_once(
    fake_api: FakeKubeAPI, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas
    await a.step()
    await b.step()

    assert await a.release() is True

    assert not a.elector.holds()
    assert lease_spec(fake_api)["holderIdentity"] == ""
    assert await b.step() is True  # no waiting for the lease to expire
    spec = lease_spec(fake_api)
    assert spec["holderIdentity"] == "replica-b"
    assert spec["leaseTransitions"] == 1


async def test_a_silent_leader_stops_writing_before_another_replica_takes_over(
    fake_api: FakeKubeAPI, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas
    await a.step()
    await b.step()  # b sees a's record and starts its own count

    a.clock.advance(10)  # a could not renew for its renew deadline
    assert not a.elector.holds()
    b.clock.advance(14)
    assert await b.step() is False  # the lease duration has not passed on b's clock yet
    b.clock.advance(2)
    assert await b.step() is True

    assert lease_spec(fake_api)["holderIdentity"] == "replica-b"
    assert await a.step() is False  # a comes back and finds b holding it
    assert not a.elector.holds()


async def test_a_lease_write_that_loses_a_race_is_not_leadership(
    fake_api: FakeKubeAPI, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas
    await a.step()
    await b.step()
    b.clock.advance(16)  # b believes a has gone quiet ...

    def a_renews_first() -> None:
        lease = fake_api.objects_of(*LEASES)[0]
        lease["spec"]["renewTime"] = "2026-01-01T12:00:16.000000Z"
        fake_api.store(lease, group=LEASES[0], plural=LEASES[1], manager="replica-a")

    fake_api.before_put.append(a_renews_first)  # ... but a renews between b's read and b's write

    assert await b.step() is False
    assert [r.status for r in fake_api.writes(plural="leases", user_agent="replica-b")] == [409]
    assert lease_spec(fake_api)["holderIdentity"] == "replica-a"
