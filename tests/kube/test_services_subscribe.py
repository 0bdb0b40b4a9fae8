"""`ServiceCache.subscribe`: callers are told when a Service's usable address changes.

Against `kubefake.FakeServiceAPI`, a fake that speaks the REST list/watch protocol over loopback HTTP,
because these tests need what a real kube-apiserver cannot do on cue: forget its history (410 Gone) so the
cache must relist. The cache talks to it through the real `kubernetes` client. The same notifications on
a real kube-apiserver are covered by the reconciler's drift test (`tests/reconciler/test_watch.py`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kube.services import ServiceCache, build_core_api
from policies.resolver import ServiceAddress, ServiceRef
from tests.kube.kubefake import FakeServiceAPI
from tests.kube.test_services import FAST
from tests.polling import wait_until_async

EPP = ServiceRef("llm-d-inference-scheduler", "gaie-inference-scheduling-epp")
HEADLESS = ServiceRef("llm-d-inference-scheduler", "epp-headless")
OLD = ServiceAddress("10.96.45.12", (9002,))

Change = tuple[ServiceRef, ServiceAddress | None, ServiceAddress | None]


class Recorder:
    """A subscriber: remembers every change, in order, from the cache thread."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, ref: ServiceRef, old: ServiceAddress | None, new: ServiceAddress | None) -> None:
        with self._lock:
            self.changes.append((ref, old, new))
            self.threads.add(threading.current_thread().name)

    def of(self, ref: ServiceRef) -> list[Change]:
        with self._lock:
            return [c for c in self.changes if c[0] == ref]


@pytest.fixture
async def api() -> AsyncIterator[FakeServiceAPI]:
    fake = FakeServiceAPI()
    fake.put(EPP.namespace, EPP.name, OLD.cluster_ip, OLD.ports)
    fake.put(HEADLESS.namespace, HEADLESS.name, "None", (9002,))
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def cache(api: FakeServiceAPI, tmp_path: Path) -> Iterator[ServiceCache]:
    core = build_core_api(kubeconfig=api.write_kubeconfig(tmp_path / "kubeconfig"), context=None)
    running = ServiceCache(core, FAST)
    try:
        yield running
    finally:
        running.stop(timeout=5.0)


async def started(cache: ServiceCache, api: FakeServiceAPI, *subscribers: Recorder) -> None:
    for subscriber in subscribers:
        cache.subscribe(subscriber)
    cache.start()
    await wait_until_async(lambda: cache.synced and bool(api.watches), "the watch to open")


async def test_the_first_list_reports_every_service_with_a_usable_address(
    api: FakeServiceAPI, cache: ServiceCache
) -> None:
    seen = Recorder()
    await started(cache, api, seen)

    assert seen.changes == [(EPP, None, OLD)]
    assert seen.threads == {"service-cache"}


async def test_watch_events_report_the_old_and_the_new_address(
    api: FakeServiceAPI, cache: ServiceCache
) -> None:
    seen = Recorder()
    await started(cache, api, seen)
    new = ServiceAddress("10.96.200.7", (9002,))

    api.delete(EPP.namespace, EPP.name)
    api.put(EPP.namespace, EPP.name, new.cluster_ip, new.ports)
    await wait_until_async(lambda: len(seen.of(EPP)) == 3, "the deletion and the recreation")

    assert seen.of(EPP) == [(EPP, None, OLD), (EPP, OLD, None), (EPP, None, new)]


async def test_an_event_that_leaves_the_address_alone_reports_nothing(
    api: FakeServiceAPI, cache: ServiceCache
) -> None:
    seen = Recorder()
    await started(cache, api, seen)
    other = ServiceRef("team-b", "epp")

    api.put(EPP.namespace, EPP.name, OLD.cluster_ip, OLD.ports)  # MODIFIED, same ClusterIP and port
    api.put(HEADLESS.namespace, HEADLESS.name, "None", (9003,))  # still no usable address
    api.put(other.namespace, other.name, "10.96.7.7", (9002,))  # the last event: a barrier
    await wait_until_async(lambda: bool(seen.of(other)), "the barrier event")

    assert seen.changes == [(EPP, None, OLD), (other, None, ServiceAddress("10.96.7.7", (9002,)))]


async def test_a_relist_after_410_gone_reports_only_what_differs(
    api: FakeServiceAPI, cache: ServiceCache
) -> None:
    seen = Recorder()
    await started(cache, api, seen)
    moved = ServiceAddress("10.96.3.3", (9002,))
    gone = ServiceRef("team-c", "short-lived")
    api.put(gone.namespace, gone.name, "10.96.9.9", (80,))
    await wait_until_async(lambda: bool(seen.of(gone)), "the short-lived Service")

    api.compact()
    api.drop_watches()
    # Made while the cache's resourceVersion is compacted away: only a relist can see these.
    api.put(EPP.namespace, EPP.name, moved.cluster_ip, moved.ports)
    api.services.pop((gone.namespace, gone.name))
    api.compact()
    await wait_until_async(lambda: api.lists == 2 and len(seen.changes) == 4, "the relist's differences")

    assert seen.changes[2:] == [(EPP, OLD, moved), (gone, ServiceAddress("10.96.9.9", (80,)), None)]


async def test_a_failing_subscriber_is_logged_and_neither_the_watch_nor_the_others_stop(
    api: FakeServiceAPI, cache: ServiceCache, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_ref: ServiceRef, _old: ServiceAddress | None, _new: ServiceAddress | None) -> None:
        raise RuntimeError("subscriber bug")

    seen = Recorder()
    cache.subscribe(broken)
    caplog.set_level(logging.ERROR, logger="kube.services")
    await started(cache, api, seen)
    new = ServiceAddress("10.96.200.8", (9002,))

    api.put(EPP.namespace, EPP.name, new.cluster_ip, new.ports)
    await wait_until_async(lambda: len(seen.of(EPP)) == 2, "the change after the failure")

    assert cache.lookup(EPP) == new
    assert api.lists == 1, "the watch went on; nothing was listed again"
    failures = [r for r in caplog.records if "subscriber failed" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)


async def test_an_unsubscribed_callback_is_called_no_more(api: FakeServiceAPI, cache: ServiceCache) -> None:
    stays, leaves = Recorder(), Recorder()
    cache.subscribe(stays)
    unsubscribe = cache.subscribe(leaves)
    await started(cache, api)
    unsubscribe()
    unsubscribe()  # idempotent

    api.put(EPP.namespace, EPP.name, "10.96.200.9", (9002,))
    await wait_until_async(lambda: len(stays.of(EPP)) == 2, "the change")

    assert leaves.changes == [(EPP, None, OLD)]
