"""Shared helpers for the EPP tests: ext_proc messages and an in-process EPP on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from epp.endpoints import Endpoint
from epp.picker import PickerSettings
from epp.scraper import ScrapeSettings
from epp.server import EppServer, running_epp
from epp.settings import EppSettings

Mode = processing_mode_pb2.ProcessingMode


def request_headers(
    path: str = "/v1/completions",
    *,
    request_id: str = "req-1",
    end_of_stream: bool = False,
    body_mode: int | None = None,
) -> ext_proc.ProcessingRequest:
    headers = [
        (":method", "POST"),
        (":path", path),
        ("x-request-id", request_id),
        ("content-type", "application/json"),
    ]
    message = ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]
            ),
            end_of_stream=end_of_stream,
        )
    )
    if body_mode is not None:
        message.protocol_config.request_body_mode = body_mode
    return message


def destination(answer: ext_proc.ProcessingResponse) -> str:
    """The x-gateway-destination-endpoint an answer sets (headers or body answer), '' if none."""
    phase = answer.WhichOneof("response")
    common = getattr(answer, phase).response if phase in ("request_headers", "request_body") else None
    for option in common.header_mutation.set_headers if common else ():
        if option.header.key == "x-gateway-destination-endpoint":
            return option.header.raw_value.decode() or option.header.value
    return ""


async def exchange(
    port: int, messages: Sequence[ext_proc.ProcessingRequest]
) -> list[ext_proc.ProcessingResponse]:
    """Send `messages` on one Process stream, half-close, and collect every answer (bounded by a deadline)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = ext_proc_grpc.ExternalProcessorStub(channel).Process(iter(messages), timeout=10)
        return [answer async for answer in call]


TRANSPORTS = ["h2", "grpcio"]


def make_settings(
    endpoints: Sequence[Endpoint], *, scrape_interval: float = 0.0, transport: str = "h2"
) -> EppSettings:
    return EppSettings(
        host="127.0.0.1",
        port=0,
        endpoints=tuple(endpoints),
        scrape=ScrapeSettings(interval=scrape_interval, timeout=0.5),
        picker=PickerSettings(stale_after=3 * scrape_interval),
        grace=0.5,
        transport=transport,
    )


STATIC = (Endpoint("10.0.0.1", 8000), Endpoint("10.0.0.2", 8000), Endpoint("10.0.0.3", 8000))
STATIC_NAMES = {str(e) for e in STATIC}  # as `destination` reports them


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Both gRPC transports: the EPP's own HTTP/2 server and grpcio."""
    name: str = request.param
    return name


@pytest.fixture
async def epp(transport: str) -> AsyncIterator[EppServer]:
    """An EPP with three static endpoints and scraping off (endpoints take turns)."""
    async with running_epp(make_settings(STATIC, transport=transport)) as server:
        yield server
