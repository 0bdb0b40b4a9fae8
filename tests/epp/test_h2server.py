"""The EPP's HTTP/2 server at the frame level, over a raw loopback socket (what a gRPC client library
would hide): settings and ping acknowledgements, the answer to an HTTP/1.1 client, and GOAWAY."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from epp.h2server import PREFACE
from epp.server import EppServer, running_epp
from tests.epp.conftest import STATIC, make_settings
from tests.epp.test_h2server_protocol import GOAWAY, PING, SETTINGS, WINDOW_UPDATE, frame


async def read_frames(reader: asyncio.StreamReader, count: int) -> list[tuple[int, int, int, bytes]]:
    frames = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readexactly(9), timeout=10)
        length = int.from_bytes(head[:3], "big")
        payload = await asyncio.wait_for(reader.readexactly(length), timeout=10)
        frames.append((head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload))
    return frames


@pytest.fixture
async def h2_epp() -> AsyncIterator[EppServer]:
    async with running_epp(make_settings(STATIC, transport="h2")) as server:
        yield server


async def test_the_server_sends_its_settings_and_acknowledges_settings_and_pings(h2_epp: EppServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", h2_epp.port)
    try:
        writer.write(PREFACE + frame(SETTINGS, 0, 0) + frame(PING, 0, 0, b"12345678"))
        await writer.drain()
        frames = await read_frames(reader, 4)
    finally:
        writer.close()
    kinds = [(kind, flags) for kind, flags, _, _ in frames]
    assert kinds == [(SETTINGS, 0), (WINDOW_UPDATE, 0), (SETTINGS, 1), (PING, 1)]
    settings = dict(struct.iter_unpack(">HI", frames[0][3]))
    assert settings[0x1] == 4096  # the default HPACK table: clients may shrink it, never grow it
    assert frames[3][3] == b"12345678"


async def test_an_http1_client_gets_a_goaway_that_names_the_missing_http2(
    h2_epp: EppServer, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", h2_epp.port)
    try:
        writer.write(
            b"POST /envoy.service.ext_proc.v3.ExternalProcessor/Process HTTP/1.1\r\nHost: epp\r\n\r\n"
        )
        await writer.drain()
        frames = await read_frames(reader, 3)
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # then the server closes
    finally:
        writer.close()
    kind, _, _, payload = frames[2]
    assert kind == GOAWAY
    assert struct.unpack(">II", payload[:8])[1] == 0x1  # PROTOCOL_ERROR
    assert b"speaks HTTP/1.1, not HTTP/2" in payload[8:]
    assert any("speaks HTTP/1.1" in r.getMessage() for r in caplog.records)


async def test_a_client_goaway_closes_an_idle_connection(h2_epp: EppServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", h2_epp.port)
    try:
        writer.write(PREFACE + frame(SETTINGS, 0, 0) + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
        await writer.drain()
        await read_frames(reader, 3)
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""
    finally:
        writer.close()
