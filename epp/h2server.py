"""A small HTTP/2 (h2c) gRPC server for the EPP's two services, driven straight from the event loop.

Why: in grpcio every ext_proc stream costs several hundred microseconds of CPU in per-call machinery
(a task per call, completion-queue round trips through a poller thread, futures per read and write),
whatever the handler does. The EPP's calls are tiny and its answers are precomputed, so that machinery
is nearly all of its cost. This transport parses HTTP/2 frames in `data_received`, hands each gRPC
message to the `Processor` synchronously and writes the answers in one batch per read.

What it implements (RFC 9113, RFC 7541, gRPC over HTTP/2):
- the connection preface, SETTINGS (with ACK), PING (ACK), GOAWAY, RST_STREAM, WINDOW_UPDATE,
  HEADERS + CONTINUATION (padding and priority fields), DATA (padding), flow control in both directions;
- HPACK decoding with the `hpack` package and the default 4096-byte dynamic table; a repeated block
  that leaves the table as it found it (Envoy's, after its first request) is decoded once;
- requests checked as RFC 9113 section 8 says (pseudo-headers, field names and values, content-length
  against the DATA, trailers): a malformed one is a stream error (`epp.h2requests`);
- `envoy.service.ext_proc.v3.ExternalProcessor/Process` (bidirectional) and `grpc.health.v1.Health/Check`;
  any other method gets `UNIMPLEMENTED`; a message encoding other than identity gets `UNIMPLEMENTED`;
  a request that is not gRPC (not POST, not application/grpc) gets 405 or 415 with the reason as text;
- stream states as RFC 9113 section 5.1 says: frames after the client's RST_STREAM or END_STREAM are
  STREAM_CLOSED errors, frames that crossed the server's RST_STREAM are ignored.
Plaintext only: use the grpcio transport for TLS.

Limits, so that no peer gets unbounded memory or CPU (all in `H2Settings`):
- concurrent streams (advertised; more get REFUSED_STREAM), frame size 16384 (FRAME_SIZE_ERROR),
  header list size (advertised; HPACK inflation is bounded while decoding, COMPRESSION_ERROR past it),
  the accumulated HEADERS + CONTINUATION block;
- a gRPC message over `max_message_size` ends its call with RESOURCE_EXHAUSTED; partial messages of all
  streams together are bounded per connection;
- more than 100 DATA or CONTINUATION frames in a row that carry nothing end the connection
  (ENHANCE_YOUR_CALM);
- receive windows are granted as data is consumed and held back while answers wait for the peer's
  window (a peer that sends without reading is stopped by flow control); the socket stops being read
  while the kernel send buffer is full, so PING/SETTINGS floods from a peer that does not read are bounded;
- streams the client resets before the server answered anything, and streams the server resets because
  of the client, draw from a token bucket (rapid reset, CVE-2023-44487) that time and every normally
  completed call refill; an empty bucket ends the connection with ENHANCE_YOUR_CALM. Envoy ends every
  ext_proc stream with a reset once it has its answers, and a gateway's clients cancel some requests:
  neither empties the bucket; a client that opens streams only to reset them does.
Protocol errors end the connection with GOAWAY and the RFC's error code; stream errors reset the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import hpack
from grpc_health.v1 import health_pb2

from epp.h2requests import (
    GRPC_DEADLINE_EXCEEDED,
    GRPC_INTERNAL,
    GRPC_RESOURCE_EXHAUSTED,
    HEALTH_CHECK_PATH,
    OK_TRAILERS,
    PROCESS_PATH,
    RESPONSE_HEADERS,
    Decoded,
    trailers,
)
from epp.healthstate import NOT_SERVING, SERVING, health_status
from epp.processor import Processor, ProcessStream

logger = logging.getLogger(__name__)


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME = struct.Struct(">HBBBI")  # 24-bit length as (high 16, low 8), type, flags, stream id
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
_PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# error codes (RFC 9113 section 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB
_SETTINGS_HEADER_TABLE_SIZE, _SETTINGS_ENABLE_PUSH, _SETTINGS_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
_SETTINGS_INITIAL_WINDOW_SIZE, _SETTINGS_MAX_FRAME_SIZE, _SETTINGS_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535
_MAX_FRAME = 16384  # the default SETTINGS_MAX_FRAME_SIZE, which this server keeps
_HEADER_TABLE_SIZE = 4096  # HPACK dynamic table (the protocol's default), advertised all the same
_CACHEABLE_BLOCK = 1024  # larger header blocks are decoded every time, not remembered
_REMEMBERED_CLOSED = 1024  # closed streams remembered (at least), to answer their late frames right
_MAX_EMPTY_FRAMES = 100  # consecutive DATA/CONTINUATION frames that carry nothing and end nothing
_SHUTDOWN_PING = b"shutdown"  # the PING between the two GOAWAY frames of a graceful close
_LINGER_SECONDS = 1.0  # after a connection error: how long the client gets to read the GOAWAY

_SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()
_NOT_SERVING = health_pb2.HealthCheckResponse(
    status=health_pb2.HealthCheckResponse.NOT_SERVING
).SerializeToString()
_HEALTH_ANSWERS: dict[int, bytes] = {int(SERVING): _SERVING, int(NOT_SERVING): _NOT_SERVING}
_SERVICE_UNKNOWN = health_pb2.HealthCheckResponse(
    status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
).SerializeToString()


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True, slots=True)
class H2Settings:
    """Per-connection limits (the defaults suit one Envoy talking to one EPP)."""

    max_concurrent_streams: int = 1000
    header_cache_size: int = 256
    max_header_list_size: int = 16 * 1024  # decoded size as HPACK counts it (name + value + 32 each)
    max_message_size: int = 4 * 1024 * 1024  # one gRPC message, like gRPC's default receive limit
    stream_window: int = 1 << 20  # receive window of each stream (at least 65535)
    connection_window: int = 16 << 20  # receive window of the connection
    max_buffered: int = 32 << 20  # partial messages, and answers waiting for window, per connection
    reset_burst: int = 1000  # streams a client may reset (or make the server reset) at once ...
    reset_rate: float = 100.0  # ... and per second after that
    handshake_timeout: float = 10.0  # seconds a new connection has to send the preface and SETTINGS

    def __post_init__(self) -> None:
        if not _DEFAULT_WINDOW <= self.stream_window <= _MAX_WINDOW:
            raise ValueError(f"stream_window must be within {_DEFAULT_WINDOW}..{_MAX_WINDOW}")
        if not _DEFAULT_WINDOW <= self.connection_window <= _MAX_WINDOW:
            raise ValueError(f"connection_window must be within {_DEFAULT_WINDOW}..{_MAX_WINDOW}")


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _FRAME.pack(length >> 8, length & 0xFF, kind, flags, stream_id) + payload


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
    __slots__ = (
        "buffer",
        "client_done",
        "deadline",
        "expected",
        "final",
        "kind",
        "local_done",
        "owed",
        "pending",
        "processing",
        "recv_window",
        "send_credit",
        "sent_headers",
    )

    def __init__(self, kind: str, recv_window: int, expected: int) -> None:
        self.kind = kind  # "process", "health", or "refused" (a request that is not a gRPC call)
        self.buffer = bytearray()  # a partial gRPC message
        self.processing: ProcessStream | None = None
        self.send_credit = 0  # WINDOW_UPDATEs minus bytes sent; the window is the peer's initial + this
        self.recv_window = recv_window  # what the client may still send
        self.owed = 0  # bytes consumed but not yet granted back with WINDOW_UPDATE
        self.expected = expected  # content-length bytes still to come; -1: no content-length
        self.sent_headers = False
        self.client_done = False  # the client half-closed (END_STREAM)
        self.local_done = False  # the server's side ended; what the client still sends is discarded
        self.pending = bytearray()  # answers (gRPC-framed, or a refusal's text) waiting for window
        self.final: bytes | None = None  # trailers that follow once `pending` is out; b"": none (DATA ends)
        self.deadline = 0.0  # loop time when the call's grpc-timeout expires; 0: none


class GrpcH2Protocol(asyncio.Protocol):
    """One HTTP/2 connection."""

    def __init__(
        self,
        processor: Processor,
        settings: H2Settings,
        on_close: Callable[[GrpcH2Protocol], None],
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._processor = processor
        self._ready = ready
        self._settings = settings
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray()
        self._preface_seen = False
        self._settings_seen = False
        self._decoder = hpack.Decoder(max_header_list_size=settings.max_header_list_size)
        self._decoder.max_allowed_table_size = _HEADER_TABLE_SIZE  # larger: a decoding error
        self._header_cache: dict[bytes, Decoded] = {}
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, None] = {}  # streams with answers or trailers waiting for window
        # recently closed streams (oldest first): True when this server reset the stream (late frames
        # are ignored quietly), False when it ended otherwise (late frames are the client's error)
        self._closed_ids: dict[int, bool] = {}
        self._last_stream = 0
        self._continuation: tuple[int, int, bytearray] | None = None  # stream id, flags, block so far
        self._send_window = _DEFAULT_WINDOW
        self._peer_initial_window = _DEFAULT_WINDOW
        self._peer_max_frame = _MAX_FRAME
        self._recv_window = settings.connection_window
        self._conn_owed = 0
        self._empty_frames = 0  # consecutive frames that carry nothing (CVE-2019-9518 flood)
        self._partial = 0  # bytes of partial messages, all streams
        self._pending = 0  # bytes of answers waiting for window, all streams
        self._reset_tokens = float(settings.reset_burst)
        self._reset_stamp = time.monotonic()
        self._out: list[bytes] = []
        self._goaway = False  # no new streams: the final GOAWAY was sent, or the client sent one
        self._draining = False  # the first GOAWAY of a graceful close was sent
        self._closed = False
        self._linger: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None  # fires at the earliest grpc-timeout
        self._handshake: asyncio.TimerHandle | None = None  # closes a connection that never starts
        self.peer = "-"

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        settings = struct.pack(
            ">HIHIHIHI",
            _SETTINGS_HEADER_TABLE_SIZE,
            _HEADER_TABLE_SIZE,
            _SETTINGS_MAX_CONCURRENT_STREAMS,
            self._settings.max_concurrent_streams,
            _SETTINGS_INITIAL_WINDOW_SIZE,
            self._settings.stream_window,
            _SETTINGS_MAX_HEADER_LIST_SIZE,
            self._settings.max_header_list_size,
        )
        self._out.append(_frame(_SETTINGS, 0, 0, settings))
        grow = self._settings.connection_window - _DEFAULT_WINDOW
        if grow:
            self._out.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", grow)))
        self._flush()
        self._handshake = self._loop.call_later(self._settings.handshake_timeout, self._on_handshake_timeout)
        logger.debug("h2 connection opened peer=%s", self.peer)

    def _on_handshake_timeout(self) -> None:
        self._handshake = None
        if self._settings_seen or self._transport is None:
            return
        logger.warning(
            "h2 connection closed peer=%s: no HTTP/2 preface and SETTINGS within %ss",
            self.peer,
            self._settings.handshake_timeout,
        )
        self._abort(PROTOCOL_ERROR, "no connection preface in time")

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._buffer += data
        try:
            self._consume()
            self._grant_connection_window()
        except _ConnectionError as exc:
            logger.warning("h2 connection error peer=%s code=%d reason=%s", self.peer, exc.code, exc)
            self._abort(exc.code, str(exc))
            return
        except Exception:  # a defect here must not kill the connection silently
            logger.exception("h2 connection failed peer=%s", self.peer)
            self._abort(INTERNAL_ERROR, "internal error")
            return
        self._flush()

    def pause_writing(self) -> None:
        """The kernel send buffer is full: stop reading, so a peer that does not read cannot make the
        server queue answers (PING and SETTINGS acks, resets) without bound."""
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        for handle in (self._watchdog, self._handshake):
            if handle is not None:
                handle.cancel()
        self._watchdog = self._handshake = None
        for stream in self._streams.values():
            self._end_processing(stream, "cancelled")
        self._streams.clear()
        self._blocked.clear()
        self._closed_ids.clear()
        self._header_cache.clear()
        self._buffer.clear()
        self._transport = None
        self._on_close(self)
        logger.debug("h2 connection closed peer=%s", self.peer)

    # -- shutdown

    def send_goaway(self) -> None:
        """Start a graceful close (RFC 9113 section 6.8): a GOAWAY with the highest stream id first, so
        streams the client is sending right now are still served, then a PING; when its ACK shows the
        client has seen the GOAWAY, the final GOAWAY names the last stream served and later ones are
        refused. Open streams may finish; the connection closes when none is left."""
        if self._transport is None or self._goaway or self._draining or self._closed:
            return
        self._draining = True
        self._out.append(_frame(_GOAWAY, 0, 0, struct.pack(">II", _MAX_WINDOW, NO_ERROR)))
        self._out.append(_frame(_PING, 0, 0, _SHUTDOWN_PING))
        self._flush()

    def _send_final_goaway(self) -> None:
        self._goaway = True
        self._out.append(_frame(_GOAWAY, 0, 0, struct.pack(">II", self._last_stream, NO_ERROR)))
        self._maybe_close_after_goaway()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def reading_paused(self) -> bool:
        return self._transport is not None and not self._transport.is_reading()

    @property
    def output_backlog(self) -> int:
        """Bytes written to the transport that the kernel has not taken yet."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def _abort(self, code: int, reason: str) -> None:
        """GOAWAY `code`, end every stream, and close once the client has had the chance to read why
        (`_half_close`)."""
        debug = reason.encode("utf-8", "replace")[:256]
        self._out.append(_frame(_GOAWAY, 0, 0, struct.pack(">II", self._last_stream, code) + debug))
        self._flush()
        self._closed = True  # from here on nothing is written or read
        for stream_id, stream in list(self._streams.items()):
            self._close_stream(stream_id, stream, "cancelled")
        self._half_close()

    def _half_close(self) -> None:
        """End the connection without a TCP reset: stop writing (FIN), discard what still arrives, and close
        when the client does or after `_LINGER_SECONDS` (closing with unread input makes the kernel send a
        reset, which can destroy the last frames written before the client reads them)."""
        self._closed = True
        transport = self._transport
        if transport is None:
            return
        if transport.can_write_eof() and self._loop is not None:
            transport.write_eof()
            transport.resume_reading()
            self._linger = self._loop.call_later(_LINGER_SECONDS, transport.close)
        else:
            transport.close()

    # -- frames

    def _consume(self) -> None:
        buffer = self._buffer
        if not self._preface_seen:
            if len(buffer) < len(PREFACE) and PREFACE.startswith(bytes(buffer)):
                return
            if buffer[: len(PREFACE)] != PREFACE:
                raise _ConnectionError(PROTOCOL_ERROR, _describe_bad_preface(bytes(buffer[:64])))
            del buffer[: len(PREFACE)]
            self._preface_seen = True
        offset = 0
        size = len(buffer)
        try:
            while size - offset >= 9 and not self._closed:
                high, low, kind, flags, stream_id = _FRAME.unpack_from(buffer, offset)
                length = (high << 8) | low
                if length > _MAX_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"a {length}-byte frame exceeds {_MAX_FRAME}")
                if size - offset - 9 < length:
                    break
                payload = bytes(buffer[offset + 9 : offset + 9 + length])
                offset += 9 + length
                self._handle_frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
        finally:
            if offset:
                del buffer[:offset]

    def _handle_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if not self._settings_seen:
            if kind != _SETTINGS or flags & _ACK:
                raise _ConnectionError(PROTOCOL_ERROR, "the first frame after the preface must be SETTINGS")
            self._settings_seen = True
            if self._handshake is not None:
                self._handshake.cancel()
                self._handshake = None
        if self._continuation is not None and kind != _CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == _DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == _HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == _CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == _RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif kind == _SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == _PING:
            self._on_ping(flags, stream_id, payload)
        elif kind == _WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == _GOAWAY:
            if stream_id != 0:
                raise _ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            self._goaway = True
            self._maybe_close_after_goaway()
        elif kind == _PRIORITY:
            self._on_priority(stream_id, payload)
        elif kind == _PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "a client may not push")
        # unknown frame types are ignored, as the protocol requires

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnectionError(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise _ConnectionError(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
        if not flags & _ACK:
            self._out.append(_frame(_PING, _ACK, 0, payload))
        elif payload == _SHUTDOWN_PING and self._draining and not self._goaway:
            self._send_final_goaway()

    def _on_priority(self, stream_id: int, payload: bytes) -> None:
        """Priority signals are parsed and otherwise ignored (RFC 9113 section 5.3.2)."""
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._reset_stream(stream_id, FRAME_SIZE_ERROR)
        elif int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == stream_id:
            self._reset_stream(stream_id, PROTOCOL_ERROR)  # a stream may not depend on itself

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & _ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
        for key, value in struct.iter_unpack(">HI", payload):
            if key == _SETTINGS_INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                self._peer_initial_window = value  # stream windows are relative to it
            elif key == _SETTINGS_MAX_FRAME_SIZE:
                if not _MAX_FRAME <= value <= 2**24 - 1:
                    raise _ConnectionError(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self._peer_max_frame = value
            elif key == _SETTINGS_ENABLE_PUSH and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value} is not 0 or 1")
        self._out.append(_frame(_SETTINGS, _ACK, 0))
        self._flush_blocked()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE length is not 4")
        increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            if self._send_window + increment > _MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection send window above 2^31-1")
            self._send_window += increment
            self._flush_blocked()
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise _ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return  # a closed stream: allowed, nothing to do
        if increment == 0:
            self._reset_stream(stream_id, PROTOCOL_ERROR)
            return
        if self._peer_initial_window + stream.send_credit + increment > _MAX_WINDOW:
            self._reset_stream(stream_id, FLOW_CONTROL_ERROR)
            return
        stream.send_credit += increment
        if stream_id in self._blocked:
            self._flush_stream(stream_id, stream)

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM length is not 4")
        if self._is_idle(stream_id):
            raise _ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id in self._closed_ids:
                self._closed_ids[stream_id] = False  # what follows the client's RST_STREAM is an error
            return
        # Envoy resets every ext_proc stream once the request no longer needs it: after the decision that
        # is the stream's normal end; before it, the request was abandoned.
        decided = stream.processing is not None and stream.processing.decided
        self._close_stream(stream_id, stream, "completed" if decided else "cancelled")
        if not stream.sent_headers:  # reset before the server answered anything: wasted work
            self._draw_reset_token()

    def _is_idle(self, stream_id: int) -> bool:
        return stream_id > self._last_stream or stream_id % 2 == 0

    # -- headers

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & _PADDED:
            if not payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PADDED HEADERS without a pad length")
            end -= payload[0]
            start = 1
        depends_on_itself = False
        if flags & _PRIORITY_FLAG:
            if end - start >= 5:
                depends_on_itself = (
                    int.from_bytes(payload[start : start + 4], "big") & 0x7FFFFFFF
                ) == stream_id
            start += 5
        if start > end:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS padding exceeds the frame")
        block = payload[start:end]
        if depends_on_itself:
            flags |= 0x100  # remembered until the block is decoded: a stream error then
        if flags & _END_HEADERS:
            self._on_header_block(flags, stream_id, block)
        else:
            self._continuation = (stream_id, flags, bytearray(block))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is None or self._continuation[0] != stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
        _, first_flags, block = self._continuation
        if payload or flags & _END_HEADERS:
            self._empty_frames = 0
        else:
            self._count_empty_frame()
        block += payload
        if len(block) > 2 * self._settings.max_header_list_size:
            raise _ConnectionError(ENHANCE_YOUR_CALM, f"header block above {len(block) - len(payload)} bytes")
        if flags & _END_HEADERS:
            self._continuation = None
            self._on_header_block(first_flags, stream_id, bytes(block))

    def _count_empty_frame(self) -> None:
        self._empty_frames += 1
        if self._empty_frames > _MAX_EMPTY_FRAMES:
            raise _ConnectionError(ENHANCE_YOUR_CALM, f"more than {_MAX_EMPTY_FRAMES} empty frames in a row")

    def _decode(self, block: bytes) -> Decoded:
        """Decode a header block; a block seen before is not decoded again while the HPACK dynamic table
        is as it was then (Envoy's request blocks are such blocks after its first request)."""
        cached = self._header_cache.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table
        before = (table.maxsize, tuple(table.dynamic_entries))
        try:
            headers = self._decoder.decode(block, raw=True)
        except hpack.OversizedHeaderListError:
            raise _ConnectionError(
                COMPRESSION_ERROR, f"header list above {self._settings.max_header_list_size} bytes"
            ) from None
        except hpack.HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, f"header block does not decode: {exc}") from None
        decoded = Decoded([(bytes(n).decode("latin-1"), bytes(v).decode("latin-1")) for n, v in headers])
        if (table.maxsize, tuple(table.dynamic_entries)) != before:
            self._header_cache.clear()  # remembered blocks decoded against the table as it was
        elif block and len(block) <= _CACHEABLE_BLOCK and block[0] & 0xE0 != 0x20:  # no size update
            if len(self._header_cache) >= self._settings.header_cache_size:
                self._header_cache.clear()
            self._header_cache[block] = decoded
        return decoded

    def _on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        headers = self._decode(block)  # always: the HPACK state must follow every block
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._on_trailers(flags, stream_id, stream, headers)
            return
        if stream_id % 2 == 0:
            raise _ConnectionError(PROTOCOL_ERROR, f"stream id {stream_id} is even: clients use odd ids")
        if stream_id <= self._last_stream:
            self._on_late_frame(stream_id, "HEADERS")
            return
        self._last_stream = stream_id
        if self._goaway:
            self._reset_stream(stream_id, REFUSED_STREAM, count=False)
            return
        if flags & 0x100:
            self._reset_stream(stream_id, PROTOCOL_ERROR)  # a stream may not depend on itself
            return
        if len(self._streams) >= self._settings.max_concurrent_streams:
            logger.warning(
                "h2 stream refused peer=%s stream=%d: more than %d concurrent streams",
                self.peer,
                stream_id,
                self._settings.max_concurrent_streams,
            )
            self._reset_stream(stream_id, REFUSED_STREAM)
            return
        problem = headers.problem
        if problem is None and flags & _END_STREAM and headers.content_length > 0:
            problem = f"content-length {headers.content_length} on a request without content"
        if problem is not None:
            self._on_malformed(stream_id, problem)
            return
        if headers.refusal is not None:
            self._refuse(flags, stream_id, headers)
            return
        if headers.path == PROCESS_PATH:
            stream = _Stream("process", self._settings.stream_window, headers.content_length)
            stream.processing = self._processor.open_stream()
        else:
            stream = _Stream("health", self._settings.stream_window, headers.content_length)
        self._streams[stream_id] = stream
        if headers.timeout is not None:
            self._set_deadline(stream, headers.timeout)
        if flags & _END_STREAM:
            self._on_client_done(stream_id, stream)

    def _on_trailers(self, flags: int, stream_id: int, stream: _Stream, headers: Decoded) -> None:
        """A header block on an open stream: trailers, which end the client's side (RFC 9113 section 8.1)."""
        if stream.client_done:
            self._reset_stream(stream_id, STREAM_CLOSED)
            return
        problem = headers.trailer_problem
        if problem is None and not flags & _END_STREAM:
            problem = "trailers without END_STREAM"
        if problem is None and flags & 0x100:
            problem = "the stream depends on itself"
        if problem is None and stream.expected > 0:
            problem = f"trailers while content-length still expects {stream.expected} bytes"
        if problem is not None:
            self._on_malformed(stream_id, problem)
            return
        self._on_client_end(stream_id, stream)

    def _on_malformed(self, stream_id: int, problem: str) -> None:
        logger.warning("h2 malformed request peer=%s stream=%d: %s", self.peer, stream_id, problem)
        self._reset_stream(stream_id, PROTOCOL_ERROR)

    def _on_late_frame(self, stream_id: int, kind: str) -> None:
        """DATA or HEADERS on a stream that is closed (RFC 9113 section 5.1): ignored when it crossed
        the server's RST_STREAM; otherwise the client sent it after its END_STREAM or RST_STREAM, a
        STREAM_CLOSED error (of the connection for HEADERS, as RFC 7540 required)."""
        reset_here = self._closed_ids.get(stream_id)
        if reset_here:
            return
        if kind == "HEADERS":
            if reset_here is None:  # never opened, or closed too long ago to know
                raise _ConnectionError(PROTOCOL_ERROR, f"stream id {stream_id} is not new")
            raise _ConnectionError(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        self._reset_stream(stream_id, STREAM_CLOSED)

    def _refuse(self, flags: int, stream_id: int, headers: Decoded) -> None:
        """Answer a request this server does not run, without running anything."""
        assert headers.refusal is not None
        if headers.path not in (PROCESS_PATH, HEALTH_CHECK_PATH):
            logger.warning("grpc call to an unknown method peer=%s path=%r", self.peer, headers.path)
        if not headers.body:  # a trailers-only answer; a gRPC client still sending may stop now
            self._out.append(_frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, headers.refusal))
            if flags & _END_STREAM:
                self._remember_closed(stream_id, reset=False)
            else:
                self._reset_stream(stream_id, NO_ERROR, count=False)
            return
        # Not a gRPC request: an HTTP status with the reason as text (through flow control, like any
        # answer); the stream stays open until the client's side ends, its content read and discarded.
        stream = _Stream("refused", self._settings.stream_window, headers.content_length)
        self._streams[stream_id] = stream
        self._out.append(_frame(_HEADERS, _END_HEADERS, stream_id, headers.refusal))
        stream.sent_headers = True
        stream.client_done = bool(flags & _END_STREAM)
        stream.pending += headers.body
        self._pending += len(headers.body)
        stream.final = b""  # the text ends the stream
        self._blocked[stream_id] = None
        self._flush_stream(stream_id, stream)

    def _on_client_end(self, stream_id: int, stream: _Stream) -> None:
        """The client's side of an open stream ended (END_STREAM on DATA or trailers)."""
        if stream.local_done:  # everything was answered: the stream is over
            stream.client_done = True
            self._close_stream(stream_id, stream, "refused")
        elif stream.final is not None:  # answered: the end of the answer waits for window
            stream.client_done = True
        else:
            self._on_client_done(stream_id, stream)

    # -- data

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        if size or flags & _END_STREAM:
            self._empty_frames = 0
        else:
            self._count_empty_frame()
        if size > self._recv_window:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self._recv_window -= size
        self._conn_owed += size  # consumed at once: granted back in `_grant_connection_window`
        data = payload
        if flags & _PADDED:
            if not payload or payload[0] >= size:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA padding exceeds the frame")
            data = payload[1 : size - payload[0]]
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise _ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            self._on_late_frame(stream_id, "DATA")
            return
        if stream.client_done:
            self._reset_stream(stream_id, STREAM_CLOSED)
            return
        if size > stream.recv_window:
            self._reset_stream(stream_id, FLOW_CONTROL_ERROR)
            return
        stream.recv_window -= size
        stream.owed += size
        if stream.expected >= 0 and not self._within_content_length(stream_id, stream, len(data), flags):
            return
        if stream.final is not None or stream.local_done:  # answered: the rest of the request is discarded
            if flags & _END_STREAM:
                self._on_client_end(stream_id, stream)
            elif stream.local_done:
                self._grant_stream_window(stream_id, stream)
            return
        if data:
            self._on_bytes(stream_id, stream, data)
            if self._streams.get(stream_id) is not stream:
                return
        if flags & _END_STREAM:
            self._on_client_done(stream_id, stream)
        else:
            self._grant_stream_window(stream_id, stream)

    def _within_content_length(self, stream_id: int, stream: _Stream, size: int, flags: int) -> bool:
        """Count DATA against the request's content-length (RFC 9113 section 8.1.1): more than it
        says, or less by the end of the stream, makes the request malformed."""
        expected = stream.expected - size
        if expected < 0:
            self._on_malformed(stream_id, f"DATA goes {-expected} bytes past content-length")
            return False
        if expected and flags & _END_STREAM:
            self._on_malformed(stream_id, f"DATA ends {expected} bytes short of content-length")
            return False
        stream.expected = expected
        return True

    def _on_bytes(self, stream_id: int, stream: _Stream, data: bytes) -> None:
        buffer = stream.buffer
        if buffer:  # a message continues: gather it in the stream's buffer
            if self._partial + len(data) > self._settings.max_buffered:
                self._fail_stream(
                    stream_id, stream, GRPC_RESOURCE_EXHAUSTED, "the connection's buffer is full"
                )
                return
            buffer += data
            self._partial += len(data)
            consumed = self._on_messages(stream_id, stream, buffer)
            if consumed and self._streams.get(stream_id) is stream:
                del buffer[:consumed]
                self._partial -= consumed
            return
        consumed = self._on_messages(stream_id, stream, data)  # whole messages straight from the frame
        rest = len(data) - consumed
        if rest and consumed >= 0 and self._streams.get(stream_id) is stream:
            if self._partial + rest > self._settings.max_buffered:
                self._fail_stream(
                    stream_id, stream, GRPC_RESOURCE_EXHAUSTED, "the connection's buffer is full"
                )
                return
            buffer += data[consumed:]
            self._partial += rest

    def _on_messages(self, stream_id: int, stream: _Stream, source: bytes | bytearray) -> int:
        """Run every whole gRPC message in `source`; return the bytes consumed (-1: the call ended)."""
        consumed = 0
        limit = self._settings.max_message_size
        size = len(source)
        while size - consumed >= 5:
            compressed = source[consumed]
            length = int.from_bytes(source[consumed + 1 : consumed + 5], "big")
            if length > limit:
                self._fail_stream(
                    stream_id, stream, GRPC_RESOURCE_EXHAUSTED, f"a {length}-byte message exceeds {limit}"
                )
                return -1
            if compressed:
                self._fail_stream(
                    stream_id, stream, GRPC_INTERNAL, "compressed flag set without grpc-encoding"
                )
                return -1
            if size - consumed < 5 + length:
                break
            message = bytes(source[consumed + 5 : consumed + 5 + length])
            consumed += 5 + length
            self._on_message(stream_id, stream, message)
            if self._streams.get(stream_id) is not stream:
                return -1
        return consumed

    def _on_message(self, stream_id: int, stream: _Stream, message: bytes) -> None:
        if stream.kind == "process":
            processing = stream.processing
            if processing is None:
                return
            try:
                answers = self._processor.handle_message(processing, message)
            except Exception:
                logger.exception("ext_proc message failed peer=%s stream=%d", self.peer, stream_id)
                self._fail_stream(stream_id, stream, GRPC_INTERNAL, "the EPP failed on this message")
                return
            for answer in answers:
                self._send_message(stream_id, stream, answer)
            if processing.done:
                self._end_call(stream_id, stream)
            return
        try:
            service: str | None = health_pb2.HealthCheckRequest.FromString(message).service
        except Exception:
            service = None
        status = health_status(service, ready=self._ready()) if service is not None else None
        health_answer: bytes = _HEALTH_ANSWERS[status] if status is not None else _SERVICE_UNKNOWN
        self._send_message(stream_id, stream, health_answer)

    # -- stream ends

    def _on_client_done(self, stream_id: int, stream: _Stream) -> None:
        """The client half-closed: answer what is owed, then end the call with status OK."""
        stream.client_done = True
        if stream.buffer:  # the client ended inside a message
            self._fail_stream(stream_id, stream, GRPC_INTERNAL, "the request ended inside a message")
            return
        self._end_call(stream_id, stream)

    def _end_call(self, stream_id: int, stream: _Stream) -> None:
        block = OK_TRAILERS if stream.sent_headers else RESPONSE_HEADERS + OK_TRAILERS
        if stream.pending:
            stream.final = block  # trailers follow once the data is out
            return
        self._send_final(stream_id, stream, block, "completed")

    def _send_final(self, stream_id: int, stream: _Stream, block: bytes, outcome: str) -> None:
        self._end_stream(stream_id, stream, block, outcome, NO_ERROR)

    def _end_stream(self, stream_id: int, stream: _Stream, block: bytes, outcome: str, code: int) -> None:
        """Send the trailers `block` (b"": an empty DATA frame ends the stream); while the client still
        sends, RST_STREAM `code` tells it to stop, but a refused request is read to its end."""
        if block:
            self._out.append(_frame(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, block))
        else:
            self._out.append(_frame(_DATA, _END_STREAM, stream_id))
        if stream.client_done:
            self._close_stream(stream_id, stream, outcome)
        elif stream.kind == "refused":
            stream.local_done = True
            self._grant_stream_window(stream_id, stream)
        else:
            self._out.append(_frame(_RST_STREAM, 0, stream_id, struct.pack(">I", code)))
            self._close_stream(stream_id, stream, outcome, reset=True)

    def _fail_stream(self, stream_id: int, stream: _Stream, status: int, message: str) -> None:
        logger.warning(
            "grpc call failed peer=%s stream=%d status=%d: %s", self.peer, stream_id, status, message
        )
        block = (b"" if stream.sent_headers else RESPONSE_HEADERS) + trailers(status, message)
        self._send_final(stream_id, stream, block, "error")

    def _set_deadline(self, stream: _Stream, seconds: float) -> None:
        """One watchdog timer per connection, set for the earliest deadline, instead of one per call."""
        if self._loop is None:
            return
        stream.deadline = self._loop.time() + seconds
        if self._watchdog is None or stream.deadline < self._watchdog.when():
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._watchdog = self._loop.call_at(stream.deadline, self._on_watchdog)

    def _on_watchdog(self) -> None:
        self._watchdog = None
        if self._closed or self._loop is None:
            return
        now = self._loop.time()
        earliest = 0.0
        for stream_id, stream in list(self._streams.items()):
            if not stream.deadline or self._streams.get(stream_id) is not stream:
                continue
            if stream.deadline <= now:
                self._on_deadline(stream_id, stream)
            elif not earliest or stream.deadline < earliest:
                earliest = stream.deadline
        if earliest:
            self._watchdog = self._loop.call_at(earliest, self._on_watchdog)
        self._flush()

    def _on_deadline(self, stream_id: int, stream: _Stream) -> None:
        block = (b"" if stream.sent_headers else RESPONSE_HEADERS) + trailers(
            GRPC_DEADLINE_EXCEEDED, "deadline exceeded"
        )
        self._end_stream(stream_id, stream, block, "cancelled", CANCEL)

    def _reset_stream(self, stream_id: int, code: int, *, count: bool = True) -> None:
        """RST_STREAM `stream_id`; `count` when the client's behaviour caused it (rapid-reset budget)."""
        self._out.append(_frame(_RST_STREAM, 0, stream_id, struct.pack(">I", code)))
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._close_stream(stream_id, stream, "cancelled" if code == CANCEL else "error", reset=True)
        else:
            self._remember_closed(stream_id, reset=True)
        if count:
            self._draw_reset_token()

    def _remember_closed(self, stream_id: int, *, reset: bool) -> None:
        closed = self._closed_ids
        closed[stream_id] = reset
        if len(closed) > 2 * _REMEMBERED_CLOSED:  # keep the newest half (amortised: no scan per stream)
            self._closed_ids = dict(list(closed.items())[-_REMEMBERED_CLOSED:])

    def _draw_reset_token(self) -> None:
        now = time.monotonic()
        settings = self._settings
        tokens = min(
            float(settings.reset_burst), self._reset_tokens + (now - self._reset_stamp) * settings.reset_rate
        )
        self._reset_stamp = now
        if tokens < 1.0:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "too many reset streams")
        self._reset_tokens = tokens - 1.0

    def _close_stream(self, stream_id: int, stream: _Stream, outcome: str, *, reset: bool = False) -> None:
        if self._streams.pop(stream_id, None) is None:
            return
        self._remember_closed(stream_id, reset=reset)
        if outcome == "completed" and self._reset_tokens < self._settings.reset_burst:
            self._reset_tokens += 1.0  # a call that did its work earns a reset back
        if stream.pending:
            self._blocked.pop(stream_id, None)
            self._pending -= len(stream.pending)
        self._partial -= len(stream.buffer)
        stream.final = None
        self._end_processing(stream, outcome)
        self._maybe_close_after_goaway()

    def _end_processing(self, stream: _Stream, outcome: str) -> None:
        if stream.processing is not None:
            self._processor.finish_stream(stream.processing, outcome)
            stream.processing = None

    # -- sending

    def _send_message(self, stream_id: int, stream: _Stream, message: bytes) -> None:
        if not stream.sent_headers:
            self._out.append(_frame(_HEADERS, _END_HEADERS, stream_id, RESPONSE_HEADERS))
            stream.sent_headers = True
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        if stream.pending:
            stream.pending += framed
            self._pending += len(framed)
            return
        written = self._write_data(stream_id, stream, framed)
        if written < len(framed):
            stream.pending += framed[written:]
            self._pending += len(framed) - written
            self._blocked[stream_id] = None

    def _write_data(self, stream_id: int, stream: _Stream, data: bytes | bytearray) -> int:
        """Write as much of `data` as both send windows allow; return how much that was."""
        size = min(len(data), self._send_window, self._peer_initial_window + stream.send_credit)
        if size <= 0:
            return 0
        self._send_window -= size
        stream.send_credit -= size
        step = self._peer_max_frame
        for start in range(0, size, step):
            self._out.append(_frame(_DATA, 0, stream_id, bytes(data[start : min(start + step, size)])))
        return size

    def _flush_stream(self, stream_id: int, stream: _Stream) -> None:
        written = self._write_data(stream_id, stream, stream.pending)
        if written:
            del stream.pending[:written]
            self._pending -= written
        if stream.pending:
            return
        self._blocked.pop(stream_id, None)
        if stream.final is not None:
            block, stream.final = stream.final, None
            self._send_final(stream_id, stream, block, "refused" if stream.kind == "refused" else "completed")
        elif not stream.client_done:
            self._grant_stream_window(stream_id, stream)

    def _flush_blocked(self) -> None:
        for stream_id in list(self._blocked):
            if self._send_window <= 0:
                break
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._flush_stream(stream_id, stream)

    # -- receive windows

    def _grant_stream_window(self, stream_id: int, stream: _Stream) -> None:
        """Give back what the stream consumed, unless its answers pile up (the client is not reading)."""
        window = self._settings.stream_window
        if stream.owed >= window // 4 and len(stream.pending) <= window:
            self._out.append(_frame(_WINDOW_UPDATE, 0, stream_id, struct.pack(">I", stream.owed)))
            stream.recv_window += stream.owed
            stream.owed = 0

    def _grant_connection_window(self) -> None:
        window = self._settings.connection_window
        if self._conn_owed >= window // 4 and self._pending <= self._settings.max_buffered:
            self._out.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", self._conn_owed)))
            self._recv_window += self._conn_owed
            self._conn_owed = 0

    def _maybe_close_after_goaway(self) -> None:
        if self._goaway and not self._streams and self._transport is not None and not self._closed:
            self._flush()
            self._half_close()  # a client's GOAWAY may be followed by frames already on their way

    def _flush(self) -> None:
        if self._out and self._transport is not None and not self._closed:
            self._transport.writelines(self._out)
        self._out = []


class H2GrpcServer:
    """Listens and owns the connections; `stop()` sends GOAWAY and waits (bounded) for open streams."""

    def __init__(
        self,
        processor: Processor,
        settings: H2Settings | None = None,
        *,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._processor = processor
        self._ready = ready
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

    @property
    def connections(self) -> tuple[GrpcH2Protocol, ...]:
        return tuple(self._connections)

    def _make_protocol(self) -> GrpcH2Protocol:
        protocol = GrpcH2Protocol(self._processor, self._settings, self._connections.discard, self._ready)
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
