"""The list + watch mechanism under the Service cache and the EnvoyFilter watch, driven directly.

The API is `kubefake.FakeServiceAPI`, a fake: a real kube-apiserver cannot be made to drop a watch, compact
its history (410 Gone) or refuse requests on cue, and these tests need exactly that. It speaks the REST
list/watch protocol over loopback HTTP, and the informer reaches it through the real `kubernetes` client
configured from a real kubeconfig file. Back-off is checked through the delays the informer chooses (its
log line), never by measuring time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from kube.informer import Change, Informer, InformerLog, InformerSettings, diff_items
from kube.services import build_core_api
from tests.kube.kubefake import FakeServiceAPI
from tests.polling import wait_until_async

logger = logging.getLogger(__name__)

NS = "team-a"
Key = tuple[str, str]
FAST = InformerSettings(watch_timeout_seconds=60, backoff_initial_seconds=0.05, backoff_max_seconds=0.2)
LOG = InformerLog(
    logger=logger,
    watch_expired="test watch expired",
    list_expired="test list expired",
    retrying="test informer: %s; retrying in %.3fs",
)


def cluster_ip_of(obj: Mapping[str, Any]) -> tuple[Key, str] | None:
    metadata, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    return (str(metadata.get("namespace")), str(metadata.get("name"))), str(spec.get("clusterIP"))


class Recorder:
    """What the informer reports, from its thread: every list (a copy of its items, its changes) and
    every event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lists: list[tuple[dict[Key, str], list[Change[Key, str]]]] = []
        self._events: list[Change[Key, str]] = []

    def listed(self, items: Mapping[Key, str], changes: Sequence[Change[Key, str]], version: str) -> None:
        with self._lock:
            self._lists.append((dict(items), list(changes)))

    def event(self, change: Change[Key, str], version: str) -> None:
        with self._lock:
            self._events.append(change)

    @property
    def lists(self) -> list[tuple[dict[Key, str], list[Change[Key, str]]]]:
        with self._lock:
            return list(self._lists)

    @property
    def events(self) -> list[Change[Key, str]]:
        with self._lock:
            return list(self._events)


@pytest.fixture
async def api() -> AsyncIterator[FakeServiceAPI]:
    fake = FakeServiceAPI()
    fake.put(NS, "a", "10.0.0.1")
    fake.put(NS, "b", "10.0.0.2")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


InformerFactory = Callable[..., tuple[Informer[Key, str], Recorder]]


@pytest.fixture
async def make_informer(api: FakeServiceAPI, tmp_path: Path) -> AsyncIterator[InformerFactory]:
    informers: list[Informer[Key, str]] = []
    core = build_core_api(kubeconfig=api.write_kubeconfig(tmp_path / "kubeconfig"), context=None)

    def build(
        settings: InformerSettings = FAST, draw: Callable[[], float] = lambda: 0.0
    ) -> tuple[Informer[Key, str], Recorder]:
        recorder = Recorder()
        informer: Informer[Key, str] = Informer(
            name="test-informer",
            call=core.list_service_for_all_namespaces,
            decode=cluster_ip_of,
            on_listed=recorder.listed,
            on_event=recorder.event,
            settings=settings,
            log=LOG,
            draw=draw,
        )
        informers.append(informer)
        return informer, recorder

    yield build
    for informer in informers:
        await asyncio.to_thread(informer.stop, 5.0)


async def started(make_informer: InformerFactory, api: FakeServiceAPI) -> tuple[Informer[Key, str], Recorder]:
    informer, recorder = make_informer()
    informer.start()
    await wait_until_async(lambda: bool(recorder.lists) and bool(api.watches), "the watch to open")
    return informer, recorder


async def test_the_first_list_reports_every_object_as_added(
    api: FakeServiceAPI, make_informer: InformerFactory
) -> None:
    _informer, recorder = await started(make_informer, api)
    items, changes = recorder.lists[0]
    assert items == {(NS, "a"): "10.0.0.1", (NS, "b"): "10.0.0.2"}
    assert changes == [
        Change("ADDED", (NS, "a"), None, "10.0.0.1"),
        Change("ADDED", (NS, "b"), None, "10.0.0.2"),
    ]
    assert api.watches[0].resource_version == str(api.version), "the watch starts at the list's version"


async def test_watch_events_carry_the_old_value_and_a_deletion_its_last_state(
    api: FakeServiceAPI, make_informer: InformerFactory
) -> None:
    _informer, recorder = await started(make_informer, api)
    api.put(NS, "a", "10.0.0.9")
    api.put(NS, "c", "10.0.0.3")
    api.delete(NS, "b")
    await wait_until_async(lambda: len(recorder.events) == 3, "three events")
    assert recorder.events == [
        Change("MODIFIED", (NS, "a"), "10.0.0.1", "10.0.0.9"),
        Change("ADDED", (NS, "c"), None, "10.0.0.3"),
        Change("DELETED", (NS, "b"), "10.0.0.2", "10.0.0.2"),
    ]
    assert api.lists == 1


async def test_a_dropped_watch_resumes_from_the_last_version_seen(
    api: FakeServiceAPI, make_informer: InformerFactory
) -> None:
    informer, recorder = await started(make_informer, api)
    api.put(NS, "a", "10.0.0.9")
    await wait_until_async(lambda: len(recorder.events) == 1, "the first event")
    seen_version = str(api.version)
    assert informer.version == seen_version

    api.drop_watches()
    api.put(NS, "b", "10.0.0.8")  # made while no watch is open
    await wait_until_async(lambda: len(recorder.events) == 2, "the change made during the drop")

    assert recorder.events[1] == Change("MODIFIED", (NS, "b"), "10.0.0.2", "10.0.0.8")
    assert api.watches[1].resource_version == seen_version
    assert api.lists == 1, "a resumable watch does not list again"


