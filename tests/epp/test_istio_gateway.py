"""The EPP behind the gateway istiod builds for an InferencePool, on a real Envoy (`tests.istio_gateway`).

The listener's ext_proc filter is inert (placeholder cluster, header modes SKIP); the route's
`ExtProcPerRoute` override names the EPP's `outbound|9002||...` cluster, streams bodies FULL_DUPLEX with
trailers SEND and fails open; the EPP serves TLS (a certificate from `certs`) with HTTP/2; the pool cluster
uses `override_host` on `envoy.lb` metadata and reports the served endpoint back to the EPP. Simulators,
the EPP and Envoy are real processes.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from epp.children import free_port, kill_child
from tests.epp.stack import HTTP_TIMEOUT, Sim, Stack, post, run_istio_stack
from tests.istio_gateway import EPP_CLUSTER, NO_RETRY_HEADER, POOL_CLUSTER, SUBSET_HEADER

pytestmark = pytest.mark.envoy

WAIT = 30.0  # seconds any condition below may take on a loaded machine
QUICK = [Sim("sim-a", 2.0, 4), Sim("sim-b", 2.0, 4), Sim("sim-c", 2.0, 4, engine="sglang")]


def wait_until(condition: Callable[[], bool], *, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def healthy(stack: Stack, name: str) -> float:
    return stack.sim_metric("epp_endpoint_healthy", name)


def all_healthy(stack: Stack) -> bool:
    return all(healthy(stack, name) == 1 for name in stack.sims)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Three quick simulators (one SGLang) and a slow one (1 slot, 1.5 s), a TLS EPP that lists one fallback
    and sheds at 2 waiting, Envoy in Istio's shape with a subset hint taken from a request header."""
    sims = [*QUICK, Sim("sim-slow", 1500.0, 1)]
    epp_args = ["--fallbacks", "1", "--shed-queue-depth", "2"]
    tmp = tmp_path_factory.mktemp("istio")
    gateway = {"subset_hint_header": True, "http1_trailers": True, "no_retry_route": True}
    with run_istio_stack(tmp, sims, epp_args=epp_args, **gateway) as stack:
        wait_until(lambda: all_healthy(stack), what="the first scrape of every simulator")
        yield stack


def test_requests_through_the_route_override_reach_every_quick_simulator_over_tls_and_http2(
    gateway: Stack,
) -> None:
    started = gateway.ext_proc("streams_started")
    decided = len(gateway.decision_lines())
    served_primary = gateway.epp_metric('epp_served_total{outcome="primary"}')
    answers = [gateway.send(prompt=f"p{i}") for i in range(24)]
    assert [a.status for a in answers] == [200] * 24
    assert {"sim-a", "sim-b", "sim-c"} <= set(Counter(a.served_by for a in answers))
    stats = gateway.envoy.stats()
    assert gateway.ext_proc("streams_started") - started == 24
    assert gateway.ext_proc("streams_failed") == 0
    assert gateway.ext_proc("failure_mode_allowed") == 0
    assert stats[f"cluster.{EPP_CLUSTER}.ssl.handshake"] >= 1
    assert stats[f"cluster.{EPP_CLUSTER}.upstream_cx_http2_total"] >= 1
    assert stats.get(f"cluster.{EPP_CLUSTER}.upstream_cx_protocol_error", 0) == 0
    wait_until(lambda: len(gateway.decision_lines()) - decided == 24, what="24 decision lines")
    picks = [line.split("endpoint=")[1].split()[0] for line in gateway.decision_lines()[decided:]]
    assert all(len(pick.split(",")) == 2 for pick in picks)  # the primary and one fallback
    assert all("model=sim-model" in line for line in gateway.decision_lines()[decided:])  # read from the body
    wait_until(
        lambda: gateway.epp_metric('epp_served_total{outcome="primary"}') - served_primary == 24,
        what="Envoy's served endpoint reported back for every request",
    )


def test_the_sglang_simulator_is_read_with_its_own_metric_names(gateway: Stack) -> None:
    score = gateway.sim_metric("epp_endpoint_score", "sim-c")
    assert not math.isnan(score)  # NaN would mean: no load metrics found under the default (vLLM) names


def test_load_spreads_away_from_a_loaded_simulator(gateway: Stack) -> None:
    slow_url = f"http://{gateway.sim_endpoint('sim-slow')}/v1/completions"
    holders = [threading.Thread(target=post, args=(slow_url, {"prompt": "hold"})) for _ in range(2)]
    for thread in holders:
        thread.start()
    try:
        wait_until(
            lambda: gateway.sim_metric("epp_endpoint_score", "sim-slow") >= 5,
            what="the EPP to see the slow simulator's queue",
        )
        answers = [gateway.send(prompt=f"q{i}") for i in range(18)]
    finally:
        for thread in holders:
            thread.join(timeout=30)
    served = Counter(a.served_by for a in answers)
    assert all(a.status == 200 for a in answers)
    assert all(served[name] > served["sim-slow"] for name in ("sim-a", "sim-b", "sim-c"))


