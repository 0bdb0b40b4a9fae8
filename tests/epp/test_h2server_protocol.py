"""The EPP's HTTP/2 server against crafted frames on a raw loopback socket: every protocol error ends the
connection with GOAWAY and the code RFC 9113 names, stream errors reset only their stream, gRPC-level
refusals are trailers-only answers, and the limits (streams, header lists, messages, resets, floods) hold.
After each case a well-behaved grpcio client still gets its decision from the same server."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Sequence

import hpack
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from epp.h2requests import (
    GRPC_DEADLINE_EXCEEDED,
    GRPC_INTERNAL,
    GRPC_RESOURCE_EXHAUSTED,
    GRPC_UNIMPLEMENTED,
    HEALTH_CHECK_PATH,
    PROCESS_PATH,
    hpack_int,
    hpack_string,
)
from epp.h2server import (
    CANCEL,
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    H2GrpcServer,
    H2Settings,
)
from epp.server import EppServer
from tests.epp.conftest import (
    STATIC,
    STATIC_NAMES,
    Mode,
    destination,
    exchange,
    make_settings,
    request_headers,
)
from tests.polling import wait_until_async

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0x0, 0x1, 0x2, 0x3, 0x4, 0x5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
WAIT = 10.0  # seconds: the bound on every read

Frame = tuple[int, int, int, bytes]  # type, flags, stream id, payload


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def settings_frame(**values: int) -> bytes:
    ids = {"header_table_size": 1, "enable_push": 2, "initial_window_size": 4, "max_frame_size": 5}
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in values.items()))


def not_grpc_fields() -> list[tuple[str, str]]:
    """A request that is not a gRPC call (GET): answered with 405 and a text body."""
    return [(":method", "GET"), *request_fields()[1:]]


def grpc_message(payload: bytes, *, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload


def request_fields(path: str = PROCESS_PATH, **extra: str) -> list[tuple[str, str]]:
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "epp"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    replaced = {k.replace("_", "-") for k in extra}
    return [(k, v) for k, v in fields if k not in replaced] + [
        (k.replace("_", "-"), v) for k, v in extra.items()
    ]


class RawClient:
    """An HTTP/2 client that writes whatever frames a test gives it and reads the server's answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.seen: list[Frame] = []
        self.ended: dict[int, dict[str, str]] = {}  # stream id: the headers that ended it

    @classmethod
    async def connect(cls, port: int, *, settings: bytes | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.send(PREFACE + (settings if settings is not None else frame(SETTINGS, 0, 0)))
        return client

    def send(self, *chunks: bytes) -> None:
        self.writer.write(b"".join(chunks))

    def headers(
        self, stream_id: int, fields: Sequence[tuple[str, str]], *, end_stream: bool = False
    ) -> bytes:
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return frame(HEADERS, flags, stream_id, self.encoder.encode(list(fields)))

    async def read_frame(self) -> Frame | None:
        """The next frame, or None when the server closed the connection."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), timeout=WAIT)
            payload = await asyncio.wait_for(self.reader.readexactly(int.from_bytes(head[:3], "big")), WAIT)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None
        got = (head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload)
        self.seen.append(got)
        return got

    async def read_until(self, kind: int, stream_id: int | None = None) -> Frame:
        while True:
            got = await self.read_frame()
            assert got is not None, f"connection closed before a frame of type {kind}; saw {self.summary()}"
            if got[0] == kind and (stream_id is None or got[2] == stream_id):
                return got

    async def read_until_any(self, kinds: tuple[int, ...], stream_id: int) -> Frame:
        while True:
            got = await self.read_frame()
            assert got is not None, f"connection closed; saw {self.summary()}"
            if got[0] in kinds and got[2] == stream_id:
                return got

    async def goaway(self) -> tuple[int, int, bytes]:
        """The GOAWAY that ends the connection: (last stream id, error code, debug data), then EOF."""
        _, _, _, payload = await self.read_until(GOAWAY)
        last, code = struct.unpack(">II", payload[:8])
        while await self.read_frame() is not None:
            pass
        return last & 0x7FFFFFFF, code, payload[8:]

    async def reset_code(self, stream_id: int) -> int:
        _, _, _, payload = await self.read_until(RST_STREAM, stream_id)
        code: int = struct.unpack(">I", payload)[0]
        return code

    async def trailers(self, stream_id: int) -> dict[str, str]:
        """Headers of the HEADERS frame that ends `stream_id` (a trailers-only answer or the trailers);
        streams may end in any order."""
        while stream_id not in self.ended:
            got = await self.read_frame()
            assert got is not None, f"connection closed before stream {stream_id} ended; saw {self.summary()}"
            kind, flags, ended, payload = got
            if kind == HEADERS:
                fields = {str(k): str(v) for k, v in self.decoder.decode(payload)}
                if flags & END_STREAM:
                    self.ended[ended] = fields
        return self.ended[stream_id]

    async def ping_round_trip(self) -> None:
        """The connection still works: a PING comes back acknowledged."""
        self.send(frame(PING, 0, 0, b"still-ok"))
        while True:
            _, flags, _, payload = await self.read_until(PING)
            if flags & ACK and payload == b"still-ok":
                return

    def summary(self) -> list[tuple[int, int, int]]:
        return [(k, f, s) for k, f, s, _ in self.seen]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), timeout=WAIT)


@pytest.fixture
def epp_state() -> EppServer:
    """An EPP's processor and picker (three static endpoints), not listening: tests start h2 servers on it."""
    state = EppServer(make_settings(STATIC))
    state.picker.set_endpoints(STATIC)
    return state


async def start_h2(state: EppServer, settings: H2Settings | None = None) -> tuple[H2GrpcServer, int]:
    server = H2GrpcServer(state.processor, settings)
    return server, await server.start("127.0.0.1", 0)


@pytest.fixture
async def h2(epp_state: EppServer) -> AsyncIterator[tuple[EppServer, int]]:
    server, port = await start_h2(epp_state)
    try:
        yield epp_state, port
    finally:
        await server.stop(0.5)


def open_streams(state: EppServer) -> float:
    value = state.metrics.registry.get_sample_value("epp_streams_open")
    return value or 0.0


async def assert_serves_grpc(port: int) -> None:
    answers = await exchange(port, [request_headers()])
    assert destination(answers[0]) in STATIC_NAMES


def assert_no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]
    assert not bad, [r.getMessage() for r in bad]


