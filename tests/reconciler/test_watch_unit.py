"""The EnvoyFilter watch's protocol handling, its hand-over to the event loop, and the reconciler's answer to
one change.

The watch tests run `FilterWatch` through the real `kubernetes` client against `kubefake.FakeServiceAPI`
served at the EnvoyFilter collection's path: a fake, because a real kube-apiserver cannot be made to drop
a watch, compact its history (410 Gone) or refuse requests on cue. Its objects are Services, which is all
the same to a watch that reads only metadata (namespace, name, resourceVersion). The reconciler tests use
the REST fake of `fakeapi.py` so they can count every request. The watch against a real apiserver is
`test_watch.py`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from aiohttp import web

from reconciler.api import build_api_client
from reconciler.core import Action
from reconciler.watch import ChangeQueue, FilterChange, FilterWatch, WatchSettings
from tests.documents import load_document
from tests.kube.kubefake import FakeServiceAPI
from tests.polling import wait_until_async
from tests.reconciler.conftest import NAMESPACE, OPERATOR, ReconcilerFactory
from tests.reconciler.fakeapi import POLICY_REPORTS, FakeKubeAPI

WAIT_SECONDS = 10.0
FAST = WatchSettings(timeout_seconds=60, backoff_initial_seconds=0.05, backoff_max_seconds=0.2)
NS = "team-a"


eventually = partial(wait_until_async, timeout=WAIT_SECONDS)  # the watch thread sets the conditions


class Changes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[FilterChange] = []

    def __call__(self, change: FilterChange) -> None:
        with self._lock:
            self._seen.append(change)

    @property
    def seen(self) -> list[FilterChange]:
        with self._lock:
            return list(self._seen)


@pytest.fixture
async def filters(tmp_path: Path) -> AsyncIterator[tuple[FakeServiceAPI, Path]]:
    """The list/watch fake at /apis/networking.istio.io/v1alpha3/envoyfilters, and a kubeconfig for it."""
    fake = FakeServiceAPI()
    fake.put(NS, "a", "10.0.0.1")
    fake.put(NS, "b", "10.0.0.2")
    app = web.Application()
    app.router.add_get("/apis/networking.istio.io/v1alpha3/envoyfilters", fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.port = int(runner.addresses[0][1])
    try:
        yield fake, fake.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        fake.drop_watches()
        await runner.cleanup()


@pytest.fixture
async def watching(filters: tuple[FakeServiceAPI, Path]) -> AsyncIterator[tuple[FakeServiceAPI, Changes]]:
    """A running `FilterWatch` (every namespace) with its watch open, recording what it reports."""
    fake, kubeconfig = filters
    changes = Changes()
    api_client = build_api_client(kubeconfig=kubeconfig, context=None, user_agent="extproc-guard-test")
    watch = FilterWatch(api_client, namespaces=(), settings=FAST, on_change=changes)
    watch.start()
    try:
        await eventually(lambda: bool(fake.watches), "the watch to open")
        yield fake, changes
    finally:
        await asyncio.to_thread(watch.stop, 5.0)


async def test_the_first_list_reports_nothing_and_each_event_reports_its_object(
    watching: tuple[FakeServiceAPI, Changes],
) -> None:
    fake, changes = watching
    fake.put(NS, "a", "10.0.0.9")
    fake.put(NS, "c", "10.0.0.3")
    fake.delete(NS, "b")
    await eventually(lambda: len(changes.seen) == 3, "three events")

    assert [(c.name, c.deleted) for c in changes.seen] == [("a", False), ("c", False), ("b", True)]
    assert changes.seen[0].resource_version == fake.services[(NS, "a")]["metadata"]["resourceVersion"]
    assert fake.lists == 1


async def test_a_dropped_watch_resumes_from_the_last_version_without_listing_again(
    watching: tuple[FakeServiceAPI, Changes],
) -> None:
    fake, changes = watching
    fake.put(NS, "a", "10.0.0.9")
    await eventually(lambda: len(changes.seen) == 1, "the first event")
    seen_version = str(fake.version)

    fake.drop_watches()
    fake.put(NS, "b", "10.0.0.8")  # made while no watch is open
    await eventually(lambda: len(changes.seen) == 2, "the change made during the drop")

    assert changes.seen[1].name == "b"
    assert fake.watches[1].resource_version == seen_version
    assert fake.lists == 1


async def test_a_watch_that_is_gone_lists_again_and_reports_only_what_differs(
    watching: tuple[FakeServiceAPI, Changes],
) -> None:
    fake, changes = watching
    fake.compact()
    fake.drop_watches()
    # Made while the watch's resourceVersion is compacted away: only a relist can see these.
    fake.put(NS, "a", "10.0.0.9")
    fake.services.pop((NS, "b"))
    fake.compact()
    await eventually(lambda: fake.lists == 2 and len(changes.seen) == 2, "the relist's differences")

    assert [(c.name, c.deleted) for c in changes.seen] == [("a", False), ("b", True)]


async def test_a_refusing_api_is_retried_with_back_off_until_it_answers(
    watching: tuple[FakeServiceAPI, Changes],
) -> None:
    fake, changes = watching
    fake.refuse_with = 503
    fake.drop_watches()
    await eventually(lambda: len(fake.requests) >= 4, "a few refused attempts")
    fake.refuse_with = None
    await eventually(lambda: len(fake.watches) >= 2 and fake.requests[-1].watch, "a watch open again")
    fake.put(NS, "a", "10.0.0.9")
    await eventually(lambda: [c.name for c in changes.seen] == ["a"], "the change after recovery")


async def test_changes_from_other_threads_are_coalesced_to_the_newest_per_object() -> None:
    queue = ChangeQueue(asyncio.get_running_loop())

    def burst() -> None:
        for version in range(1, 51):
            queue.offer(FilterChange(NS, "a", str(version)))
        queue.offer(FilterChange(NS, "b", "7"))

    await asyncio.to_thread(burst)
    await asyncio.wait_for(queue.wait(), WAIT_SECONDS)
    await asyncio.sleep(0)  # let every handed-over call run

    assert queue.take() == [FilterChange(NS, "a", "50"), FilterChange(NS, "b", "7")]
    assert len(queue) == 0


async def test_the_echo_of_the_reconcilers_own_patch_is_not_looked_at_again(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)
    reconciler = make_reconciler()
    (fixed,) = (await reconciler.audit()).outcomes
    assert fixed.action is Action.FIXED
    ours = fake_api.envoy_filter(NAMESPACE, "epp-ext-proc")["metadata"]["resourceVersion"]
    before = len(fake_api.requests)

    assert await reconciler.reconcile_change(FilterChange(NAMESPACE, "epp-ext-proc", ours)) is None
    assert len(fake_api.requests) == before

    rewritten = fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)
    change = FilterChange(NAMESPACE, "epp-ext-proc", rewritten["metadata"]["resourceVersion"])
    outcome = await reconciler.reconcile_change(change)

    assert outcome is not None
    assert outcome.action is Action.FIXED
    assert (
        reconciler.version_seen(NAMESPACE, "epp-ext-proc")
        == (fake_api.envoy_filter(NAMESPACE, "epp-ext-proc")["metadata"]["resourceVersion"])
    )


async def test_a_deleted_filter_is_forgotten(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)
    reconciler = make_reconciler()
    await reconciler.audit()
    assert reconciler.pinned() != {}
    before = len(fake_api.requests)

    assert (
        await reconciler.reconcile_change(FilterChange(NAMESPACE, "epp-ext-proc", "", deleted=True)) is None
    )

    assert reconciler.version_seen(NAMESPACE, "epp-ext-proc") is None
    assert reconciler.pinned() == {}
    assert len(fake_api.requests) == before


async def test_a_policy_report_crd_installed_after_start_is_used_from_the_next_audit(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    """The REST fake here: the real apiserver of this session may already serve the CRD, and this test
    needs it absent first and present later."""
    fake_api.serve_policy_reports = False
    fake_api.store_envoy_filter(load_document("unfixable.yaml"), manager=OPERATOR)
    reconciler = make_reconciler()
    await reconciler.audit()
    await reconciler.audit()
    assert fake_api.objects_of(*POLICY_REPORTS) == []

    fake_api.serve_policy_reports = True
    await reconciler.audit()

    (report,) = fake_api.objects_of(*POLICY_REPORTS)
    assert report["summary"]["fail"] == 1
