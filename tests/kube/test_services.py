"""The Service cache (list + watch in a thread) against a Kubernetes API endpoint.

The API here is `kubefake.FakeServiceAPI`, a fake: a real kube-apiserver cannot be made to drop a watch,
compact its history (410 Gone) or refuse requests on cue, and these tests need exactly that. It speaks the
REST list/watch protocol over loopback HTTP (JSON lines, resourceVersion, 410 Gone), and the cache talks
to it through the real `kubernetes` client, configured from a real kubeconfig file. The same cache against
a real kube-apiserver is `test_services_apiserver.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from kube.services import KubeConfigError, ServiceCache, build_core_api
from kube.settings import KubeSettings
from policies.resolver import ServiceAddress, ServiceNotFound, ServiceRef, ServiceUnknown
from tests.kube.kubefake import FakeServiceAPI
from tests.polling import wait_until_async

EPP = ServiceRef("llm-d-inference-scheduler", "gaie-inference-scheduling-epp")

FAST = KubeSettings(
    resync_seconds=3600.0,
    watch_timeout_seconds=60,
    backoff_initial_seconds=0.05,
    backoff_max_seconds=0.2,
    stale_after_seconds=1.0,
)


def answers(cache: ServiceCache, ref: ServiceRef, address: ServiceAddress) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return cache.lookup(ref) == address
        except (ServiceNotFound, ServiceUnknown):
            return False

    return check


def absent(cache: ServiceCache, ref: ServiceRef) -> Callable[[], bool]:
    def check() -> bool:
        try:
            cache.lookup(ref)
        except ServiceNotFound:
            return True
        return False

    return check


@pytest.fixture
async def api() -> AsyncIterator[FakeServiceAPI]:
    fake = FakeServiceAPI()
    fake.put(EPP.namespace, EPP.name, "10.96.45.12", (9002,))
    fake.put("default", "kubernetes", "10.96.0.1", (443,))
    fake.put("llm-d-inference-scheduler", "epp-headless", "None", (9002,))
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def make_cache(api: FakeServiceAPI, tmp_path: Path) -> Iterator[Callable[..., ServiceCache]]:
    caches: list[ServiceCache] = []

    def build(settings: KubeSettings = FAST) -> ServiceCache:
        core = build_core_api(kubeconfig=api.write_kubeconfig(tmp_path / "kubeconfig"), context=None)
        cache = ServiceCache(core, settings)
        caches.append(cache)
        return cache

    yield build
    for cache in caches:
        cache.stop(timeout=5.0)


async def test_lookups_before_the_first_list_are_unknown_not_absent(
    make_cache: Callable[..., ServiceCache],
) -> None:
    cache = make_cache()
    with pytest.raises(ServiceUnknown, match="not synced"):
        cache.lookup(EPP)
    assert cache.age() is None


async def test_initial_list_answers_cluster_ips_and_ports(make_cache: Callable[..., ServiceCache]) -> None:
    cache = make_cache()
    cache.start()
    await wait_until_async(lambda: cache.synced, "the first list")
    assert cache.lookup(EPP) == ServiceAddress("10.96.45.12", (9002,))
    assert cache.lookup(ServiceRef("default", "kubernetes")) == ServiceAddress("10.96.0.1", (443,))
    assert cache.size() == 3


async def test_a_service_absent_from_a_synced_cache_is_not_found(
    make_cache: Callable[..., ServiceCache],
) -> None:
    cache = make_cache()
    cache.start()
    await wait_until_async(lambda: cache.synced, "the first list")
    with pytest.raises(ServiceNotFound, match="does not exist"):
        cache.lookup(ServiceRef("llm-d-inference-scheduler", "no-such-epp"))


async def test_a_headless_service_is_not_found_with_the_reason(
    make_cache: Callable[..., ServiceCache],
) -> None:
    cache = make_cache()
    cache.start()
    await wait_until_async(lambda: cache.synced, "the first list")
    with pytest.raises(ServiceNotFound, match="headless"):
        cache.lookup(ServiceRef("llm-d-inference-scheduler", "epp-headless"))


async def test_watch_events_add_and_delete_services(
    api: FakeServiceAPI, make_cache: Callable[..., ServiceCache]
) -> None:
    cache = make_cache()
    cache.start()
    await wait_until_async(lambda: cache.synced and bool(api.watches), "the watch to open")
    new = ServiceRef("team-b", "epp")
    api.put(new.namespace, new.name, "10.96.7.7", (9002, 9003))
    await wait_until_async(answers(cache, new, ServiceAddress("10.96.7.7", (9002, 9003))), "the ADDED event")
    api.delete(new.namespace, new.name)
    await wait_until_async(absent(cache, new), "the DELETED event")
    assert api.lists == 1, "events arrive by watch, not by listing again"


async def test_a_cluster_ip_change_is_seen_without_a_relist(
    api: FakeServiceAPI, make_cache: Callable[..., ServiceCache]
) -> None:
    cache = make_cache()
    cache.start()
    await wait_until_async(lambda: cache.synced and bool(api.watches), "the watch to open")
    api.put(EPP.namespace, EPP.name, "10.96.200.9", (9002,))
    await wait_until_async(answers(cache, EPP, ServiceAddress("10.96.200.9", (9002,))), "the new ClusterIP")
    assert api.lists == 1


async def test_a_dropped_watch_resumes_from_the_last_resource_version(
    api: FakeServiceAPI, make_cache: Callable[..., ServiceCache]
) -> None:
    cache = make_cache()
    cache.start()
    await wait_until_async(lambda: cache.synced and bool(api.watches), "the watch to open")
    api.put(EPP.namespace, EPP.name, "10.96.1.1", (9002,))
    await wait_until_async(answers(cache, EPP, ServiceAddress("10.96.1.1", (9002,))), "the first change")
    seen_version = str(api.version)
    api.drop_watches()
    # A change while no watch is open is delivered by the resumed watch (history after its version).
    api.put(EPP.namespace, EPP.name, "10.96.2.2", (9002,))
    await wait_until_async(
        answers(cache, EPP, ServiceAddress("10.96.2.2", (9002,))), "the change made during the drop"
    )
    assert len(api.watches) >= 2
    assert api.watches[1].resource_version == seen_version
    assert api.lists == 1, "a resumable watch does not relist"


async def test_a_watch_that_is_gone_relists_and_recovers(
    api: FakeServiceAPI, make_cache: Callable[..., ServiceCache]
) -> None:
    cache = make_cache()
    cache.start()
    await wait_until_async(lambda: cache.synced and bool(api.watches), "the watch to open")
    api.compact()
    api.drop_watches()
    # Changes made while the cache's resourceVersion is compacted away are only visible by listing again.
    api.put(EPP.namespace, EPP.name, "10.96.3.3", (9002,))
    api.compact()
    await wait_until_async(
        answers(cache, EPP, ServiceAddress("10.96.3.3", (9002,))), "the relist after 410 Gone"
    )
    assert api.lists == 2


async def test_an_unreachable_api_keeps_the_last_answers_and_reports_staleness(
    api: FakeServiceAPI, make_cache: Callable[..., ServiceCache]
) -> None:
    cache = make_cache()
    cache.start()
    await wait_until_async(lambda: cache.synced and bool(api.watches), "the watch to open")
    assert cache.age() == 0.0
    api.refuse_with = 503
    api.drop_watches()
    await wait_until_async(lambda: "503" in cache.last_error, "the failure to be recorded")
    assert cache.lookup(EPP) == ServiceAddress("10.96.45.12", (9002,))
    await wait_until_async(lambda: (cache.age() or 0.0) > 0.0, "the cache to age")
    api.refuse_with = None
    await wait_until_async(lambda: cache.age() == 0.0 and not cache.last_error, "recovery")


async def test_a_multi_page_list_is_read_to_the_end(
    api: FakeServiceAPI, make_cache: Callable[..., ServiceCache]
) -> None:
    api.page_size = 1
    cache = make_cache()
    cache.start()
    await wait_until_async(lambda: cache.synced, "the first list")
    assert cache.size() == 3
    assert cache.lookup(EPP).cluster_ip == "10.96.45.12"


async def test_stop_ends_an_open_watch_promptly(
    api: FakeServiceAPI, make_cache: Callable[..., ServiceCache]
) -> None:
    cache = make_cache()
    cache.start()
    await wait_until_async(lambda: cache.synced and bool(api.watches), "the watch to open")
    await asyncio.to_thread(cache.stop, 5.0)
    age = cache.age()
    assert age is not None
    assert age != 0.0, "not watching any more"


def test_a_missing_kubeconfig_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="kubeconfig file not found"):
        build_core_api(kubeconfig=tmp_path / "nope", context=None)