def _bomb(encoder: hpack.Encoder) -> bytes:
    """A 10 kB header block that inflates to megabytes: one big indexed entry, then references to it."""
    first = encoder.encode([("x-bomb", "a" * 3000)])  # literal with incremental indexing: entry 62
    return first + b"\xbe" * 10_000


CONNECTION_ERRORS = [
    pytest.param(lambda c: [frame(PING, 0, 0, b"12345678")], PROTOCOL_ERROR, id="first-frame-not-settings"),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(DATA, 0, 1, b"x" * 16385)],
        FRAME_SIZE_ERROR,
        id="frame-above-max-frame-size",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), c.headers(0, request_fields())],
        PROTOCOL_ERROR,
        id="headers-on-stream-0",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(DATA, 0, 0, b"x")], PROTOCOL_ERROR, id="data-on-stream-0"
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(SETTINGS, 0, 1)], PROTOCOL_ERROR, id="settings-on-stream"
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(SETTINGS, ACK, 0, b"\0" * 6)],
        FRAME_SIZE_ERROR,
        id="settings-ack-with-payload",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0, b"\0\x01\0")], FRAME_SIZE_ERROR, id="settings-length-not-6n"
    ),
    pytest.param(
        lambda c: [settings_frame(max_frame_size=0)], PROTOCOL_ERROR, id="settings-max-frame-size-0"
    ),
    pytest.param(
        lambda c: [settings_frame(max_frame_size=1 << 24)],
        PROTOCOL_ERROR,
        id="settings-max-frame-size-too-big",
    ),
    pytest.param(
        lambda c: [settings_frame(initial_window_size=1 << 31)],
        FLOW_CONTROL_ERROR,
        id="settings-initial-window-too-big",
    ),
    pytest.param(lambda c: [settings_frame(enable_push=2)], PROTOCOL_ERROR, id="settings-enable-push-2"),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(PING, 0, 1, b"12345678")], PROTOCOL_ERROR, id="ping-on-stream"
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(PING, 0, 0, b"1234567")],
        FRAME_SIZE_ERROR,
        id="ping-not-8-bytes",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(RST_STREAM, 0, 0, b"\0\0\0\0")],
        PROTOCOL_ERROR,
        id="rst-stream-on-stream-0",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(RST_STREAM, 0, 5, b"\0\0\0\x08")],
        PROTOCOL_ERROR,
        id="rst-stream-on-idle-stream",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), c.headers(1, request_fields()), frame(RST_STREAM, 0, 1, b"\0")],
        FRAME_SIZE_ERROR,
        id="rst-stream-not-4-bytes",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0")],
        PROTOCOL_ERROR,
        id="window-update-0-on-connection",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1))],
        FLOW_CONTROL_ERROR,
        id="connection-window-overflow",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(WINDOW_UPDATE, 0, 9, b"\0\0\0\x01")],
        PROTOCOL_ERROR,
        id="window-update-on-idle-stream",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), c.headers(2, request_fields())], PROTOCOL_ERROR, id="even-stream-id"
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), c.headers(5, request_fields()), c.headers(3, request_fields())],
        PROTOCOL_ERROR,
        id="decreasing-stream-id",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(DATA, 0, 7, b"x")], PROTOCOL_ERROR, id="data-on-idle-stream"
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(HEADERS, PADDED | END_HEADERS, 1)],
        FRAME_SIZE_ERROR,
        id="padded-headers-without-pad-length",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(HEADERS, PADDED | END_HEADERS, 1, b"\x09abc")],
        PROTOCOL_ERROR,
        id="headers-padding-beyond-frame",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), c.headers(1, request_fields()), frame(DATA, PADDED, 1, b"\x05ab")],
        PROTOCOL_ERROR,
        id="data-padding-beyond-frame",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), c.headers(1, request_fields()), frame(DATA, PADDED, 1)],
        PROTOCOL_ERROR,
        id="padded-data-without-pad-length",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(CONTINUATION, END_HEADERS, 1, b"\x82")],
        PROTOCOL_ERROR,
        id="continuation-without-headers",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(HEADERS, 0, 1, b"\x83"), frame(PING, 0, 0, b"12345678")],
        PROTOCOL_ERROR,
        id="other-frame-inside-header-block",
    ),
    pytest.param(
        lambda c: [
            frame(SETTINGS, 0, 0),
            frame(HEADERS, 0, 1, b"\x83"),
            *[frame(CONTINUATION, 0, 1, b"\x40" * 16384) for _ in range(8)],
        ],
        ENHANCE_YOUR_CALM,
        id="continuation-flood",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), c.headers(1, request_fields()), *[frame(DATA, 0, 1)] * 200],
        ENHANCE_YOUR_CALM,
        id="empty-data-flood",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(HEADERS, 0, 1, b"\x83"), *[frame(CONTINUATION, 0, 1)] * 200],
        ENHANCE_YOUR_CALM,
        id="empty-continuation-flood",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\xff")],
        COMPRESSION_ERROR,
        id="hpack-garbage",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(HEADERS, END_HEADERS, 1, _bomb(c.encoder))],
        COMPRESSION_ERROR,
        id="hpack-decompression-bomb",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\x02\x82")],
        PROTOCOL_ERROR,
        id="push-promise-from-a-client",
    ),
    pytest.param(
        lambda c: [frame(SETTINGS, 0, 0), frame(GOAWAY, 0, 1, b"\0" * 8)],
        PROTOCOL_ERROR,
        id="goaway-on-stream",
    ),
    pytest.param(
        lambda c: [
            frame(SETTINGS, 0, 0),
            frame(HEADERS, END_HEADERS, 1, hpack_int(4097, 5, 0x20) + c.encoder.encode(request_fields())),
        ],
        COMPRESSION_ERROR,
        id="hpack-table-size-update-above-settings",
    ),
    pytest.param(
        lambda c: [
            frame(SETTINGS, 0, 0),
            c.headers(1, request_fields()),
            frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)),
            c.headers(1, request_fields(), end_stream=True),
        ],
        STREAM_CLOSED,
        id="headers-after-the-clients-rst-stream",
    ),
    pytest.param(
        lambda c: [
            frame(SETTINGS, 0, 0),
            c.headers(1, request_fields(HEALTH_CHECK_PATH)),
            frame(DATA, END_STREAM, 1, grpc_message(b"")),
            c.headers(1, request_fields(HEALTH_CHECK_PATH), end_stream=True),
        ],
        STREAM_CLOSED,
        id="headers-on-a-stream-both-sides-ended",
    ),
]


