"""The ext_proc Process stream over real gRPC (grpcio client and server on loopback), every message kind."""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.server import EppServer, running_epp
from tests.epp.conftest import STATIC_NAMES, Mode, destination, exchange, make_settings, request_headers
from tests.polling import wait_until_async


def body(data: bytes, *, end: bool, response: bool = False) -> ext_proc.ProcessingRequest:
    chunk = ext_proc.HttpBody(body=data, end_of_stream=end)
    return ext_proc.ProcessingRequest(**{"response_body" if response else "request_body": chunk})


def sample_value(server: EppServer, name: str, labels: dict[str, str]) -> float:
    value = server.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def wait_for_sample(server: EppServer, name: str, labels: dict[str, str], want: float) -> float:
    """The sample's value once it has reached `want` (the server counts a stream after it ends)."""
    await wait_until_async(lambda: sample_value(server, name, labels) >= want, f"{name}{labels} >= {want}")
    return sample_value(server, name, labels)


async def test_request_headers_get_the_destination_header_metadata_and_route_cache_clearing(
    epp: EppServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epp")
    answers = await exchange(epp.port, [request_headers(request_id="abc-1")])
    assert len(answers) == 1
    answer = answers[0]
    assert answer.WhichOneof("response") == "request_headers"
    chosen = destination(answer)
    assert chosen in STATIC_NAMES
    assert answer.request_headers.response.clear_route_cache is True
    lb = answer.dynamic_metadata.fields["envoy.lb"].struct_value
    assert lb.fields["x-gateway-destination-endpoint"].string_value == chosen
    decisions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decision ")]
    assert len(decisions) == 1
    assert "request_id=abc-1" in decisions[0]
    assert f"endpoint={chosen}" in decisions[0]
    assert "path=/v1/completions" in decisions[0]


async def test_endpoints_without_metrics_take_turns(epp: EppServer) -> None:
    chosen = [
        destination((await exchange(epp.port, [request_headers(request_id=f"r{i}")]))[0]) for i in range(6)
    ]
    assert set(chosen) == STATIC_NAMES
    assert chosen[:3] == chosen[3:]


async def test_no_endpoint_answers_an_immediate_503_with_a_json_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="epp")
    async with running_epp(make_settings(())) as server:
        answers = await exchange(server.port, [request_headers(request_id="lonely")])
        assert sample_value(server, "epp_decisions_total", {"outcome": "no_endpoint"}) == 1
    assert [a.WhichOneof("response") for a in answers] == ["immediate_response"]
    immediate = answers[0].immediate_response
    assert immediate.status.code == 503
    reason = json.loads(immediate.body)
    assert reason["error"] == "no_healthy_endpoint"
    assert reason["request_id"] == "lonely"
    assert any("outcome=no_endpoint" in r.getMessage() for r in caplog.records)


PASS_THROUGH = [
    pytest.param(body(b"{}", end=True), "request_body", id="request-body"),
    pytest.param(
        ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers()),
        "request_trailers",
        id="req-trailers",
    ),
    pytest.param(
        ext_proc.ProcessingRequest(response_headers=ext_proc.HttpHeaders()),
        "response_headers",
        id="resp-headers",
    ),
    pytest.param(body(b"ok", end=True, response=True), "response_body", id="response-body"),
    pytest.param(
        ext_proc.ProcessingRequest(response_trailers=ext_proc.HttpTrailers()),
        "response_trailers",
        id="resp-trailers",
    ),
]


@pytest.mark.parametrize(("message", "kind"), PASS_THROUGH)
async def test_every_later_message_kind_is_answered_without_changes(
    epp: EppServer, message: ext_proc.ProcessingRequest, kind: str
) -> None:
    answers = await exchange(epp.port, [request_headers(), message])
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", kind]
    assert destination(answers[0]) in STATIC_NAMES
    later = answers[1]
    assert later == ext_proc.ProcessingResponse(**{kind: getattr(later, kind)})
    assert later.ByteSize() == len(later.SerializeToString())
    assert not later.HasField("dynamic_metadata")


@pytest.mark.parametrize(
    "kind",
    ["response_headers", "response_body", "response_trailers"],
    ids=["response-headers", "response-body", "response-trailers"],
)
async def test_response_phases_are_logged_as_unexpected_for_a_headers_only_epp(
    epp: EppServer, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.INFO, logger="epp")
    message = {
        "response_headers": ext_proc.ProcessingRequest(response_headers=ext_proc.HttpHeaders()),
        "response_body": body(b"x", end=True, response=True),
        "response_trailers": ext_proc.ProcessingRequest(response_trailers=ext_proc.HttpTrailers()),
    }[kind]
    await exchange(epp.port, [request_headers(), message])
    unexpected = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unexpected message")]
    assert len(unexpected) == 1
    assert f"kind={kind}" in unexpected[0]
    assert sample_value(epp, "epp_unexpected_messages_total", {"kind": kind}) == 1


