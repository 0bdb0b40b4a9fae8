"""A small HTTP/2 (h2c) gRPC server for the EPP's two services, driven straight from the event loop.

Why: in grpcio every ext_proc stream costs several hundred microseconds of CPU in per-call machinery
(a task per call, completion-queue round trips through a poller thread, futures per read and write),
whatever the handler does. The EPP's calls are tiny and its answers are precomputed, so that machinery
is nearly all of its cost. This transport parses HTTP/2 frames in `data_received`, hands each gRPC
message to the `Processor` synchronously and writes the answers in one batch per read.

What it implements (RFC 9113, gRPC over HTTP/2):
- the connection preface, SETTINGS (with ACK), PING (ACK), GOAWAY, RST_STREAM, WINDOW_UPDATE,
  HEADERS + CONTINUATION (padding and priority fields), DATA (padding), flow control in both directions;
- HPACK decoding with the `hpack` package; the server advertises SETTINGS_HEADER_TABLE_SIZE 0, so
  header blocks do not depend on connection state and repeated blocks are decoded once;
- `envoy.service.ext_proc.v3.ExternalProcessor/Process` (bidirectional) and `grpc.health.v1.Health/Check`;
  any other method gets `UNIMPLEMENTED`; compressed messages get `UNIMPLEMENTED` too (no compression
  is ever negotiated).
Plaintext only: use the grpcio transport for TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import hpack
from grpc_health.v1 import health_pb2

from epp.processor import METHOD_NAME, SERVICE_NAME, Processor, ProcessStream

logger = logging.getLogger(__name__)

PROCESS_PATH = f"/{SERVICE_NAME}/{METHOD_NAME}"
HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
HEALTH_SERVICES = frozenset({"", SERVICE_NAME})

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME = struct.Struct(">HBBBI")  # 24-bit length as (high 16, low 8), type, flags, stream id
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
_PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
_NO_ERROR, _PROTOCOL_ERROR, _FLOW_CONTROL_ERROR, _FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
_SETTINGS_HEADER_TABLE_SIZE, _SETTINGS_MAX_CONCURRENT_STREAMS = 0x1, 0x3
_SETTINGS_INITIAL_WINDOW_SIZE, _SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535
_REPLENISH_AT = 2**30  # received bytes after which a window is topped up again
_MAX_HEADER_BLOCK = 64 * 1024
_MAX_MESSAGE = 16 * 1024 * 1024

# HPACK: ":status: 200" (static index 8); "content-type: application/grpc" (literal, static name 31)
_RESPONSE_HEADERS = b"\x88\x0f\x10\x10application/grpc"
_GRPC_STATUS = b"\x00\x0bgrpc-status"
_GRPC_MESSAGE = b"\x00\x0cgrpc-message"
_UNIMPLEMENTED = 12
_SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()
_SERVICE_UNKNOWN = health_pb2.HealthCheckResponse(
    status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
).SerializeToString()


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _FRAME.pack(length >> 8, length & 0xFF, kind, flags, stream_id) + payload


def _hpack_string(text: str) -> bytes:
    data = text.encode()
    return _hpack_int(len(data), 7, 0) + data


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _trailers(status: int, message: str = "") -> bytes:
    block = _GRPC_STATUS + _hpack_string(str(status))
    if message:
        block += _GRPC_MESSAGE + _hpack_string(message.replace("%", "%25"))
    return block


_OK_TRAILERS = _trailers(0)


def _describe_bad_preface(start: bytes) -> str:
    if start.split(b" ", 1)[0] in (b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH"):
        return (
            "the client speaks HTTP/1.1, not HTTP/2: a gRPC client cluster without HTTP/2 protocol options "
            f"(Envoy: add http2_protocol_options to the EPP cluster); it sent {start[:40]!r}"
        )
    if start[:1] == b"\x16":
        return "the client started a TLS handshake: this EPP listens in plaintext (h2c)"
    return f"not an HTTP/2 connection preface: {start[:24]!r}"


class _Stream:
    __slots__ = ("buffer", "kind", "pending", "processing", "send_window", "sent_headers")

    def __init__(self, kind: str, send_window: int) -> None:
        self.kind = kind  # "process", "health"
        self.buffer = bytearray()
        self.processing: ProcessStream | None = None
        self.send_window = send_window
        self.sent_headers = False
        self.pending: list[bytes] = []  # gRPC-framed messages waiting for flow-control window


@dataclass(frozen=True, slots=True)
class H2Settings:
    max_concurrent_streams: int = 1000
    header_cache_size: int = 256


class GrpcH2Protocol(asyncio.Protocol):
    """One HTTP/2 connection."""

    def __init__(
        self, processor: Processor, settings: H2Settings, on_close: Callable[[GrpcH2Protocol], None]
    ) -> None:
        self._processor = processor
        self._settings = settings
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = hpack.Decoder()
        self._header_cache: dict[bytes, dict[str, str]] = {}
        self._streams: dict[int, _Stream] = {}
        self._last_stream = 0
        self._continuation: tuple[int, int, bytearray] | None = None  # stream id, flags, block so far
        self._send_window = _DEFAULT_WINDOW
        self._peer_initial_window = _DEFAULT_WINDOW
        self._peer_max_frame = 16384
        self._received = 0
        self._out: list[bytes] = []
        self._goaway = False
        self.peer = "-"

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        settings = struct.pack(
            ">HIHIHI",
            _SETTINGS_HEADER_TABLE_SIZE,
            0,
            _SETTINGS_MAX_CONCURRENT_STREAMS,
            self._settings.max_concurrent_streams,
            _SETTINGS_INITIAL_WINDOW_SIZE,
            _MAX_WINDOW,
        )
        self._out.append(_frame(_SETTINGS, 0, 0, settings))
        self._out.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", _MAX_WINDOW - _DEFAULT_WINDOW)))
        self._flush()
        logger.debug("h2 connection opened peer=%s", self.peer)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._consume()
        except _ConnectionError as exc:
            logger.warning("h2 connection error peer=%s code=%d reason=%s", self.peer, exc.code, exc)
            self._out.append(
                _frame(_GOAWAY, 0, 0, struct.pack(">II", self._last_stream, exc.code) + str(exc).encode())
            )
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in self._streams.values():
            self._end_processing(stream, "cancelled")
        self._streams.clear()
        self._transport = None
        self._on_close(self)
        logger.debug("h2 connection closed peer=%s", self.peer)

    # -- shutdown

    def send_goaway(self) -> None:
        """Tell the client no new streams will be accepted; open ones may finish."""
        if self._transport is None or self._goaway:
            return
        self._goaway = True
        self._out.append(_frame(_GOAWAY, 0, 0, struct.pack(">II", self._last_stream, _NO_ERROR)))
        self._flush()
        if not self._streams:
            self._transport.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # -- frames

    def _consume(self) -> None:
        buffer = self._buffer
        if not self._preface_seen:
            if len(buffer) < len(PREFACE) and PREFACE.startswith(bytes(buffer)):
                return
            if buffer[: len(PREFACE)] != PREFACE:
                raise _ConnectionError(_PROTOCOL_ERROR, _describe_bad_preface(bytes(buffer[:64])))
            del buffer[: len(PREFACE)]
            self._preface_seen = True
        offset = 0
        size = len(buffer)
        while size - offset >= 9:
            high, low, kind, flags, stream_id = _FRAME.unpack_from(buffer, offset)
            length = (high << 8) | low
            if length > 16384:  # the default SETTINGS_MAX_FRAME_SIZE, which this server keeps
                raise _ConnectionError(_FRAME_SIZE_ERROR, f"a {length}-byte frame exceeds 16384")
            if size - offset - 9 < length:
                break
            payload = bytes(buffer[offset + 9 : offset + 9 + length])
            offset += 9 + length
            self._handle_frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
        if offset:
            del buffer[:offset]

    def _handle_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is not None and kind != _CONTINUATION:
            raise _ConnectionError(_PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == _DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == _HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == _CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == _RST_STREAM:
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                self._end_processing(stream, "cancelled")
                self._maybe_close_after_goaway()
        elif kind == _SETTINGS:
            self._on_settings(flags, payload)
        elif kind == _PING:
            if not flags & _ACK:
                self._out.append(_frame(_PING, _ACK, 0, payload))
        elif kind == _WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == _GOAWAY:
            self._goaway = True
            self._maybe_close_after_goaway()
        elif kind == _PUSH_PROMISE:
            raise _ConnectionError(_PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown frame types are ignored, as the protocol requires

    def _on_settings(self, flags: int, payload: bytes) -> None:
        if flags & _ACK:
            return
        if len(payload) % 6:
            raise _ConnectionError(_FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
        for index in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, index)
            if key == _SETTINGS_INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ConnectionError(_FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
            elif key == _SETTINGS_MAX_FRAME_SIZE:
                self._peer_max_frame = value
        self._out.append(_frame(_SETTINGS, _ACK, 0))
        self._flush_pending()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(_FRAME_SIZE_ERROR, "WINDOW_UPDATE length is not 4")
        increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            self._send_window += increment
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
        self._flush_pending()

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(_PROTOCOL_ERROR, "HEADERS on stream 0")
        start = 0
        end = len(payload)
        if flags & _PADDED:
            end -= payload[0]
            start = 1
        if flags & _PRIORITY_FLAG:
            start += 5
        if start > end:
            raise _ConnectionError(_PROTOCOL_ERROR, "HEADERS padding exceeds the frame")
        block = payload[start:end]
        if flags & _END_HEADERS:
            self._on_header_block(flags, stream_id, block)
        else:
            self._continuation = (stream_id, flags, bytearray(block))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is None or self._continuation[0] != stream_id:
            raise _ConnectionError(_PROTOCOL_ERROR, "unexpected CONTINUATION")
        _, first_flags, block = self._continuation
        block += payload
        if len(block) > _MAX_HEADER_BLOCK:
            raise _ConnectionError(_PROTOCOL_ERROR, "header block too large")
        if flags & _END_HEADERS:
            self._continuation = None
            self._on_header_block(first_flags, stream_id, bytes(block))

    def _decode(self, block: bytes) -> dict[str, str]:
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table.dynamic_entries
        stateless = not table
        try:
            headers = cast(dict[str, str], dict(self._decoder.decode(block)))
        except hpack.HPACKError as exc:
            raise _ConnectionError(0x9, f"header block does not decode: {exc}") from None  # COMPRESSION_ERROR
        if stateless and not table:
            if len(self._header_cache) >= self._settings.header_cache_size:
                self._header_cache.clear()
            self._header_cache[block] = headers
        return headers

    def _on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        headers = self._decode(block)
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client end its side of the stream
            if flags & _END_STREAM:
                self._on_client_done(stream_id, stream)
            return
        if stream_id <= self._last_stream or stream_id % 2 == 0:
            raise _ConnectionError(_PROTOCOL_ERROR, f"stream id {stream_id} is not new")
        self._last_stream = stream_id
        if self._goaway:
            self._out.append(_frame(_RST_STREAM, 0, stream_id, struct.pack(">I", 0x7)))  # REFUSED_STREAM
            return
        path = headers.get(":path", "")
        if path == PROCESS_PATH:
            stream = _Stream("process", self._peer_initial_window)
            stream.processing = self._processor.open_stream()
        elif path == HEALTH_CHECK_PATH:
            stream = _Stream("health", self._peer_initial_window)
        else:
            logger.warning("grpc call to an unknown method peer=%s path=%r", self.peer, path)
            block = _RESPONSE_HEADERS + _trailers(_UNIMPLEMENTED, f"method {path} is not served here")
            self._out.append(_frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, block))
            return
        self._streams[stream_id] = stream
        if flags & _END_STREAM:
            self._on_client_done(stream_id, stream)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._received += len(payload)
        if self._received >= _REPLENISH_AT:
            self._out.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", self._received)))
            self._received = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # a stream already reset or finished: its late data is dropped
        data = payload
        if flags & _PADDED:
            data = payload[1 : len(payload) - payload[0]]
        buffer = stream.buffer
        buffer += data
        while len(buffer) >= 5:
            compressed = buffer[0]
            length = int.from_bytes(buffer[1:5], "big")
            if length > _MAX_MESSAGE:
                self._fail_stream(stream_id, stream, _UNIMPLEMENTED, "message too large")
                return
            if len(buffer) < 5 + length:
                break
            message = bytes(buffer[5 : 5 + length])
            del buffer[: 5 + length]
            if compressed:
                self._fail_stream(stream_id, stream, _UNIMPLEMENTED, "compressed messages are not supported")
                return
            self._on_message(stream_id, stream, message)
            if stream_id not in self._streams:
                return
        if flags & _END_STREAM:
            self._on_client_done(stream_id, stream)

    def _on_message(self, stream_id: int, stream: _Stream, message: bytes) -> None:
        if stream.kind == "process":
            processing = stream.processing
            if processing is None:
                return
            for answer in self._processor.handle_message(processing, message):
                self._send_message(stream_id, stream, answer)
            if processing.done:
                self._on_client_done(stream_id, stream)
            return
        else:
            try:
                service = health_pb2.HealthCheckRequest.FromString(message).service
            except Exception:
                service = None
            answers = [_SERVING if service in HEALTH_SERVICES else _SERVICE_UNKNOWN]
        for answer in answers:
            self._send_message(stream_id, stream, answer)

    def _on_client_done(self, stream_id: int, stream: _Stream) -> None:
        """The client half-closed: answer what is owed, then end the call with status OK."""
        if stream.pending:
            stream.pending.append(b"")  # marker: trailers follow once the data is out
            return
        self._finish(stream_id, stream)

    def _finish(self, stream_id: int, stream: _Stream) -> None:
        block = _OK_TRAILERS if stream.sent_headers else _RESPONSE_HEADERS + _OK_TRAILERS
        self._out.append(_frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, block))
        self._streams.pop(stream_id, None)
        self._end_processing(stream, "completed")
        self._maybe_close_after_goaway()

    def _fail_stream(self, stream_id: int, stream: _Stream, status: int, message: str) -> None:
        block = (b"" if stream.sent_headers else _RESPONSE_HEADERS) + _trailers(status, message)
        self._out.append(_frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, block))
        self._out.append(_frame(_RST_STREAM, 0, stream_id, struct.pack(">I", _NO_ERROR)))
        self._streams.pop(stream_id, None)
        self._end_processing(stream, "error")

    def _end_processing(self, stream: _Stream, outcome: str) -> None:
        if stream.processing is not None:
            self._processor.finish_stream(stream.processing, outcome)
            stream.processing = None

    def _send_message(self, stream_id: int, stream: _Stream, message: bytes) -> None:
        if not stream.sent_headers:
            self._out.append(_frame(_HEADERS, _END_HEADERS, stream_id, _RESPONSE_HEADERS))
            stream.sent_headers = True
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        if stream.pending or not self._write_data(stream_id, stream, framed):
            stream.pending.append(framed)

    def _write_data(self, stream_id: int, stream: _Stream, framed: bytes) -> bool:
        """Write `framed` now if both windows allow it whole; False leaves it to the caller to queue."""
        size = len(framed)
        if size > self._send_window or size > stream.send_window:
            return False
        self._send_window -= size
        stream.send_window -= size
        step = self._peer_max_frame
        for start in range(0, size, step):
            self._out.append(_frame(_DATA, 0, stream_id, framed[start : start + step]))
        return True

    def _flush_pending(self) -> None:
        for stream_id, stream in list(self._streams.items()):
            while stream.pending:
                head = stream.pending[0]
                if head == b"":
                    stream.pending.clear()
                    self._finish(stream_id, stream)
                    break
                if not self._write_data(stream_id, stream, head):
                    break
                stream.pending.pop(0)

    def _maybe_close_after_goaway(self) -> None:
        if self._goaway and not self._streams and self._transport is not None:
            self._flush()
            self._transport.close()

    def _flush(self) -> None:
        if self._out and self._transport is not None:
            self._transport.writelines(self._out)
        self._out = []


class H2GrpcServer:
    """Listens and owns the connections; `stop()` sends GOAWAY and waits (bounded) for open streams."""

    def __init__(self, processor: Processor, settings: H2Settings | None = None) -> None:
        self._processor = processor
        self._settings = settings or H2Settings()
        self._connections: set[GrpcH2Protocol] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._make_protocol, host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=1024
        )
        sockets = self._server.sockets
        bound: int = sockets[0].getsockname()[1] if sockets else 0
        return bound

    def _make_protocol(self) -> GrpcH2Protocol:
        protocol = GrpcH2Protocol(self._processor, self._settings, self._connections.discard)
        self._connections.add(protocol)
        return protocol

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.send_goaway()
        for _ in range(max(int(grace / 0.02), 1)):  # bounded wait for open streams to finish
            if not any(c.open_streams for c in self._connections):
                break
            await asyncio.sleep(0.02)
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
            self._server = None
