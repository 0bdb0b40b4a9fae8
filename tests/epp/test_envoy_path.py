"""The whole path on a real Envoy: the fixed incident filter, the EPP and simulators as real processes."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from epp.children import kill_child, stop_child
from tests import polling
from tests.epp.stack import Stack, post, run_stack

pytestmark = pytest.mark.envoy

WAIT = 30.0  # seconds any condition below may take on a loaded machine
wait_until = partial(polling.wait_until, timeout=WAIT, interval=0.05)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Three quick simulators and one slow one (1 slot, 1.5 s per request) behind the EPP and Envoy."""
    sims = [("sim-a", 2.0, 4), ("sim-b", 2.0, 4), ("sim-c", 2.0, 4), ("sim-slow", 1500.0, 1)]
    with run_stack(tmp_path_factory.mktemp("stack"), sims) as running:
        wait_until(lambda: running.sim_metric("epp_endpoint_healthy", "sim-slow") == 1, what="first scrape")
        yield running


def test_requests_through_envoy_reach_every_quick_simulator_and_each_decision_is_logged(stack: Stack) -> None:
    started = stack.ext_proc("streams_started")
    logged = len(stack.decision_lines())
    answers = [stack.send(prompt=f"p{i}") for i in range(24)]
    assert [a.status for a in answers] == [200] * 24
    served = Counter(a.served_by for a in answers)
    assert {"sim-a", "sim-b", "sim-c"} <= set(served)
    assert stack.ext_proc("streams_started") - started == 24
    assert stack.ext_proc("streams_failed") == 0
    wait_until(lambda: len(stack.decision_lines()) - logged == 24, what="24 decision lines in the EPP log")
    picked = {line.split("endpoint=")[1].split()[0] for line in stack.decision_lines()[logged:]}
    assert picked == {f"127.0.0.1:{stack.sim_ports[name]}" for name in served}


def test_the_load_aware_picker_sends_more_traffic_to_idle_simulators_than_to_a_loaded_one(
    stack: Stack,
) -> None:
    slow_url = f"http://127.0.0.1:{stack.sim_ports['sim-slow']}/v1/completions"
    holders = [threading.Thread(target=post, args=(slow_url, {"prompt": "hold"})) for _ in range(4)]
    for thread in holders:
        thread.start()
    try:
        wait_until(
            lambda: stack.sim_metric("epp_endpoint_score", "sim-slow") >= 10,
            what="the EPP to see the slow simulator's queue",
        )
        answers = [stack.send(prompt=f"q{i}") for i in range(20)]
    finally:
        for thread in holders:
            thread.join(timeout=30)
    served = Counter(a.served_by for a in answers)
    assert all(a.status == 200 for a in answers)
    assert all(served[name] > served["sim-slow"] for name in ("sim-a", "sim-b", "sim-c"))


def test_the_epp_metrics_count_decisions_by_outcome(stack: Stack) -> None:
    before = stack.epp_metric('epp_decisions_total{outcome="picked"}')
    stack.send()
    wait_until(
        lambda: stack.epp_metric('epp_decisions_total{outcome="picked"}') == before + 1, what="the count"
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Stack]:
    with run_stack(tmp_path, [("sim-x", 2.0, 4), ("sim-y", 2.0, 4)], scrape_interval=0.2) as running:
        yield running


def healthy(stack: Stack, name: str) -> float:
    return stack.sim_metric("epp_endpoint_healthy", name)


def test_a_killed_simulator_stops_getting_traffic_and_with_none_left_the_gateway_answers_503(
    pair: Stack,
) -> None:
    wait_until(lambda: healthy(pair, "sim-x") == 1 and healthy(pair, "sim-y") == 1, what="both healthy")
    assert {a.served_by for a in (pair.send() for _ in range(6))} == {"sim-x", "sim-y"}
    kill_child(pair.sims["sim-x"])
    wait_until(lambda: healthy(pair, "sim-x") == 0, what="the EPP to mark the killed simulator unhealthy")
    after = [pair.send() for _ in range(8)]
    assert [(a.status, a.served_by) for a in after] == [(200, "sim-y")] * 8
    kill_child(pair.sims["sim-y"])
    wait_until(lambda: healthy(pair, "sim-y") == 0, what="the EPP to mark the last simulator unhealthy")
    answer = pair.send()
    assert answer.status == 503
    assert json.loads(answer.body)["error"] == "no_healthy_endpoint"


def test_with_failure_mode_allow_false_a_stopped_epp_means_5xx_not_a_silent_bypass(pair: Stack) -> None:
    wait_until(lambda: healthy(pair, "sim-x") == 1 and healthy(pair, "sim-y") == 1, what="both healthy")
    first = pair.send()
    assert first.status == 200, f"{first}\nEPP log:\n{pair.epp.tail()}"
    stop_child(pair.epp)
    answers = [pair.send() for _ in range(3)]
    assert all(500 <= a.status < 600 for a in answers), answers
    assert not any(a.served_by for a in answers), answers


def test_without_http2_on_the_epp_cluster_the_epp_hears_nothing_and_envoy_counts_protocol_errors(
    tmp_path: Path,
) -> None:
    with run_stack(tmp_path, [("sim-z", 2.0, 4)], http2=False) as broken:
        answers = [broken.send() for _ in range(5)]
        stats = broken.envoy.stats()
        assert all(a.status >= 500 for a in answers)
        assert stats.get("cluster.epp-cluster.upstream_cx_protocol_error", 0) > 0
        assert stats.get("cluster.epp-cluster.upstream_rq_total", 0) >= 5
        assert broken.ext_proc("streams_failed") == 5
        assert broken.epp_metric('epp_messages_total{kind="request_headers"}') == 0
        assert broken.decision_lines() == []
        assert " stream request_id=" not in broken.epp.log_text()
        wait_until(lambda: "speaks HTTP/1.1, not HTTP/2" in broken.epp.log_text(), what="the EPP to name it")