def test_a_subset_hint_limits_the_pick_and_one_with_nothing_ready_gets_a_503_with_the_reason(
    gateway: Stack,
) -> None:
    only_b = {SUBSET_HEADER: gateway.sim_endpoint("sim-b")}
    assert {gateway.send(headers=only_b).served_by for _ in range(6)} == {"sim-b"}
    refused = gateway.send(headers={SUBSET_HEADER: f"127.0.0.1:{free_port()}"})
    assert refused.status == 503
    body = json.loads(refused.body)
    assert body["error"] == "no_endpoint_in_subset"
    assert "subset hint" in body["reason"]


def test_with_every_candidate_over_the_queue_threshold_the_epp_sheds_with_429(gateway: Stack) -> None:
    slow_url = f"http://{gateway.sim_endpoint('sim-slow')}/v1/completions"
    holders = [threading.Thread(target=post, args=(slow_url, {"prompt": "hold"})) for _ in range(3)]
    for thread in holders:
        thread.start()
    try:
        wait_until(  # 1 running, 2 waiting: score 4 x 2 + 1 + KV 8
            lambda: gateway.sim_metric("epp_endpoint_score", "sim-slow") >= 17,
            what="the EPP to see two requests waiting at the slow simulator",
        )
        shed = gateway.send(headers={SUBSET_HEADER: gateway.sim_endpoint("sim-slow")})
        elsewhere = gateway.send()
    finally:
        for thread in holders:
            thread.join(timeout=30)
    assert shed.status == 429
    assert json.loads(shed.body)["error"] == "request_shed"
    assert elsewhere.status == 200  # other candidates are below the threshold
    assert gateway.epp_metric('epp_decisions_total{outcome="shed"}') >= 1


def send_chunked_with_trailers(port: int, chunks: list[bytes], *, retries: bool = False) -> tuple[int, bytes]:
    """HTTP/1.1 POST with a chunked body and a trailer, over a raw socket (urllib sends no trailers)."""
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: llm.example.com\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nTrailer: x-body-digest\r\nConnection: close\r\n"
    )
    head += b"\r\n" if retries else f"{NO_RETRY_HEADER}: 1\r\n\r\n".encode()
    body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
    with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT) as conn:
        conn.sendall(head + body + b"0\r\nx-body-digest: test\r\n\r\n")
        reply = b""
        while data := conn.recv(65536):
            reply += data
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split()[1]), rest


def test_full_duplex_bodies_in_many_chunks_and_request_trailers_come_through_whole(gateway: Stack) -> None:
    prompt = "x" * 200_000
    document = json.dumps({"model": "chunked-model", "prompt": prompt}).encode()
    chunks = [document[i : i + 4096] for i in range(0, len(document), 4096)]
    status, reply = send_chunked_with_trailers(gateway.envoy.listener_port(), chunks)
    assert status == 200, reply[-300:]  # the simulator answers 200 only to a body that parses as JSON
    wait_until(
        lambda: any("model=chunked-model" in line for line in gateway.stream_lines()),
        what="the stream line of the chunked request",
    )
    line = next(line for line in gateway.stream_lines() if "model=chunked-model" in line)
    assert "request_trailers" in line
    assert "served=127.0.0.1:" in line


def test_envoy_sends_a_full_duplex_body_twice_when_the_route_retries_and_the_request_has_trailers(
    gateway: Stack,
) -> None:
    """Envoy's bug, not the EPP's (envoyproxy/envoy#45470): the router keeps a copy of the body for retries
    and sends it again when the EPP's trailers answer resumes the filter chain. Istio's routes retry by
    default. When this starts failing, Envoy has fixed it and the no-retry route above can go."""
    document = json.dumps({"model": "twice-model", "prompt": "x"}).encode()
    status, reply = send_chunked_with_trailers(gateway.envoy.listener_port(), [document], retries=True)
    assert status == 400
    assert b"the request body is not JSON" in reply  # the simulator got the document twice, back to back


# ---- gateways of their own: these tests stop or kill parts