@pytest.mark.parametrize(("build", "code"), CONNECTION_ERRORS)
async def test_a_protocol_error_ends_the_connection_with_goaway_and_its_code(
    h2: tuple[EppServer, int], caplog: pytest.LogCaptureFixture, build: object, code: int
) -> None:
    state, port = h2
    client = await RawClient.connect(port, settings=b"")
    try:
        client.send(*build(client))  # type: ignore[operator]
        _, got, debug = await client.goaway()
    finally:
        await client.close()
    assert got == code, debug
    assert debug  # the reason is in the debug data
    assert_no_tracebacks(caplog)
    await assert_serves_grpc(port)
    assert open_streams(state) == 0


async def test_a_bad_preface_gets_goaway_protocol_error(h2: tuple[EppServer, int]) -> None:
    _, port = h2
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = RawClient(reader, writer)
    try:
        client.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        _, code, debug = await client.goaway()
    finally:
        await client.close()
    assert code == PROTOCOL_ERROR
    assert b"preface" in debug


STREAM_ERRORS = [
    pytest.param(
        lambda c: [c.headers(1, request_fields()), frame(WINDOW_UPDATE, 0, 1, b"\0\0\0\0")],
        PROTOCOL_ERROR,
        id="window-update-0-on-stream",
    ),
    pytest.param(
        lambda c: [c.headers(1, request_fields()), frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1))],
        FLOW_CONTROL_ERROR,
        id="stream-window-overflow",
    ),
    pytest.param(
        lambda c: [
            c.headers(1, request_fields(HEALTH_CHECK_PATH)),
            frame(DATA, END_STREAM, 1, grpc_message(b"")),
            frame(DATA, 0, 1, b"late"),
        ],
        STREAM_CLOSED,
        id="data-on-a-closed-stream",
    ),
    pytest.param(
        lambda c: [c.headers(1, request_fields()), c.headers(1, [("x-trailer", "1")])],
        PROTOCOL_ERROR,
        id="trailers-without-end-stream",
    ),
    pytest.param(
        lambda c: [
            c.headers(1, [(":method", "POST"), (":scheme", "http"), ("content-type", "application/grpc")])
        ],
        PROTOCOL_ERROR,
        id="missing-path",
    ),
    pytest.param(
        lambda c: [c.headers(1, request_fields(**{"X-Upper": "1"}))], PROTOCOL_ERROR, id="upper-case-name"
    ),
    pytest.param(
        lambda c: [c.headers(1, request_fields(connection="keep-alive"))],
        PROTOCOL_ERROR,
        id="connection-header",
    ),
    pytest.param(lambda c: [c.headers(1, request_fields(te="gzip"))], PROTOCOL_ERROR, id="te-not-trailers"),
    pytest.param(
        lambda c: [c.headers(1, [*request_fields(), (":status", "200")])],
        PROTOCOL_ERROR,
        id="pseudo-header-after-regular",
    ),
    pytest.param(
        lambda c: [
            frame(
                HEADERS,
                END_HEADERS | PRIORITY_FLAG,
                1,
                b"\0\0\0\x01\x10" + c.encoder.encode(request_fields()),
            )
        ],
        PROTOCOL_ERROR,
        id="stream-depends-on-itself",
    ),
    pytest.param(lambda c: [frame(PRIORITY, 0, 3, b"\0\0\0")], FRAME_SIZE_ERROR, id="priority-not-5-bytes"),
    pytest.param(
        lambda c: [frame(PRIORITY, 0, 1, b"\0\0\0\x01\x10")], PROTOCOL_ERROR, id="priority-depends-on-itself"
    ),
    pytest.param(
        lambda c: [
            c.headers(1, request_fields()),
            frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)),
            frame(DATA, END_STREAM, 1, b"late"),
        ],
        STREAM_CLOSED,
        id="data-after-the-clients-rst-stream",
    ),
    pytest.param(
        lambda c: [
            c.headers(1, not_grpc_fields()),
            frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)),
            frame(DATA, END_STREAM, 1, b"late"),
        ],
        STREAM_CLOSED,
        id="data-after-the-clients-rst-stream-on-an-answered-stream",
    ),
    pytest.param(
        lambda c: [c.headers(1, request_fields()), c.headers(1, [(":method", "POST")], end_stream=True)],
        PROTOCOL_ERROR,
        id="pseudo-header-in-trailers",
    ),
    pytest.param(
        lambda c: [c.headers(1, request_fields()), c.headers(1, [("X-Upper", "1")], end_stream=True)],
        PROTOCOL_ERROR,
        id="upper-case-name-in-trailers",
    ),
    pytest.param(lambda c: [c.headers(1, request_fields(""))], PROTOCOL_ERROR, id="empty-path"),
    pytest.param(
        lambda c: [c.headers(1, request_fields("no-slash"))], PROTOCOL_ERROR, id="path-not-absolute"
    ),
    pytest.param(
        lambda c: [c.headers(1, request_fields(x_bad="a\nb"))], PROTOCOL_ERROR, id="line-feed-in-a-value"
    ),
    pytest.param(
        lambda c: [c.headers(1, request_fields(x_bad=" padded"))],
        PROTOCOL_ERROR,
        id="value-with-leading-whitespace",
    ),
    pytest.param(
        lambda c: [c.headers(1, request_fields(**{"x bad": "1"}))], PROTOCOL_ERROR, id="space-in-a-name"
    ),
    pytest.param(
        lambda c: [
            c.headers(1, [(":method", "CONNECT"), (":scheme", "http"), (":path", "/"), (":authority", "e")])
        ],
        PROTOCOL_ERROR,
        id="connect-with-scheme-and-path",
    ),
    pytest.param(
        lambda c: [c.headers(1, request_fields(content_length="many"))],
        PROTOCOL_ERROR,
        id="content-length-not-a-number",
    ),
    pytest.param(
        lambda c: [c.headers(1, request_fields(content_length="1")), frame(DATA, 0, 1, grpc_message(b"abc"))],
        PROTOCOL_ERROR,
        id="data-beyond-content-length",
    ),
    pytest.param(
        lambda c: [
            c.headers(1, request_fields(HEALTH_CHECK_PATH, content_length="100")),
            frame(DATA, END_STREAM, 1, grpc_message(b"")),
        ],
        PROTOCOL_ERROR,
        id="data-short-of-content-length",
    ),
    pytest.param(
        lambda c: [c.headers(1, request_fields(content_length="5"), end_stream=True)],
        PROTOCOL_ERROR,
        id="content-length-without-data",
    ),
    pytest.param(
        lambda c: [c.headers(1, not_grpc_fields()), frame(WINDOW_UPDATE, 0, 1, b"\0\0\0\0")],
        PROTOCOL_ERROR,
        id="window-update-0-on-an-answered-stream",
    ),
    pytest.param(
        lambda c: [
            c.headers(1, not_grpc_fields()),
            *[frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1))] * 2,
        ],
        FLOW_CONTROL_ERROR,
        id="window-overflow-on-an-answered-stream",
    ),
    pytest.param(
        lambda c: [
            c.headers(1, not_grpc_fields()),
            frame(DATA, 0, 1, b"body"),
            c.headers(1, [("x-trailer", "1")]),
        ],
        PROTOCOL_ERROR,
        id="trailers-without-end-stream-on-an-answered-stream",
    ),
]


