"""Random frame sequences against one running EPP HTTP/2 server: whatever a client sends, the server
answers or ends the connection with GOAWAY, never hangs, never logs a traceback or an error, leaves no
stream open once the client is gone, and keeps serving a well-behaved grpcio client."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import hpack
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epp.h2requests import HEALTH_CHECK_PATH, PROCESS_PATH
from epp.h2server import H2GrpcServer
from epp.server import EppServer
from tests.epp.conftest import Mode, request_headers
from tests.epp.test_h2server_protocol import (
    ACK,
    GOAWAY,
    PING,
    SETTINGS,
    RawClient,
    assert_no_tracebacks,
    assert_serves_grpc,
    epp_state,
    frame,
    grpc_message,
    open_streams,
    request_fields,
    start_h2,
)
from tests.polling import wait_until_async

__all__ = ["epp_state"]  # the fixture, shared with the protocol tests
STREAM_IDS = st.sampled_from([0, 1, 1, 1, 3, 3, 5, 2, 7, 2**31 - 1])
MESSAGES = [
    request_headers(),
    request_headers(body_mode=Mode.FULL_DUPLEX_STREAMED),
    request_headers(body_mode=Mode.BUFFERED, end_of_stream=True),
    ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=b'{"model": "m"}', end_of_stream=True)),
    ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=b"part")),
    ext_proc.ProcessingRequest(request_trailers=ext_proc.HttpTrailers()),
    ext_proc.ProcessingRequest(response_headers=ext_proc.HttpHeaders()),
    ext_proc.ProcessingRequest(),
]
BLOCKS = [
    hpack.Encoder().encode(fields)
    for fields in (
        request_fields(),
        request_fields(HEALTH_CHECK_PATH),
        request_fields(PROCESS_PATH, grpc_timeout="20m"),
        request_fields("/other/Method"),
        request_fields(content_type="text/plain"),
        [("x-trailer", "1")],
    )
]


@st.composite
def payloads(draw: st.DrawFn, kind: int) -> bytes:
    structured: dict[int, st.SearchStrategy[bytes]] = {
        0x0: st.one_of(
            st.sampled_from([grpc_message(m.SerializeToString()) for m in MESSAGES]),
            st.binary(max_size=12).map(lambda b: grpc_message(b)),
        ),
        0x1: st.sampled_from(BLOCKS),
        0x3: st.integers(0, 15).map(lambda code: struct.pack(">I", code)),
        0x4: st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2**32 - 1)), max_size=3).map(
            lambda pairs: b"".join(struct.pack(">HI", k, v) for k, v in pairs)
        ),
        0x6: st.binary(min_size=8, max_size=8),
        0x8: st.integers(0, 2**31).map(lambda n: struct.pack(">I", n)),
        0x9: st.sampled_from(BLOCKS).map(lambda b: b[:3]),
    }
    choice = structured.get(kind)
    if choice is not None and draw(st.booleans()):
        return draw(choice)
    return draw(st.one_of(st.just(b""), st.binary(max_size=2), st.binary(max_size=24)))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([0x0, 0x0, 0x1, 0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0x9, 0xA]))
    flags = draw(st.sampled_from([0x0, 0x1, 0x4, 0x5, 0x8, 0x20, 0x25, 0xFF]))
    return frame(kind, flags, draw(STREAM_IDS), draw(payloads(kind)))


@pytest.fixture
async def h2_server(epp_state: EppServer) -> AsyncIterator[tuple[EppServer, H2GrpcServer, int]]:
    server, port = await start_h2(epp_state)
    try:
        yield epp_state, server, port
    finally:
        await server.stop(0.5)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=st.lists(frames(), max_size=12), settings_first=st.sampled_from([True, True, True, False]))
async def test_random_frames_never_break_the_server(
    h2_server: tuple[EppServer, H2GrpcServer, int],
    caplog: pytest.LogCaptureFixture,
    sequence: list[bytes],
    settings_first: bool,
) -> None:
    state, server, port = h2_server
    caplog.clear()  # each example answers for its own log records
    client = await RawClient.connect(port, settings=frame(SETTINGS, 0, 0) if settings_first else b"")
    try:
        client.send(*sequence, frame(PING, 0, 0, b"fuzz-end"))
        while True:  # bounded by RawClient's read timeout: a hang fails here
            got = await client.read_frame()
            if got is None or got[0] == GOAWAY:
                break
            if got[0] == PING and got[1] & ACK and got[3] == b"fuzz-end":
                break
    finally:
        await client.close()
    await wait_until_async(
        lambda: open_streams(state) == 0 and not server.connections, "the server to notice the close"
    )
    assert open_streams(state) == 0
    assert not server.connections
    assert_no_tracebacks(caplog)
    await assert_serves_grpc(port)