async def test_a_stream_that_starts_with_response_headers_names_the_mis_set_mode(
    epp: EppServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epp")
    answers = await exchange(epp.port, [ext_proc.ProcessingRequest(response_headers=ext_proc.HttpHeaders())])
    assert [a.WhichOneof("response") for a in answers] == ["response_headers"]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "request_header_mode is not SEND" in text
    assert "decision " not in text


async def test_an_empty_message_is_logged_and_not_answered(
    epp: EppServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epp")
    answers = await exchange(epp.port, [ext_proc.ProcessingRequest(), request_headers()])
    assert [a.WhichOneof("response") for a in answers] == ["request_headers"]
    assert any("kind=empty" in r.getMessage() for r in caplog.records)


async def test_buffered_body_decides_on_the_body_and_reads_the_model(
    epp: EppServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epp")
    payload = json.dumps({"model": "llama-3", "prompt": "hi"}).encode()
    answers = await exchange(epp.port, [request_headers(body_mode=Mode.BUFFERED), body(payload, end=True)])
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body"]
    assert destination(answers[0]) == ""
    assert destination(answers[1]) in STATIC_NAMES
    assert answers[1].request_body.response.clear_route_cache is True
    assert any(
        r.getMessage().startswith("decision ") and "model=llama-3" in r.getMessage() for r in caplog.records
    )


async def test_full_duplex_streamed_answers_headers_after_the_body_and_returns_the_body_whole(
    epp: EppServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epp")
    messages = [
        request_headers(body_mode=Mode.FULL_DUPLEX_STREAMED),
        body(b'{"model": "mis', end=False),
        body(b'tral", "prompt": "x"}', end=True),
    ]
    answers = await exchange(epp.port, messages)
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body"]
    assert destination(answers[0]) in STATIC_NAMES
    streamed = answers[1].request_body.response.body_mutation.streamed_response
    assert streamed.body == b'{"model": "mistral", "prompt": "x"}'
    assert streamed.end_of_stream is True
    assert any("model=mistral" in r.getMessage() for r in caplog.records)


async def test_full_duplex_streamed_with_trailers_decides_on_the_trailers(epp: EppServer) -> None:
    messages = [
        request_headers(body_mode=Mode.FULL_DUPLEX_STREAMED),
        body(b'{"model": "m"}', end=False),
        ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers()),
    ]
    answers = await exchange(epp.port, messages)
    kinds = [a.WhichOneof("response") for a in answers]
    assert kinds == ["request_headers", "request_body", "request_trailers"]
    assert destination(answers[0]) in STATIC_NAMES
    assert answers[1].request_body.response.body_mutation.streamed_response.body == b'{"model": "m"}'


async def test_a_request_without_body_is_decided_on_headers_in_every_mode(epp: EppServer) -> None:
    answers = await exchange(
        epp.port, [request_headers(end_of_stream=True, body_mode=Mode.FULL_DUPLEX_STREAMED)]
    )
    assert [a.WhichOneof("response") for a in answers] == ["request_headers"]
    assert destination(answers[0]) in STATIC_NAMES


async def test_a_stream_closed_without_messages_is_logged_as_completed(
    epp: EppServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epp")
    assert await exchange(epp.port, []) == []
    assert await wait_for_sample(epp, "epp_streams_total", {"outcome": "completed"}, 1) == 1
    assert any(
        r.getMessage().startswith("stream ") and "outcome=completed" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    ("messages", "answers_before_cancel"),
    [
        pytest.param([], 0, id="before-any-message"),
        pytest.param(
            [request_headers(body_mode=Mode.FULL_DUPLEX_STREAMED)], 0, id="while-the-epp-holds-headers"
        ),
    ],
)
async def test_a_stream_cancelled_before_its_decision_is_logged_as_cancelled(
    epp: EppServer,
    caplog: pytest.LogCaptureFixture,
    messages: list[ext_proc.ProcessingRequest],
    answers_before_cancel: int,
    transport: str,
) -> None:
    caplog.set_level(logging.INFO, logger="epp")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.port}") as channel:
        call = ext_proc_grpc.ExternalProcessorStub(channel).Process(timeout=10)
        for message in messages:
            await call.write(message)
        for _ in range(answers_before_cancel):
            assert destination(await call.read()) in STATIC_NAMES
        await wait_for_sample(epp, "epp_streams_open", {}, 1)  # the server has the call
        assert sample_value(epp, "epp_streams_open", {}) == 1
        call.cancel()
        assert await wait_for_sample(epp, "epp_streams_total", {"outcome": "cancelled"}, 1) == 1
    assert sample_value(epp, "epp_streams_open", {}) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream ")]
    assert len(lines) == 1
    assert "outcome=cancelled" in lines[0]


async def test_a_stream_reset_after_its_decision_is_its_normal_end(
    epp: EppServer, caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    """Envoy resets each ext_proc stream once it has what it needs: that is no failure to report."""
    caplog.set_level(logging.INFO, logger="epp")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.port}") as channel:
        call = ext_proc_grpc.ExternalProcessorStub(channel).Process(timeout=10)
        await call.write(request_headers())
        assert destination(await call.read()) in STATIC_NAMES
        call.cancel()
        assert await wait_for_sample(epp, "epp_streams_total", {"outcome": "completed"}, 1) == 1
    assert sample_value(epp, "epp_streams_total", {"outcome": "cancelled"}) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream ")]
    assert len(lines) == 1
    assert "outcome=completed" in lines[0]


async def test_the_grpc_health_service_reports_serving(epp: EppServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor"):
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_decisions_are_counted_and_timed_in_prometheus_metrics(epp: EppServer) -> None:
    for i in range(3):
        await exchange(epp.port, [request_headers(request_id=f"m{i}")])
    assert sample_value(epp, "epp_decisions_total", {"outcome": "picked"}) == 3
    assert sample_value(epp, "epp_decision_duration_seconds_count", {}) == 3
    assert sample_value(epp, "epp_messages_total", {"kind": "request_headers"}) == 3


async def test_header_values_sent_in_the_legacy_value_field_are_read(
    epp: EppServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epp")
    message = ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(
            headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":path", value="/legacy")])
        )
    )
    await exchange(epp.port, [message])
    assert any("path=/legacy" in r.getMessage() for r in caplog.records)