@pytest.mark.parametrize(("build", "code"), STREAM_ERRORS)
async def test_a_stream_error_resets_that_stream_and_the_connection_keeps_working(
    h2: tuple[EppServer, int], caplog: pytest.LogCaptureFixture, build: object, code: int
) -> None:
    state, port = h2
    client = await RawClient.connect(port)
    try:
        client.send(*build(client))  # type: ignore[operator]
        stream_id = 3 if code == FRAME_SIZE_ERROR else 1
        assert await client.reset_code(stream_id) == code
        await client.ping_round_trip()
    finally:
        await client.close()
    assert_no_tracebacks(caplog)
    await assert_serves_grpc(port)
    assert open_streams(state) == 0


REFUSALS = [
    pytest.param(request_fields(grpc_encoding="gzip"), "200", GRPC_UNIMPLEMENTED, id="unsupported-encoding"),
    pytest.param(request_fields(grpc_timeout="soon"), "200", GRPC_INTERNAL, id="malformed-grpc-timeout"),
    pytest.param(request_fields("/no.Such/Method"), "200", GRPC_UNIMPLEMENTED, id="unknown-method"),
]


@pytest.mark.parametrize(("fields", "http_status", "grpc_status"), REFUSALS)
async def test_a_call_the_server_does_not_run_gets_a_trailers_only_answer(
    h2: tuple[EppServer, int], fields: list[tuple[str, str]], http_status: str, grpc_status: int
) -> None:
    _, port = h2
    client = await RawClient.connect(port)
    try:
        client.send(client.headers(1, fields))
        answer = await client.trailers(1)
        assert await client.reset_code(1) == NO_ERROR  # the client had not finished: it may stop now
        client.send(frame(DATA, END_STREAM, 1, b"ignored"))  # crossed the reset: ignored quietly
        await client.ping_round_trip()
    finally:
        await client.close()
    assert answer[":status"] == http_status
    assert answer["grpc-status"] == str(grpc_status)
    assert answer["grpc-message"]
    assert [k for k, _, s in client.summary() if s == 1].count(RST_STREAM) == 1  # the late DATA got none