def test_a_killed_simulator_is_drained_once_the_epp_notices(tmp_path: Path) -> None:
    with run_istio_stack(tmp_path, QUICK, epp_args=["--fallbacks", "1"]) as stack:
        wait_until(lambda: all_healthy(stack), what="the first scrape of every simulator")
        kill_child(stack.sims["sim-b"])
        wait_until(
            lambda: healthy(stack, "sim-b") == 0, what="the EPP to mark the killed simulator unhealthy"
        )
        decided = len(stack.decision_lines())
        answers = [stack.send(prompt=f"d{i}") for i in range(12)]
        wait_until(lambda: len(stack.decision_lines()) - decided == 12, what="12 decision lines")
        picks = [line.split("endpoint=")[1].split()[0] for line in stack.decision_lines()[decided:]]
    assert [a.status for a in answers] == [200] * 12
    assert "sim-b" not in {a.served_by for a in answers}
    assert not any(stack.sim_endpoint("sim-b") in pick for pick in picks)  # neither primary nor fallback


def test_before_the_epp_notices_the_proxy_retries_on_the_listed_fallback(tmp_path: Path) -> None:
    """Without scraping the EPP never notices a dead simulator: endpoints take turns, and a request whose
    primary is the dead one is retried by Envoy on the fallback the EPP listed (override_host walks it)."""
    epp_args = ["--fallbacks", "1"]
    with run_istio_stack(tmp_path, QUICK, epp_args=epp_args, scrape_interval=0) as stack:
        kill_child(stack.sims["sim-b"])
        answers = [stack.send(prompt=f"r{i}") for i in range(6)]
        wait_until(
            lambda: stack.epp_metric('epp_served_total{outcome="fallback"}') == 2,
            what="the two retried requests reported as served by their fallback",
        )
        stats = stack.envoy.stats()
        primary = stack.epp_metric('epp_served_total{outcome="primary"}')
    assert [a.status for a in answers] == [200] * 6
    assert "sim-b" not in {a.served_by for a in answers}
    assert primary == 4
    assert stats[f"cluster.{POOL_CLUSTER}.upstream_rq_retry"] == 2
    assert stats[f"cluster.{POOL_CLUSTER}.upstream_cx_connect_fail"] == 2


def test_fail_open_per_route_serves_by_round_robin_when_the_epp_service_has_no_ready_endpoint(
    tmp_path: Path,
) -> None:
    """FailOpen with the EPP's pods gone (Istio's EDS for the EPP Service is empty): every request passes
    ext_proc without a pick and the pool's fallback round robin serves it. (A dead EPP process that is still
    an endpoint is another story: FULL_DUPLEX_STREAMED can fail open only before the first body chunk went to
    the EPP, envoyproxy/envoy#41276, so those requests end in 500.)"""
    with run_istio_stack(tmp_path, QUICK, epp_ready=False) as stack:
        answers = [stack.send(prompt=f"o{i}") for i in range(3)]
        allowed = stack.ext_proc("failure_mode_allowed")
        decided = stack.epp_metric('epp_decisions_total{outcome="picked"}')
    assert [a.status for a in answers] == [200] * 3
    assert len({a.served_by for a in answers}) == 3  # nobody picked: the fallback round robin did
    assert allowed == 3
    assert decided == 0


def epp_health_flags(stack: Stack) -> str:
    for line in stack.envoy.get("/clusters").splitlines():
        if line.startswith(EPP_CLUSTER + "::") and "::health_flags::" in line:
            return line.rsplit("::", 1)[1]
    return ""


@pytest.mark.parametrize("ready", [True, False], ids=["ready", "discovery-not-listed"])
def test_envoy_health_checks_the_epp_readiness(tmp_path: Path, ready: bool) -> None:
    """Envoy's active gRPC health check (over the EPP cluster's TLS) asks for the ext_proc service: SERVING
    once the endpoints are known, NOT_SERVING while discovery has not listed them (Envoy marks the host
    failed). The EPP's separate plaintext health port answers the same (test_processor_gie)."""
    epp_args: list[str] = []
    if not ready:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(_dead_kubeconfig())
        epp_args = ["--namespace", "models", "--service", "llm", "--kubeconfig", str(kubeconfig)]
    health = "envoy.service.ext_proc.v3.ExternalProcessor"
    with run_istio_stack(tmp_path, QUICK[:1], epp_args=epp_args, epp_health_check=health) as stack:
        outcome = "success" if ready else "failure"
        wait_until(
            lambda: stack.envoy.stats().get(f"cluster.{EPP_CLUSTER}.health_check.{outcome}", 0) >= 2,
            what=f"two health check {outcome}s",
        )
        flags = epp_health_flags(stack)
        if ready:
            wait_until(lambda: all_healthy(stack), what="the first scrape of the simulator")
        answer = stack.send() if ready else None
    if ready:
        assert flags == "healthy"
        assert answer is not None
        assert answer.status == 200
    else:
        assert "/failed_active_hc" in flags


def _dead_kubeconfig() -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )
