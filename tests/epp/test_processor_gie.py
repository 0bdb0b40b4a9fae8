"""The GIE endpoint-picker protocol over real gRPC, both transports: subset hints, fallbacks, 429, served,
health services."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.children import free_port
from epp.discovery import KubeDiscoverySettings
from epp.picker import PickerSettings
from epp.scorer import LoadSample
from epp.server import EppServer, running_epp
from tests.epp.conftest import (
    STATIC,
    STATIC_NAMES,
    Mode,
    destination,
    exchange,
    make_settings,
    request_headers,
)

SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"


def with_subset(message: ext_proc.ProcessingRequest, *entries: str) -> ext_proc.ProcessingRequest:
    value = struct_pb2.Value()
    value.list_value.values.extend(struct_pb2.Value(string_value=e) for e in entries)
    message.metadata_context.filter_metadata[SUBSET_NAMESPACE].fields[SUBSET_KEY].CopyFrom(value)
    return message


def response_headers(served: str | None) -> ext_proc.ProcessingRequest:
    message = ext_proc.ProcessingRequest(response_headers=ext_proc.HttpHeaders())
    if served is not None:
        lb = message.metadata_context.filter_metadata["envoy.lb"]
        lb.update({"x-gateway-destination-endpoint-served": served})
    return message


def lb_value(answer: ext_proc.ProcessingResponse) -> str:
    lb = answer.dynamic_metadata.fields["envoy.lb"].struct_value
    return str(lb.fields["x-gateway-destination-endpoint"].string_value)


def sample(server: EppServer, name: str, labels: dict[str, str]) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_subset_hint_limits_the_pick_to_its_endpoints(epp: EppServer) -> None:
    second = str(STATIC[1])
    for i in range(4):
        answers = await exchange(epp.port, [with_subset(request_headers(request_id=f"s{i}"), second)])
        assert destination(answers[0]) == second


async def test_a_subset_hint_with_no_eligible_endpoint_gets_an_immediate_503_with_the_reason(
    epp: EppServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epp")
    for entries, says in [(("10.9.9.9:8000",), "10.9.9.9:8000"), ((), "lists no endpoint")]:
        answers = await exchange(epp.port, [with_subset(request_headers(request_id="sub"), *entries)])
        assert [a.WhichOneof("response") for a in answers] == ["immediate_response"]
        immediate = answers[0].immediate_response
        assert immediate.status.code == 503
        reason = json.loads(immediate.body)
        assert reason["error"] == "no_endpoint_in_subset"
        assert says in reason["reason"]
    assert sample(epp, "epp_decisions_total", {"outcome": "no_endpoint"}) == 2
    assert any(
        "outcome=no_endpoint" in r.getMessage() and "reason=" in r.getMessage() for r in caplog.records
    )


async def test_fallbacks_ride_in_the_header_and_the_metadata_with_the_same_value(transport: str) -> None:
    settings = make_settings(STATIC, transport=transport)
    settings = dataclasses.replace(settings, picker=PickerSettings(stale_after=0, fallbacks=2))
    async with running_epp(settings) as server:
        answers = await exchange(server.port, [request_headers()])
    value = destination(answers[0])
    assert value == lb_value(answers[0])
    listed = value.split(",")
    assert len(listed) == 3
    assert set(listed) == STATIC_NAMES


async def served_exchange(port: int, served_from: Callable[[list[str]], str], request_id: str) -> list[str]:
    """One stream as Envoy runs it under Istio's override: decide on the headers, then report the served
    endpoint (chosen from the pick by `served_from`) on the response headers. Returns the pick."""
    first = request_headers(request_id=request_id, end_of_stream=True, body_mode=Mode.FULL_DUPLEX_STREAMED)
    first.protocol_config.response_body_mode = Mode.FULL_DUPLEX_STREAMED
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = ext_proc_grpc.ExternalProcessorStub(channel).Process(timeout=10)
        await call.write(first)
        pick = destination(await call.read()).split(",")
        await call.write(response_headers(served_from(pick)))
        assert (await call.read()).WhichOneof("response") == "response_headers"
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
    return pick


async def test_the_served_endpoint_is_counted_against_the_pick_and_logged_with_the_stream(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epp")
    settings = make_settings(STATIC, transport=transport)
    settings = dataclasses.replace(settings, picker=PickerSettings(stale_after=0, fallbacks=1))
    async with running_epp(settings) as server:
        picks = [
            await served_exchange(server.port, lambda pick: pick[0], "as-picked"),
            await served_exchange(server.port, lambda pick: pick[1], "retried"),
            await served_exchange(server.port, lambda _: "10.9.9.9:1", "elsewhere"),
        ]
        counts = {
            k: sample(server, "epp_served_total", {"outcome": k}) for k in ("primary", "fallback", "other")
        }
        unexpected = sample(server, "epp_unexpected_messages_total", {"kind": "response_headers"})
    assert counts == {"primary": 1, "fallback": 1, "other": 1}
    assert unexpected == 0  # response phases are on purpose when the response body is streamed
    lines = {
        line.split("request_id=")[1].split()[0]: line
        for line in (r.getMessage() for r in caplog.records)
        if line.startswith("stream ")
    }
    assert f"served={picks[0][0]} " in lines["as-picked"]
    assert f"served={picks[1][1]} " in lines["retried"]
    assert "served=10.9.9.9:1 " in lines["elsewhere"]


async def test_shedding_answers_429_with_the_reason(transport: str) -> None:
    settings = make_settings(STATIC[:1], transport=transport)
    settings = dataclasses.replace(settings, picker=PickerSettings(stale_after=0, shed_queue_depth=2))
    async with running_epp(settings) as server:
        server.picker.record_sample(STATIC[0], LoadSample(waiting=2, running=4, kv_cache_usage=0.5))
        answers = await exchange(server.port, [request_headers(request_id="shed-me")])
        shed = sample(server, "epp_decisions_total", {"outcome": "shed"})
    immediate = answers[0].immediate_response
    assert immediate.status.code == 429
    body = json.loads(immediate.body)
    assert (body["error"], body["request_id"]) == ("request_shed", "shed-me")
    assert shed == 1


async def health(port: int, service: str) -> int | str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
        return int(answer.status)


SERVICES = ("liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor", "")


async def test_the_health_port_serves_the_protocol_services_once_the_endpoints_are_known() -> None:
    settings = dataclasses.replace(make_settings(STATIC), health_port=0)
    async with running_epp(settings) as server:
        statuses = [await health(server.health_port, s) for s in SERVICES]
        unknown = await health(server.health_port, "no.such.Service")
    assert statuses == [1, 1, 1, 1]
    assert unknown == "NOT_FOUND"


@pytest.mark.parametrize("transport", ["grpcio", "h2"], ids=["grpcio", "h2"])
async def test_an_epp_whose_discovery_has_not_listed_yet_is_alive_but_not_serving(
    tmp_path: Path, transport: str
) -> None:
    """Discovery against an API server that never answers: readiness stays NOT_SERVING on both ports,
    whichever transport serves the main port."""
    unreachable = KubeDiscoverySettings(
        namespace="models", service="llm", kubeconfig=str(_dead_kubeconfig(tmp_path))
    )
    settings = dataclasses.replace(
        make_settings((), transport=transport), discovery=unreachable, health_port=0
    )
    async with running_epp(settings) as server:
        on_health_port = [await health(server.health_port, s) for s in SERVICES]
        on_main_port = [await health(server.port, s) for s in SERVICES]
    assert on_health_port == [1, 2, 2, 2]
    assert on_main_port == [1, 2, 2, 2]


def _dead_kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(config))
    return path