NOT_GRPC = [
    pytest.param(request_fields(content_type="text/plain"), "415", GRPC_INTERNAL, id="content-type-not-grpc"),
    pytest.param([(":method", "GET"), *request_fields()[1:]], "405", GRPC_UNIMPLEMENTED, id="get-not-post"),
]


@pytest.mark.parametrize(("fields", "http_status", "grpc_status"), NOT_GRPC)
async def test_a_request_that_is_not_grpc_gets_an_http_status_and_a_text_body_then_is_read_to_its_end(
    h2: tuple[EppServer, int], fields: list[tuple[str, str]], http_status: str, grpc_status: int
) -> None:
    """The answer is complete at once; the stream stays open, without RST_STREAM, until the client's side
    ends, and what the client still sends is read and discarded."""
    _, port = h2
    client = await RawClient.connect(port)
    try:
        client.send(client.headers(1, fields))
        _, flags, _, block = await client.read_until(HEADERS, 1)
        answer = {str(k): str(v) for k, v in client.decoder.decode(block)}
        assert not flags & END_STREAM  # a body follows
        body = b""
        while True:
            _, flags, _, payload = await client.read_until(DATA, 1)
            body += payload
            if flags & END_STREAM:
                break
        client.send(frame(DATA, 0, 1, b"more of the request"))
        await client.ping_round_trip()
        client.send(frame(DATA, END_STREAM, 1, b"the end"))
        await client.ping_round_trip()
        client.send(frame(DATA, 0, 1, b"after the end"))  # the stream is closed now
        assert await client.reset_code(1) == STREAM_CLOSED
    finally:
        await client.close()
    assert answer[":status"] == http_status
    assert answer["content-type"].startswith("text/plain")
    assert answer["grpc-status"] == str(grpc_status)
    assert body.decode().strip() == answer["grpc-message"]
    assert [k for k, _, s in client.summary() if s == 1].count(RST_STREAM) == 1  # only for the late DATA


async def test_a_head_request_gets_its_status_without_a_body(h2: tuple[EppServer, int]) -> None:
    _, port = h2
    client = await RawClient.connect(port)
    try:
        client.send(client.headers(1, [(":method", "HEAD"), *request_fields()[1:]], end_stream=True))
        answer = await client.trailers(1)
        await client.ping_round_trip()
    finally:
        await client.close()
    assert answer[":status"] == "405"
    assert [k for k, _, s in client.summary() if s == 1] == [HEADERS]  # no DATA, no RST_STREAM


async def test_answers_waiting_for_window_keep_their_streams_open_and_count_toward_the_limit(
    epp_state: EppServer,
) -> None:
    """A client with an initial window of 0 gets headers but no body; its streams stay open, so one more
    than the limit is refused, and a WINDOW_UPDATE of 1 lets exactly one byte out."""
    server, port = await start_h2(epp_state, H2Settings(max_concurrent_streams=2))
    client = await RawClient.connect(port, settings=settings_frame(initial_window_size=0))
    try:
        client.send(*(client.headers(i, not_grpc_fields(), end_stream=True) for i in (1, 3, 5)))
        assert await client.reset_code(5) == REFUSED_STREAM
        assert DATA not in [k for k, _, _ in client.summary()]
        client.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1)))
        _, flags, _, payload = await client.read_until(DATA, 1)
        assert (len(payload), flags) == (1, 0)
    finally:
        await client.close()
        await server.stop(0.5)


