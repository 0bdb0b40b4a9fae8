"""The ext_proc `Process` stream: one per HTTP request, every message kind answered, every stream logged.

Where the decision is made depends on the body mode Envoy announces in the stream's first message
(`protocol_config`):
- NONE, STREAMED (or not announced): on `request_headers`, from what the headers say.
- BUFFERED, BUFFERED_PARTIAL: headers pass; the decision rides on the answer to the last body chunk,
  after reading `model` from the OpenAI-style JSON body.
- FULL_DUPLEX_STREAMED: nothing is answered until the body ends (or trailers arrive); then the headers
  answer carries the decision and the body goes back unchanged.
A request without a body (headers with end_of_stream) is decided on its headers in every mode.

The GIE endpoint-picker protocol (`epp.protocol`): the request's subset hint (metadata on the request
headers message) limits the decision; a decision may list fallbacks after the primary; the served endpoint
the proxy reports on the response path is counted (`epp_served_total`) and logged with the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from epp import responses
from epp.endpoints import Endpoint
from epp.picker import PICKED, SHED, Picker
from epp.protocol import Subset, SubsetReader, join_endpoints, read_served
from epp.telemetry import MESSAGE_KINDS, EppMetrics
from telemetry.logoutput import log_info

logger = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"
METHOD_NAME = "Process"

_BodyMode = processing_mode_pb2.ProcessingMode
_DECIDE_ON_HEADERS = frozenset({_BodyMode.NONE, _BodyMode.STREAMED, _BodyMode.GRPC})
_DECIDE_ON_BODY = frozenset({_BodyMode.BUFFERED, _BodyMode.BUFFERED_PARTIAL})
_RESPONSE_KINDS = frozenset({"response_headers", "response_body", "response_trailers"})
_LOGGED_HEADERS = frozenset({":path", ":method", "x-request-id"})


@dataclass(frozen=True, slots=True)
class ProcessorSettings:
    expect_response_messages: bool = False  # True when the processing mode sends response phases on purpose
    max_body_bytes: int = 1 << 20  # larger bodies are passed on without reading `model`


class ProcessStream:
    """What one stream has seen so far (owned by one `process` call)."""

    __slots__ = (
        "body",
        "body_mode",
        "decided",
        "done",
        "endpoint",
        "kinds",
        "method",
        "model",
        "path",
        "pick",
        "request_id",
        "response_body_mode",
        "served",
        "started",
        "subset",
    )

    def __init__(self, serial: int) -> None:
        self.request_id = f"stream-{serial}"
        self.path = "-"
        self.method = "-"
        self.model = "-"
        self.endpoint = "-"
        self.pick: tuple[Endpoint, ...] = ()
        self.subset: Subset | None = None  # the request's subset hint, when it has one
        self.served = "-"  # the endpoint the proxy reports it served the request from
        self.body_mode = _BodyMode.NONE
        self.response_body_mode = _BodyMode.NONE
        self.decided = False
        self.done = False  # nothing more to answer: the transport may end the call now
        self.body: list[bytes] = []
        self.kinds: list[str] = []
        self.started = time.perf_counter_ns()


class Processor:
    def __init__(self, picker: Picker, metrics: EppMetrics, settings: ProcessorSettings) -> None:
        self._picker = picker
        self._metrics = metrics
        self._settings = settings
        self._serial = 0
        # the serialized answer and the pick's text, per pick (headers answers; buffered-body answers)
        self._pick_cache: dict[tuple[Endpoint, ...], tuple[bytes, str]] = {}
        self._body_pick_cache: dict[tuple[Endpoint, ...], tuple[bytes, str]] = {}
        self._subsets = SubsetReader()
        self._pass = {kind: responses.build_pass_through(kind).SerializeToString() for kind in MESSAGE_KINDS}
        self._tally = metrics.tally
        self._lines: list[tuple[str, tuple[object, ...]]] = []  # per-request lines not written yet

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        """The generic handler for `Process`; messages stay bytes until this class parses them."""
        method = grpc.stream_stream_rpc_method_handler(self.process)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD_NAME: method})

    async def process(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        stream = self.open_stream()
        outcome = "completed"
        try:
            async for raw in requests:
                for answer in self.handle_message(stream, raw):
                    yield answer
                if stream.done:
                    break
            # grpcio ends the request iterator on a client cancel too, and cancels this task a little later.
            # A stream that ends owing an answer waits a moment for that, so it is logged as cancelled.
            await asyncio.sleep(0 if stream.decided else 0.05)
        except asyncio.CancelledError:
            # Envoy resets each stream once it has what it needs: after the decision that is the normal end.
            outcome = "completed" if stream.decided else "cancelled"
            raise
        except Exception as exc:
            outcome = "error"
            logger.error("stream failed request_id=%s error=%r", stream.request_id, exc)
            raise
        finally:
            self.finish_stream(stream, outcome)

    def open_stream(self) -> ProcessStream:
        """State for one new Process stream (for transports that drive the processor themselves)."""
        self._serial += 1
        self._tally.open += 1
        return ProcessStream(self._serial)

    def handle_message(self, stream: ProcessStream, raw: bytes) -> list[bytes]:
        """Answer one message of a stream (possibly with nothing yet, possibly with several answers)."""
        arrived = time.perf_counter_ns()
        try:
            request = ext_proc.ProcessingRequest.FromString(raw)
        except Exception:  # the wire said something that is not a ProcessingRequest
            self._note_unexpected(stream, "unparseable", f"{len(raw)} bytes that do not parse")
            return []
        kind = request.WhichOneof("request")
        if kind is None:
            self._note_unexpected(stream, "empty", "a message with no request phase set")
            return []
        first = not stream.kinds
        stream.kinds.append(kind)
        self._tally.messages[kind] += 1
        if first and request.HasField("protocol_config"):
            stream.body_mode = request.protocol_config.request_body_mode
            stream.response_body_mode = request.protocol_config.response_body_mode
        if kind in _RESPONSE_KINDS:
            if stream.served == "-" and request.HasField("metadata_context"):
                self._note_served(stream, request.metadata_context)
            return self._answer_response_phase(stream, request, kind, first=first)
        if kind == "request_headers":
            if request.HasField("metadata_context"):
                stream.subset = self._subsets.read(request.metadata_context)
            return self._answer_request_headers(stream, request.request_headers, arrived, first=first)
        if kind == "request_body":
            return self._answer_request_body(stream, request.request_body, arrived)
        return self._answer_request_trailers(stream, arrived)

    def _answer_request_headers(
        self, stream: ProcessStream, headers: ext_proc.HttpHeaders, arrived: int, *, first: bool
    ) -> list[bytes]:
        if not first:
            self._note_unexpected(stream, "request_headers", "request headers a second time on one stream")
        for header in headers.headers.headers:
            key = header.key
            if key in _LOGGED_HEADERS:
                value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
                if key == ":path":
                    stream.path = value
                elif key == ":method":
                    stream.method = value
                else:
                    stream.request_id = value
        if headers.end_of_stream or stream.body_mode in _DECIDE_ON_HEADERS:
            answer = self._decide(stream, arrived, on_body=False)
            stream.done = not stream.pick  # an immediate response ends the exchange
            return [answer]
        if stream.body_mode in _DECIDE_ON_BODY:
            return [self._pass["request_headers"]]
        return []  # FULL_DUPLEX_STREAMED: the headers answer waits for the body

    def _answer_request_body(
        self, stream: ProcessStream, body: ext_proc.HttpBody, arrived: int
    ) -> list[bytes]:
        if stream.decided:
            if stream.body_mode == _BodyMode.FULL_DUPLEX_STREAMED:
                return [
                    responses.build_streamed_body(
                        body.body, end_of_stream=body.end_of_stream
                    ).SerializeToString()
                ]
            return [self._pass["request_body"]]
        self._keep_body(stream, body.body)
        end = body.end_of_stream or body.end_of_stream_without_message
        if stream.body_mode in _DECIDE_ON_BODY:
            if not end and stream.body_mode == _BodyMode.BUFFERED_PARTIAL:
                return [self._pass["request_body"]]
            self._read_model(stream)
            return [self._decide(stream, arrived, on_body=True)]
        if stream.body_mode == _BodyMode.FULL_DUPLEX_STREAMED:
            return self._decide_full_duplex(stream, arrived, trailers=False) if end else []
        # a body in a mode that decided on headers but has not decided: answer it unchanged
        return [self._pass["request_body"]]

    def _answer_request_trailers(self, stream: ProcessStream, arrived: int) -> list[bytes]:
        if stream.decided or stream.body_mode != _BodyMode.FULL_DUPLEX_STREAMED:
            return [self._pass["request_trailers"]]
        return self._decide_full_duplex(stream, arrived, trailers=True)

    def _decide_full_duplex(self, stream: ProcessStream, arrived: int, *, trailers: bool) -> list[bytes]:
        """FULL_DUPLEX_STREAMED, once the body is whole: the decision, then the held body back (which ends
        the stream unless trailers follow it, answered last)."""
        self._read_model(stream)
        decision = self._decide(stream, arrived, on_body=False)
        if not stream.pick:
            stream.done = True  # an immediate response ends the exchange
            return [decision]
        whole = b"".join(stream.body)
        stream.body = []
        body = responses.build_streamed_body(whole, end_of_stream=not trailers).SerializeToString()
        if trailers:
            return [decision, body, self._pass["request_trailers"]]
        return [decision, body]

    def _answer_response_phase(
        self, stream: ProcessStream, request: ext_proc.ProcessingRequest, kind: str, *, first: bool
    ) -> list[bytes]:
        if first:
            self._note_unexpected(
                stream,
                kind,
                "stream began with a response phase: request_header_mode is not SEND for this route",
            )
        elif not self._settings.expect_response_messages and stream.response_body_mode == _BodyMode.NONE:
            self._note_unexpected(
                stream, kind, "response phases are sent to the EPP: the processing mode leaves them at SEND"
            )
        if kind == "response_body" and stream.response_body_mode == _BodyMode.FULL_DUPLEX_STREAMED:
            body = request.response_body
            return [
                responses.build_streamed_body(
                    body.body, end_of_stream=body.end_of_stream, response=True
                ).SerializeToString()
            ]
        return [self._pass[kind]]

    def _decide(self, stream: ProcessStream, arrived: int, *, on_body: bool) -> bytes:
        stream.decided = True
        choice = self._picker.choose(stream.subset, None if stream.model == "-" else stream.model)
        pick = choice.pick
        if pick:
            cache = self._body_pick_cache if on_body else self._pick_cache
            cached = cache.get(pick)
            if cached is None:
                if len(cache) > 4096:
                    cache.clear()
                build = responses.build_body_pick if on_body else responses.build_headers_pick
                cached = cache[pick] = (build(pick).SerializeToString(), join_endpoints(pick))
            answer, stream.endpoint = cached
            stream.pick = pick
        elif choice.outcome == SHED:
            answer = responses.build_shed(choice.reason, request_id=stream.request_id).SerializeToString()
        else:
            answer = responses.build_unavailable(
                choice.reason, request_id=stream.request_id, error=choice.error
            ).SerializeToString()
        outcome = choice.outcome
        elapsed = time.perf_counter_ns() - arrived
        tally = self._tally
        tally.decisions[outcome] += 1
        tally.latency.observe(elapsed / 1e9)
        if outcome == PICKED:
            self._log(
                "decision request_id=%s method=%s path=%s model=%s endpoint=%s outcome=%s decision_us=%d",
                stream.request_id,
                stream.method,
                stream.path,
                stream.model,
                stream.endpoint,
                outcome,
                elapsed // 1000,
            )
        else:
            self._log(
                "decision request_id=%s method=%s path=%s model=%s endpoint=%s outcome=%s decision_us=%d"
                " reason=%r",
                stream.request_id,
                stream.method,
                stream.path,
                stream.model,
                stream.endpoint,
                outcome,
                elapsed // 1000,
                choice.reason,
            )
        return answer

    def _note_served(self, stream: ProcessStream, metadata: base_pb2.Metadata) -> None:
        """The proxy reports where it sent the request: the primary, a listed fallback, or elsewhere."""
        served = read_served(metadata)
        if served is None:
            return
        stream.served = served
        listed = stream.endpoint  # the pick as the header carries it, "-" before a decision
        if listed == served or listed.startswith(served + ","):
            outcome = "primary"
        elif served in listed.split(","):
            outcome = "fallback"
        else:
            outcome = "other"
        self._tally.served[outcome] += 1

    def _keep_body(self, stream: ProcessStream, chunk: bytes) -> None:
        if chunk:
            stream.body.append(chunk)

    def _read_model(self, stream: ProcessStream) -> None:
        size = sum(len(c) for c in stream.body)
        if not size or size > self._settings.max_body_bytes:
            return
        try:
            document = json.loads(b"".join(stream.body))
        except ValueError:
            return
        if isinstance(document, dict) and isinstance(document.get("model"), str):
            stream.model = document["model"]

    def _note_unexpected(self, stream: ProcessStream, kind: str, why: str) -> None:
        self.write_log()  # the lines before this warning stay before it
        self._metrics.unexpected.labels(kind).inc()
        logger.warning("unexpected message request_id=%s kind=%s detail=%r", stream.request_id, kind, why)

    def finish_stream(self, stream: ProcessStream, outcome: str) -> None:
        """Count and log a stream's end: completed, cancelled or error."""
        tally = self._tally
        tally.open -= 1
        tally.streams[outcome] += 1
        self._log(
            "stream request_id=%s method=%s path=%s model=%s endpoint=%s served=%s outcome=%s messages=%s"
            " duration_us=%d",
            stream.request_id,
            stream.method,
            stream.path,
            stream.model,
            stream.endpoint,
            stream.served,
            outcome,
            ",".join(stream.kinds) or "-",
            (time.perf_counter_ns() - stream.started) // 1000,
        )

    def _log(self, message: str, *args: object) -> None:
        """An INFO line per decision or stream, written once the answers in hand are out: the event loop
        writes the lines queued in one callback (one read of the connection) right after that callback,
        so formatting them never delays an answer. Without a running loop the line is written now."""
        if not logger.isEnabledFor(logging.INFO):
            return
        if not self._lines:
            try:
                asyncio.get_running_loop().call_soon(self.write_log)
            except RuntimeError:
                log_info(logger, message, *args)
                return
        self._lines.append((message, args))

    def write_log(self) -> None:
        """Write the queued per-request lines now (also what the loop runs after each callback)."""
        lines, self._lines = self._lines, []
        for message, args in lines:
            log_info(logger, message, *args)
