"""The pure scorer: least loaded wins, ties and metric-less endpoints rotate, unhealthy never picked."""

from __future__ import annotations

import pytest

from epp.endpoints import Endpoint
from epp.scorer import Candidate, LoadSample, ScoreWeights, pick_endpoint, score_load

A, B, C = Endpoint("10.0.0.1", 8000), Endpoint("10.0.0.2", 8000), Endpoint("10.0.0.3", 8000)
IDLE = LoadSample(waiting=0, running=0, kv_cache_usage=0)
BUSY = LoadSample(waiting=5, running=8, kv_cache_usage=0.9)
W = ScoreWeights()


def test_the_least_loaded_endpoint_wins_whatever_the_turn() -> None:
    candidates = [Candidate(A, True, BUSY), Candidate(B, True, IDLE), Candidate(C, True, BUSY)]
    assert {pick_endpoint(candidates, turn=t, weights=W) for t in range(6)} == {B}


def test_equal_loads_take_turns() -> None:
    candidates = [Candidate(A, True, IDLE), Candidate(B, True, IDLE), Candidate(C, True, BUSY)]
    assert [pick_endpoint(candidates, turn=t, weights=W) for t in range(4)] == [A, B, A, B]


def test_without_any_metrics_all_healthy_endpoints_take_turns() -> None:
    candidates = [Candidate(A, True, None), Candidate(B, True, BUSY), Candidate(C, False, None)]
    assert [pick_endpoint(candidates, turn=t, weights=W) for t in range(4)] == [A, B, A, B]


def test_unhealthy_endpoints_are_never_picked_and_none_healthy_gives_none() -> None:
    assert pick_endpoint([Candidate(A, False, IDLE), Candidate(B, True, BUSY)], turn=0, weights=W) == B
    assert pick_endpoint([Candidate(A, False, IDLE), Candidate(B, False, None)], turn=0, weights=W) is None
    assert pick_endpoint([], turn=3, weights=W) is None


def test_requests_sent_since_the_last_scrape_count_as_load() -> None:
    candidates = [Candidate(A, True, IDLE, assigned=3), Candidate(B, True, LoadSample(0, 2, 0), assigned=0)]
    assert pick_endpoint(candidates, turn=0, weights=W) == B


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        pytest.param(LoadSample(2, 3, 0.5), 4 * 2 + 3 + 8 * 0.5, id="weighted-sum"),
        pytest.param(LoadSample(-1, -1, 7.0), 8.0, id="negative-gauges-floor-and-kv-caps-at-one"),
    ],
)
def test_the_score_is_a_weighted_sum_of_the_gauges(sample: LoadSample, expected: float) -> None:
    assert score_load(sample, assigned=0, weights=W) == pytest.approx(expected)