async def test_a_call_whose_content_length_matches_its_data_is_served(h2: tuple[EppServer, int]) -> None:
    _, port = h2
    client = await RawClient.connect(port)
    body = grpc_message(b"")
    try:
        client.send(client.headers(1, request_fields(HEALTH_CHECK_PATH, content_length=str(len(body)))))
        client.send(frame(DATA, 0, 1, body[:2]), frame(DATA, END_STREAM, 1, body[2:]))
        assert (await client.trailers(1))["grpc-status"] == "0"
    finally:
        await client.close()


def literal(name: str, value: str, *, indexed: bool = False) -> bytes:
    """An HPACK literal with a new name: added to the dynamic table (`indexed`) or not."""
    return (b"\x40" if indexed else b"\x00") + hpack_string(name) + hpack_string(value)


async def test_a_remembered_header_block_is_decoded_again_once_the_dynamic_table_changed(
    h2: tuple[EppServer, int],
) -> None:
    """The same bytes mean other headers after the table changed: here the indexed :path (entry 62)
    first names the health check, then an unknown method, and the answers follow the table."""
    _, port = h2
    client = await RawClient.connect(port)
    rest = b"".join(literal(k, v) for k, v in request_fields() if k != ":path")
    indexed_path = b"\xbe" + rest  # :path from dynamic table entry 62, the newest
    blocks = [
        literal(":path", HEALTH_CHECK_PATH, indexed=True) + rest,
        indexed_path,
        indexed_path,  # remembered: the table is as it was
        literal(":path", "/no.Such/Method", indexed=True) + rest,
        indexed_path,  # entry 62 is the unknown method now
    ]
    try:
        client.send(*(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, b) for i, b in enumerate(blocks)))
        statuses = [(await client.trailers(2 * i + 1))["grpc-status"] for i in range(len(blocks))]
    finally:
        await client.close()
    assert statuses == ["0", "0", "0", str(GRPC_UNIMPLEMENTED), str(GRPC_UNIMPLEMENTED)]


MESSAGE_ERRORS = [
    pytest.param(
        grpc_message(b"\x0a\x00", compressed=True), GRPC_INTERNAL, id="compressed-flag-without-encoding"
    ),
    pytest.param(
        b"\x00" + (5 << 20).to_bytes(4, "big"), GRPC_RESOURCE_EXHAUSTED, id="message-above-max-size"
    ),
]


@pytest.mark.parametrize(("data", "grpc_status"), MESSAGE_ERRORS)
async def test_a_message_the_server_will_not_take_ends_the_call_with_a_grpc_status(
    h2: tuple[EppServer, int], data: bytes, grpc_status: int
) -> None:
    state, port = h2
    client = await RawClient.connect(port)
    try:
        client.send(client.headers(1, request_fields()), frame(DATA, 0, 1, data))
        answer = await client.trailers(1)
        assert await client.reset_code(1) == NO_ERROR
    finally:
        await client.close()
    assert answer["grpc-status"] == str(grpc_status)
    assert open_streams(state) == 0


async def test_streams_above_the_advertised_limit_are_refused(epp_state: EppServer) -> None:
    server, port = await start_h2(epp_state, H2Settings(max_concurrent_streams=2))
    client = await RawClient.connect(port)
    try:
        _, _, _, advertised = await client.read_until(SETTINGS)
        assert dict(struct.iter_unpack(">HI", advertised))[0x3] == 2
        client.send(*(client.headers(i, request_fields()) for i in (1, 3, 5)))
        assert await client.reset_code(5) == REFUSED_STREAM
        client.send(frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)), client.headers(7, request_fields()))
        client.send(
            frame(DATA, END_STREAM, 7, grpc_message(request_headers(end_of_stream=True).SerializeToString()))
        )
        assert (await client.trailers(7))["grpc-status"] == "0"  # a slot freed by the cancel is usable
    finally:
        await client.close()
        await server.stop(0.5)
    assert open_streams(epp_state) == 0


async def test_rapid_reset_ends_the_connection_with_enhance_your_calm(
    epp_state: EppServer, caplog: pytest.LogCaptureFixture
) -> None:
    """CVE-2023-44487: a client that opens and resets streams as fast as it can is cut off once its reset
    budget is spent; every stream it opened is finished, none is left open."""
    server, port = await start_h2(epp_state, H2Settings(reset_burst=50, reset_rate=0.001))
    client = await RawClient.connect(port)
    try:
        cancel = struct.pack(">I", CANCEL)
        client.send(
            *(client.headers(i, request_fields()) + frame(RST_STREAM, 0, i, cancel) for i in range(1, 400, 2))
        )
        last, code, _ = await client.goaway()
    finally:
        await client.close()
    assert code == ENHANCE_YOUR_CALM
    assert last == 2 * 51 - 1  # the 51st reset spent the budget of 50
    assert open_streams(epp_state) == 0
    assert_no_tracebacks(caplog)
    await server.stop(0.5)


