"""The heap after a settle: what was alive is out of the collector's walk (frozen), later garbage is still
collected, settles asked for from other threads run on the loop (coalesced), and `stop` leaves the
process's collector as it found it."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator

import pytest

from kube.heap import GcThresholds, Heap


def walked(obj: object) -> bool:
    """Whether a collection would walk `obj`: it is in one of the generations, not the permanent one."""
    return any(candidate is obj for candidate in gc.get_objects())


@pytest.fixture
def heap() -> Iterator[Heap]:
    thresholds = gc.get_threshold()
    running = Heap(thresholds=GcThresholds(young=5_000, middle=20, full=100))
    try:
        yield running
    finally:
        running.stop()
        gc.set_threshold(*thresholds)


def test_a_settle_takes_what_is_alive_out_of_the_collectors_walk(heap: Heap) -> None:
    cache = {f"service-{i}": [i] for i in range(100)}
    assert walked(cache)

    heap.settle()

    assert not walked(cache)
    assert heap.frozen >= len(cache)
    assert heap.settles == 1


def test_garbage_made_after_a_settle_is_still_collected(heap: Heap) -> None:
    heap.settle()
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle

    assert gc.collect() >= 1


def test_start_sets_the_server_thresholds_and_stop_restores_them_and_unfreezes(heap: Heap) -> None:
    before = gc.get_threshold()
    heap.start()
    assert gc.get_threshold() == (5_000, 20, 100)
    heap.settle()
    assert gc.get_freeze_count() > 0

    heap.stop()

    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_settles_asked_for_from_other_threads_run_once_on_the_loop(heap: Heap) -> None:
    heap.start(asyncio.get_running_loop())
    asker = threading.Thread(target=lambda: [heap.settle_soon() for _ in range(3)])
    asker.start()
    asker.join()  # the loop is blocked meanwhile: nothing it was handed can have run yet
    assert heap.settles == 0

    for _ in range(3):
        await asyncio.sleep(0)

    assert heap.settles == 1