async def test_a_watch_that_is_gone_lists_again_and_reports_the_difference(
    api: FakeServiceAPI, make_informer: InformerFactory
) -> None:
    _informer, recorder = await started(make_informer, api)
    api.compact()
    api.drop_watches()
    # Made while the informer's resourceVersion is compacted away: only a relist can see these.
    api.put(NS, "a", "10.0.0.9")
    api.services.pop((NS, "b"))
    api.put(NS, "d", "10.0.0.4")
    api.compact()
    await wait_until_async(lambda: len(recorder.lists) == 2, "the relist after 410 Gone")

    items, changes = recorder.lists[1]
    assert items == {(NS, "a"): "10.0.0.9", (NS, "d"): "10.0.0.4"}
    assert changes == [
        Change("MODIFIED", (NS, "a"), "10.0.0.1", "10.0.0.9"),
        Change("DELETED", (NS, "b"), "10.0.0.2", "10.0.0.2"),
        Change("ADDED", (NS, "d"), None, "10.0.0.4"),
    ]
    assert recorder.events == [], "what a relist finds is reported once, as its difference"


@pytest.mark.parametrize(
    ("jitter", "draw", "expected"),
    [
        (0.0, 0.7, [0.05, 0.1, 0.2, 0.2, 0.2]),
        (0.5, 0.0, [0.05, 0.1, 0.2, 0.2, 0.2]),
        (0.5, 1.0, [0.025, 0.05, 0.1, 0.1, 0.1]),
    ],
    ids=["no-jitter", "jitter-drawing-nothing", "jitter-drawing-the-most"],
)
async def test_a_refusing_api_is_retried_with_doubling_back_off_bounded_by_the_maximum(
    api: FakeServiceAPI,
    make_informer: InformerFactory,
    caplog: pytest.LogCaptureFixture,
    jitter: float,
    draw: float,
    expected: list[float],
) -> None:
    caplog.set_level(logging.WARNING, logger=__name__)
    api.refuse_with = 503
    informer, recorder = make_informer(
        InformerSettings(
            watch_timeout_seconds=60, backoff_initial_seconds=0.05, backoff_max_seconds=0.2, jitter=jitter
        ),
        lambda: draw,
    )
    informer.start()

    def delays() -> list[float]:
        chosen = [r.args[1] for r in caplog.records if r.name == __name__ and isinstance(r.args, tuple)]
        return [delay for delay in chosen if isinstance(delay, float)]

    await wait_until_async(lambda: len(delays()) >= len(expected), "a few refused attempts")
    assert delays()[: len(expected)] == pytest.approx(expected)
    assert "503" in informer.last_error
    assert informer.age() is None, "never in touch"

    api.refuse_with = None
    await wait_until_async(
        lambda: bool(recorder.lists) and informer.age() == 0.0, "a watch open after recovery"
    )
    assert informer.last_error == ""


async def test_stop_interrupts_a_back_off_wait(api: FakeServiceAPI, make_informer: InformerFactory) -> None:
    api.refuse_with = 503
    informer, _recorder = make_informer(
        InformerSettings(watch_timeout_seconds=60, backoff_initial_seconds=300.0, backoff_max_seconds=300.0)
    )
    informer.start()
    await wait_until_async(lambda: "503" in informer.last_error, "the first refusal")
    assert await asyncio.to_thread(informer.stop, 5.0), "the thread ended long before the back-off"
    assert not informer.running


async def test_stop_ends_an_open_watch_and_the_api_sees_the_client_leave_cleanly(
    api: FakeServiceAPI, make_informer: InformerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    informer, recorder = await started(make_informer, api)
    assert informer.age() == 0.0
    assert await asyncio.to_thread(informer.stop, 5.0)
    age = informer.age()
    assert age is not None
    assert age != 0.0, "not watching any more"

    api.put(NS, "a", "10.0.0.9")  # the fake writes it to the watch that is gone
    await wait_until_async(lambda: not api.open_watches, "the fake to end that watch")
    assert recorder.events == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_stopped_informer_starts_again_with_a_list(
    api: FakeServiceAPI, make_informer: InformerFactory
) -> None:
    informer, recorder = await started(make_informer, api)
    assert await asyncio.to_thread(informer.stop, 5.0)
    informer.start()
    await wait_until_async(lambda: len(recorder.lists) == 2 and len(api.watches) == 2, "the second watch")
    assert recorder.lists[1][1] == [], "nothing changed while it was stopped"


async def test_a_stop_before_any_start_returns_at_once(make_informer: InformerFactory) -> None:
    informer, _recorder = make_informer()
    assert informer.stop(0.0)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ({}, {}, []),
        ({"a": 1}, {"a": 1}, []),
        ({}, {"b": 2, "a": 1}, [Change("ADDED", "a", None, 1), Change("ADDED", "b", None, 2)]),
        ({"a": 1}, {"a": 3}, [Change("MODIFIED", "a", 1, 3)]),
        ({"a": 1, "b": 2}, {"b": 2, "c": 5}, [Change("DELETED", "a", 1, 1), Change("ADDED", "c", None, 5)]),
    ],
    ids=["empty", "unchanged", "all-new-in-key-order", "changed", "gone-and-new"],
)
def test_the_difference_of_two_lists_turns_the_old_into_the_new(
    old: dict[str, int], new: dict[str, int], expected: list[Change[str, int]]
) -> None:
    assert diff_items(old, new) == expected