async def test_resets_among_completed_calls_keep_the_connection(epp_state: EppServer) -> None:
    """A gateway whose clients cancel some requests resets streams all day: calls that complete earn
    the budget back, so only resets beyond the completed calls count."""
    server, port = await start_h2(epp_state, H2Settings(reset_burst=20, reset_rate=0.001))
    client = await RawClient.connect(port)
    call = grpc_message(request_headers(end_of_stream=True).SerializeToString())
    cancel = struct.pack(">I", CANCEL)
    try:
        for i in range(1, 400, 4):  # 100 completed calls and 100 resets, one after the other
            client.send(client.headers(i, request_fields()), frame(DATA, END_STREAM, i, call))
            client.send(client.headers(i + 2, request_fields()), frame(RST_STREAM, 0, i + 2, cancel))
        await client.ping_round_trip()
    finally:
        await client.close()
        await server.stop(0.5)
    assert GOAWAY not in [k for k, _, _ in client.summary()]
    assert [k for k, _, s in client.summary() if s == 397].count(HEADERS) == 2  # the last call answered
    assert open_streams(epp_state) == 0


async def test_resets_of_answered_streams_as_envoy_sends_them_cost_no_budget(epp_state: EppServer) -> None:
    """Envoy's ext_proc filter resets its stream once it has its answers (seen with a real Envoy in the
    benchmark); those resets come after the server's work is done and are not rapid resets."""
    server, port = await start_h2(epp_state, H2Settings(reset_burst=20, reset_rate=0.001))
    client = await RawClient.connect(port)
    message = grpc_message(request_headers().SerializeToString())
    cancel = struct.pack(">I", CANCEL)
    try:
        for i in range(1, 400, 2):
            client.send(client.headers(i, request_fields()), frame(DATA, 0, i, message))
            client.send(frame(RST_STREAM, 0, i, cancel))
        await client.ping_round_trip()
    finally:
        await client.close()
        await server.stop(0.5)
    assert GOAWAY not in [k for k, _, _ in client.summary()]
    assert open_streams(epp_state) == 0


async def test_resets_within_the_budget_keep_the_connection(h2: tuple[EppServer, int]) -> None:
    state, port = h2
    client = await RawClient.connect(port)
    try:
        cancel = struct.pack(">I", CANCEL)
        client.send(
            *(client.headers(i, request_fields()) + frame(RST_STREAM, 0, i, cancel) for i in range(1, 200, 2))
        )
        await client.ping_round_trip()
    finally:
        await client.close()
    assert GOAWAY not in [k for k, _, _ in client.summary()]
    assert open_streams(state) == 0


