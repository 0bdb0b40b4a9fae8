"""Flow control of the EPP's HTTP/2 server in both directions: large request bodies from a real grpcio
client (FULL_DUPLEX_STREAMED and BUFFERED), a client that grants the server only a tiny window and reads
slowly, a client that sends without reading (the server stops granting it window and resets it once it
sends past that), and the per-connection bound on partial messages."""

from __future__ import annotations

import struct

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from epp.h2requests import GRPC_RESOURCE_EXHAUSTED
from epp.h2server import FLOW_CONTROL_ERROR, H2Settings
from epp.server import EppServer
from tests.epp.conftest import STATIC_NAMES, Mode, destination, request_headers
from tests.epp.test_h2server_protocol import (
    DATA,
    END_STREAM,
    HEADERS,
    WINDOW_UPDATE,
    RawClient,
    epp_state,
    frame,
    grpc_message,
    open_streams,
    request_fields,
    settings_frame,
    start_h2,
)

__all__ = ["epp_state"]  # the fixture, shared with the protocol tests


def body_messages(payload: bytes, chunk: int) -> list[ext_proc.ProcessingRequest]:
    pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)]
    return [
        ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=p, end_of_stream=i == len(pieces) - 1))
        for i, p in enumerate(pieces)
    ]


@pytest.mark.parametrize(
    ("mode", "chunk"),
    [
        pytest.param(Mode.FULL_DUPLEX_STREAMED, 64 * 1024, id="full-duplex-3MiB-in-64KiB-chunks"),
        pytest.param(Mode.FULL_DUPLEX_STREAMED, 3 * 1024 * 1024 + 64, id="full-duplex-3MiB-in-one-message"),
        pytest.param(Mode.BUFFERED, 3 * 1024 * 1024 + 64, id="buffered-3MiB"),
    ],
)
async def test_a_large_body_from_grpcio_crosses_both_windows_whole(
    epp_state: EppServer, mode: int, chunk: int
) -> None:
    """3 MiB is more than three stream windows and than grpcio's initial window: both sides must grant
    window as they consume, or the call stalls."""
    server, port = await start_h2(epp_state)
    payload = b'{"model": "big", "prompt": "' + bytes(range(48, 58)) * (3 * 1024 * 1024 // 10) + b'"}'
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            messages = [request_headers(body_mode=mode), *body_messages(payload, chunk)]
            call = ext_proc_grpc.ExternalProcessorStub(channel).Process(iter(messages), timeout=60)
            answers = [a async for a in call]
    finally:
        await server.stop(0.5)
    if mode == Mode.FULL_DUPLEX_STREAMED:
        assert destination(answers[0]) in STATIC_NAMES
        echoed = b"".join(a.request_body.response.body_mutation.streamed_response.body for a in answers[1:])
        assert echoed == payload
    else:
        assert destination(answers[-1]) in STATIC_NAMES
    assert open_streams(epp_state) == 0


async def test_a_client_with_a_tiny_window_that_reads_slowly_gets_the_whole_answer(
    epp_state: EppServer,
) -> None:
    """The server splits an answer larger than the client's window into window-sized DATA frames and
    continues as WINDOW_UPDATEs arrive (waiting for the whole message to fit would never end)."""
    server, port = await start_h2(epp_state)
    client = await RawClient.connect(port, settings=settings_frame(initial_window_size=1000))
    body = b'{"model": "m", "prompt": "' + b"y" * 200_000 + b'"}'
    messages = [request_headers(body_mode=Mode.FULL_DUPLEX_STREAMED), *body_messages(body, 300_000)]
    wire = b"".join(grpc_message(m.SerializeToString()) for m in messages)
    try:
        client.send(client.headers(1, request_fields()))
        client.send(*(frame(DATA, 0, 1, wire[i : i + 16384]) for i in range(0, len(wire), 16384)))
        client.send(frame(DATA, END_STREAM, 1))
        client.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30)))
        received = bytearray()
        while True:
            kind, flags, _, payload = await client.read_until_any((DATA, HEADERS), 1)
            if kind == HEADERS and flags & END_STREAM:
                break
            if kind == DATA:
                assert len(payload) <= 1000
                received += payload
                client.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", len(payload))))
    finally:
        await client.close()
        await server.stop(0.5)
    answers = []
    while received:
        length = int.from_bytes(received[1:5], "big")
        answers.append(ext_proc.ProcessingResponse.FromString(bytes(received[5 : 5 + length])))
        del received[: 5 + length]
    assert destination(answers[0]) in STATIC_NAMES
    assert answers[1].request_body.response.body_mutation.streamed_response.body == body


async def test_a_client_that_sends_without_reading_is_stopped_by_flow_control(epp_state: EppServer) -> None:
    """Every body chunk is echoed back, and the client grants no window for the echoes: the server holds
    the stream's window back while the echoes pile up, and resets the stream when the client sends past
    it. The echoes waiting for window never exceed about one stream window."""
    settings = H2Settings(stream_window=65535)
    server, port = await start_h2(epp_state, settings)
    client = await RawClient.connect(port, settings=settings_frame(initial_window_size=0))
    first = request_headers(body_mode=Mode.FULL_DUPLEX_STREAMED)
    first.protocol_config.response_body_mode = Mode.FULL_DUPLEX_STREAMED
    chunk = ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=b"z" * 10_000))
    end = ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=b"{}", end_of_stream=True))
    try:
        client.send(
            client.headers(1, request_fields()), frame(DATA, 0, 1, grpc_message(first.SerializeToString()))
        )
        client.send(frame(DATA, 0, 1, grpc_message(end.SerializeToString())))
        client.send(*(frame(DATA, 0, 1, grpc_message(chunk.SerializeToString())) for _ in range(100)))  # 1 MB
        assert await client.reset_code(1) == FLOW_CONTROL_ERROR
        granted = sum(
            struct.unpack(">I", p)[0] for k, _, s, p in client.seen if k == WINDOW_UPDATE and s == 1
        )
        await client.ping_round_trip()
    finally:
        await client.close()
        await server.stop(0.5)
    assert granted <= 2 * settings.stream_window
    assert open_streams(epp_state) == 0


async def test_partial_messages_beyond_the_connection_bound_end_their_call(epp_state: EppServer) -> None:
    server, port = await start_h2(epp_state, H2Settings(max_buffered=150_000))
    client = await RawClient.connect(port)
    announce = b"\x00" + (1 << 20).to_bytes(4, "big")  # a 1 MiB message, of which 60 kB arrive
    try:
        for stream_id in (1, 3, 5):
            client.send(client.headers(stream_id, request_fields()))
            client.send(frame(DATA, 0, stream_id, announce + b"a" * 16000))
            client.send(*(frame(DATA, 0, stream_id, b"a" * 16000) for _ in range(3)))
        answer = await client.trailers(5)
        await client.ping_round_trip()
    finally:
        await client.close()
        await server.stop(0.5)
    assert answer["grpc-status"] == str(GRPC_RESOURCE_EXHAUSTED)
    assert "buffer" in answer["grpc-message"]
    assert [s for k, _, s in client.summary() if k == HEADERS] == [5]  # streams 1 and 3 go on
