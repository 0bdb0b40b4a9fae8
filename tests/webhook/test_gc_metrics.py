"""Garbage collection pauses as metrics: every collection's pause by generation, from `gc.callbacks`, and a
running server's own collections (its start settles the heap: one full collection, then a freeze)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import aiohttp
import pytest

from tests.webhook.serverkit import metric_value
from tests.webhook.webhookrig import ServerThread
from webhook.metrics import GcPauses


class SteppingClock:
    """Each reading is `step` seconds after the last."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def pauses() -> Iterator[GcPauses]:
    recorder = GcPauses(clock=SteppingClock(0.003))
    recorder.install()
    try:
        yield recorder
    finally:
        recorder.uninstall()


def test_each_collection_is_one_pause_of_its_generation(pauses: GcPauses) -> None:
    young, full = pauses.pauses[0].sum, pauses.pauses[2].counts[:]
    gc.collect(0)
    gc.collect(2)

    assert pauses.pauses[0].sum >= young + 0.003
    assert sum(pauses.pauses[2].counts) == sum(full) + 1
    assert pauses.longest == pytest.approx(0.003)


def test_collected_cycles_are_counted(pauses: GcPauses) -> None:
    gc.collect()
    before = pauses.collected[2]
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle

    gc.collect()

    assert pauses.collected[2] >= before + 1


def test_an_uninstalled_recorder_records_nothing() -> None:
    recorder = GcPauses()
    recorder.install()
    recorder.uninstall()

    gc.collect()

    assert sum(sum(tally.counts) for tally in recorder.pauses) == 0
    assert recorder._observe not in gc.callbacks


async def test_a_running_server_reports_its_pauses_and_frozen_objects(
    session: aiohttp.ClientSession, server: ServerThread
) -> None:
    full = await metric_value(session, server, 'extproc_guard_gc_pause_seconds_count{generation="2"}')
    frozen = await metric_value(session, server, "extproc_guard_gc_frozen_objects")

    assert full >= 1  # the settle at start
    assert frozen > 0