@pytest.mark.parametrize(
    "flood",
    [
        pytest.param(frame(PING, 0, 0, b"12345678"), id="ping"),
        pytest.param(frame(SETTINGS, 0, 0), id="settings"),
    ],
)
async def test_a_control_frame_flood_from_a_client_that_does_not_read_stops_being_read(
    epp_state: EppServer, flood: bytes
) -> None:
    """The server's answers to the flood (acks) stay bounded: it stops reading while the client does not
    read, so the backlog piles up in the client's own send buffer instead of the server's memory."""
    server, port = await start_h2(epp_state)
    client = await RawClient.connect(port)
    try:
        client.send(flood * (24 * 1024 * 1024 // len(flood)))
        await wait_until_async(
            lambda: bool(server.connections) and server.connections[0].reading_paused,
            "the server to stop reading (the kernel buffers fill within a few megabytes of acks)",
        )
        assert server.connections[0].reading_paused
        assert server.connections[0].output_backlog < 1 << 20
    finally:
        client.writer.transport.abort()
        await assert_serves_grpc(port)
        await server.stop(0.5)
    assert open_streams(epp_state) == 0


async def test_a_header_list_above_the_advertised_size_is_refused(h2: tuple[EppServer, int]) -> None:
    _, port = h2
    client = await RawClient.connect(port)
    try:
        _, _, _, advertised = await client.read_until(SETTINGS)
        limit = dict(struct.iter_unpack(">HI", advertised))[0x6]
        fields = request_fields(**{f"x-big-{i}": "v" * 1000 for i in range(limit // 1000 + 1)})
        block = client.encoder.encode(fields)
        chunks = [block[i : i + 8000] for i in range(0, len(block), 8000)]
        client.send(frame(HEADERS, 0, 1, chunks[0]), *(frame(CONTINUATION, 0, 1, c) for c in chunks[1:-1]))
        client.send(frame(CONTINUATION, END_HEADERS, 1, chunks[-1]))
        _, code, _ = await client.goaway()
    finally:
        await client.close()
    assert code == COMPRESSION_ERROR


async def test_grpc_timeout_ends_waiting_calls_with_deadline_exceeded(h2: tuple[EppServer, int]) -> None:
    """Calls that wait (FULL_DUPLEX_STREAMED, no body yet) end at their own deadlines, the later-opened
    call with the earlier deadline included; a call that completes in time ends with OK."""
    state, port = h2
    client = await RawClient.connect(port)
    waiting = grpc_message(request_headers(body_mode=Mode.FULL_DUPLEX_STREAMED).SerializeToString())
    quick = grpc_message(request_headers(end_of_stream=True).SerializeToString())
    try:
        client.send(client.headers(1, request_fields(grpc_timeout="80m")), frame(DATA, 0, 1, waiting))
        client.send(client.headers(3, request_fields(grpc_timeout="20m")), frame(DATA, 0, 3, waiting))
        client.send(client.headers(5, request_fields(grpc_timeout="9S")), frame(DATA, END_STREAM, 5, quick))
        answers = {i: await client.trailers(i) for i in (5, 3, 1)}
        assert await client.reset_code(1) == CANCEL
        await client.ping_round_trip()
    finally:
        await client.close()
    assert answers[5]["grpc-status"] == "0"
    assert answers[3]["grpc-status"] == str(GRPC_DEADLINE_EXCEEDED)
    assert answers[1]["grpc-status"] == str(GRPC_DEADLINE_EXCEEDED)
    assert [k for k, _, s in client.summary() if s == 3].count(RST_STREAM) == 1  # CANCEL: it had not finished
    assert open_streams(state) == 0


async def test_a_client_that_disconnects_mid_stream_leaves_nothing_open(h2: tuple[EppServer, int]) -> None:
    state, port = h2
    client = await RawClient.connect(port)
    first = request_headers(body_mode=Mode.FULL_DUPLEX_STREAMED).SerializeToString()
    client.send(
        client.headers(1, request_fields()),
        frame(DATA, 0, 1, grpc_message(first)),
        client.headers(3, request_fields()),
        frame(DATA, 0, 3, grpc_message(first)[:7]),  # inside a message
        client.headers(5, request_fields(HEALTH_CHECK_PATH)),
    )
    await client.ping_round_trip()
    assert open_streams(state) == 2
    await client.close()
    await wait_until_async(lambda: open_streams(state) == 0, "the server to notice the close")
    assert open_streams(state) == 0


async def test_graceful_stop_serves_streams_in_flight_refuses_later_ones_and_lets_open_ones_finish(
    epp_state: EppServer,
) -> None:
    """Two-step GOAWAY (RFC 9113 section 6.8): streams the client sends before it has seen the GOAWAY
    are served; after the PING round trip the final GOAWAY names the last one, later streams are refused
    (REFUSED_STREAM: the client may retry them elsewhere), open streams finish, then the server closes."""
    server, port = await start_h2(epp_state)
    client = await RawClient.connect(port)
    waiting = grpc_message(request_headers(body_mode=Mode.FULL_DUPLEX_STREAMED).SerializeToString())
    quick = grpc_message(request_headers(end_of_stream=True).SerializeToString())
    try:
        client.send(client.headers(1, request_fields()), frame(DATA, 0, 1, waiting))
        await client.ping_round_trip()
        stopping = asyncio.create_task(server.stop(5.0))
        _, _, _, payload = await client.read_until(GOAWAY)
        assert struct.unpack(">II", payload[:8]) == (2**31 - 1, NO_ERROR)
        client.send(client.headers(3, request_fields()), frame(DATA, END_STREAM, 3, quick))  # in flight
        assert (await client.trailers(3))["grpc-status"] == "0"
        probes = [p for k, f, _, p in client.seen if k == PING and not f & ACK]  # came with the GOAWAY
        assert probes
        client.send(frame(PING, ACK, 0, probes[0]))
        _, _, _, payload = await client.read_until(GOAWAY)
        assert struct.unpack(">II", payload[:8]) == (3, NO_ERROR)
        client.send(client.headers(5, request_fields()))
        assert await client.reset_code(5) == REFUSED_STREAM
        body = ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=b"{}", end_of_stream=True))
        client.send(frame(DATA, END_STREAM, 1, grpc_message(body.SerializeToString())))
        assert (await client.trailers(1))["grpc-status"] == "0"
        assert await client.read_frame() is None  # the server closes once the last stream is done
        await asyncio.wait_for(stopping, timeout=WAIT)
    finally:
        await client.close()
    assert open_streams(epp_state) == 0


async def test_a_connection_that_never_sends_the_preface_is_closed(epp_state: EppServer) -> None:
    server, port = await start_h2(epp_state, H2Settings(handshake_timeout=0.2))
    silent = RawClient(*await asyncio.open_connection("127.0.0.1", port))
    talking = await RawClient.connect(port)
    try:
        _, code, debug = await silent.goaway()  # bounded by the read timeout
        await asyncio.sleep(0.3)  # past the handshake timeout: the talking client is not affected
        await talking.ping_round_trip()
    finally:
        await silent.close()
        await talking.close()
        await server.stop(0.5)
    assert code == PROTOCOL_ERROR
    assert b"preface" in debug


async def test_graceful_stop_is_bounded_when_a_stream_never_finishes(epp_state: EppServer) -> None:
    server, port = await start_h2(epp_state)
    client = await RawClient.connect(port)
    try:
        client.send(client.headers(1, request_fields()))
        await client.ping_round_trip()
        await asyncio.wait_for(server.stop(0.2), timeout=WAIT)  # the client never acknowledges the PING
        await client.read_until(GOAWAY)
        while await client.read_frame() is not None:
            pass
    finally:
        await client.close()
    assert open_streams(epp_state) == 0
    assert not server.connections
