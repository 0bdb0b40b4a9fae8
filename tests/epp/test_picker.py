"""The stateful picker: scrape results change health; stale samples make an endpoint unhealthy."""

from __future__ import annotations

from epp.endpoints import Endpoint
from epp.picker import Health, Picker, PickerSettings
from epp.scorer import LoadSample
from epp.telemetry import EppMetrics

A, B = Endpoint("10.0.0.1", 8000), Endpoint("10.0.0.2", 8000)
IDLE = LoadSample(0, 0, 0)
BUSY = LoadSample(4, 8, 0.8)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_endpoints_not_yet_scraped_take_turns() -> None:
    picker = Picker(PickerSettings(stale_after=1.0), clock=Clock())
    picker.set_endpoints([A, B])
    assert [picker.pick() for _ in range(4)] == [A, B, A, B]


def test_a_failed_scrape_removes_the_endpoint_until_a_good_one() -> None:
    metrics = EppMetrics()
    picker = Picker(PickerSettings(stale_after=1.0), metrics=metrics, clock=Clock())
    picker.set_endpoints([A, B])
    picker.record_sample(A, IDLE)
    picker.record_sample(B, IDLE)
    picker.record_failure(A, "connection refused")
    assert {picker.pick() for _ in range(4)} == {B}
    assert metrics.registry.get_sample_value("epp_endpoint_healthy", {"endpoint": str(A)}) == 0
    picker.record_sample(A, IDLE)
    assert A in {picker.pick() for _ in range(4)}


def test_a_sample_older_than_stale_after_makes_the_endpoint_unhealthy() -> None:
    clock = Clock()
    picker = Picker(PickerSettings(stale_after=1.0), clock=clock)
    picker.set_endpoints([A, B])
    picker.record_sample(A, IDLE)
    clock.now += 0.5
    picker.record_sample(B, BUSY)
    clock.now += 0.7  # A's sample is 1.2 s old, B's 0.7 s
    assert picker.pick() == B
    assert {s.endpoint: s.health for s in picker.statuses()} == {A: Health.UNHEALTHY, B: Health.HEALTHY}
    clock.now += 0.5
    assert picker.pick() is None


def test_the_least_loaded_endpoint_takes_a_burst_until_its_assigned_requests_even_out() -> None:
    picker = Picker(PickerSettings(stale_after=0), clock=Clock())
    picker.set_endpoints([A, B])
    picker.record_sample(A, LoadSample(0, 3, 0))
    picker.record_sample(B, IDLE)
    picks = [picker.pick() for _ in range(5)]
    assert picks[:3] == [B, B, B]
    assert picks.count(A) == 1


def test_replacing_the_endpoint_set_keeps_known_endpoints_state() -> None:
    metrics = EppMetrics()
    picker = Picker(PickerSettings(stale_after=0), metrics=metrics, clock=Clock())
    picker.set_endpoints([A, B])
    picker.record_failure(A, "down")
    picker.set_endpoints([A])
    assert picker.pick() is None
    assert metrics.registry.get_sample_value("epp_endpoint_healthy", {"endpoint": str(B)}) is None
