"""A real gateway for each row of the failure-signature table: Envoy, an EPP variant, a model server.

`booted_case(case)` renders the corrected EnvoyFilter (edited for the case) with the engine's renderer, or
builds the gateway istiod generates for an InferencePool (`tests.istio_gateway`, for the Istio-native
cases), boots a real Envoy on loopback, starts the EPP variant the case needs (plaintext h2c, TLS, one that
waits for the request body like the GIE EPP, a slow one, one that answers out of turn, or none at all),
sends five requests (one after the other, or all at once) and yields the running rig, so a test can ask
`doctor --admin` about it while Envoy is still up.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import yaml
from aiohttp import ClientSession, ClientTimeout, web
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse
from envoy.type.v3 import http_status_pb2

from certs.pki import generate_ca, issue_serving_cert
from policies.render.gateway import RenderOptions, SocketAddress, render_gateway
from tests.doctor.loopback import serving
from tests.envoy_rig import EnvoyRig, run_envoy
from tests.istio_gateway import EPP_CLUSTER as ISTIO_EPP_CLUSTER
from tests.istio_gateway import IstioGatewayOptions, build_istio_gateway

DATA = Path(__file__).parent / "data"
CORRECTED = Path(__file__).parents[2] / "manifests" / "examples" / "seed-corrected.yaml"
DESTINATION_HEADER = "x-gateway-destination-endpoint"
REQUESTS = 5


def load_corrected() -> dict[str, Any]:
    document = yaml.safe_load(CORRECTED.read_text())
    assert isinstance(document, dict)
    return document


# ---- the EPP variants


class PickingEpp(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Answers request headers with the destination header and `clear_route_cache`; passes everything else.

    With `wait_for_body` it answers request headers only after the request body ends, as the GIE EPP does.
    With `refuse` it has no endpoint to pick and answers every request with an immediate 503.
    With `delay` it takes that long (seconds) to answer request headers. In FULL_DUPLEX_STREAMED mode
    (announced by Envoy) it holds the body until it ends, then answers the headers and hands the body back
    as a streamed response; with `eager` it hands each body chunk back at once, before it has answered the
    headers: out of turn.
    """

    def __init__(
        self,
        destination: str,
        *,
        wait_for_body: bool = False,
        refuse: bool = False,
        delay: float = 0.0,
        eager: bool = False,
    ) -> None:
        self.destination = destination
        self.wait_for_body = wait_for_body
        self.refuse = refuse
        self.delay = delay
        self.eager = eager
        self.streams = 0
        self.messages: list[str] = []

    def _pick(self) -> ProcessingResponse:
        mutation = ext_proc_pb2.HeaderMutation(
            set_headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=DESTINATION_HEADER, raw_value=self.destination.encode())
                )
            ]
        )
        common = ext_proc_pb2.CommonResponse(header_mutation=mutation, clear_route_cache=True)
        answer = ProcessingResponse(request_headers=ext_proc_pb2.HeadersResponse(response=common))
        answer.dynamic_metadata.update({"envoy.lb": {DESTINATION_HEADER: self.destination}})
        return answer

    async def Process(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ProcessingResponse]:
        self.streams += 1
        duplex = {"request": False, "response": False}
        held: list[bytes] = []
        async for request in request_iterator:
            kind = request.WhichOneof("request")
            self.messages.append(kind)
            if request.HasField("protocol_config"):
                mode = request.protocol_config
                duplex["request"] = (
                    mode.request_body_mode == processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
                )
                duplex["response"] = (
                    mode.response_body_mode == processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
                )
            if kind == "request_headers" and self.refuse:
                yield _no_endpoint()
            elif kind == "request_headers":
                if (self.wait_for_body or duplex["request"]) and not request.request_headers.end_of_stream:
                    continue
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield self._pick()
            elif kind == "request_body" and duplex["request"]:
                body = request.request_body
                held.append(body.body)
                if self.eager:  # out of turn: the headers are not answered yet
                    yield _streamed(body.body, body.end_of_stream, response=False)
                elif body.end_of_stream:
                    yield self._pick()
                    yield _streamed(b"".join(held), True, response=False)
            elif kind == "request_body":
                if self.wait_for_body and request.request_body.end_of_stream:
                    yield self._pick()
                yield ProcessingResponse(request_body=ext_proc_pb2.BodyResponse())
            elif kind == "response_body" and duplex["response"]:
                body = request.response_body
                yield _streamed(body.body, body.end_of_stream, response=True)
            elif kind == "response_headers":
                yield ProcessingResponse(response_headers=ext_proc_pb2.HeadersResponse())
            elif kind == "response_body":
                yield ProcessingResponse(response_body=ext_proc_pb2.BodyResponse())
            elif kind == "request_trailers":
                yield ProcessingResponse(request_trailers=ext_proc_pb2.TrailersResponse())
            elif kind == "response_trailers":
                yield ProcessingResponse(response_trailers=ext_proc_pb2.TrailersResponse())


def _streamed(data: bytes, end: bool, *, response: bool) -> ProcessingResponse:
    streamed = ext_proc_pb2.StreamedBodyResponse(body=data, end_of_stream=end)
    body = ext_proc_pb2.BodyResponse(
        response=ext_proc_pb2.CommonResponse(
            body_mutation=ext_proc_pb2.BodyMutation(streamed_response=streamed)
        )
    )
    return ProcessingResponse(response_body=body) if response else ProcessingResponse(request_body=body)


def _no_endpoint() -> ProcessingResponse:
    immediate = ext_proc_pb2.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable),
        body=b'{"error": "no ready endpoint"}',
        details="no_endpoint",
    )
    return ProcessingResponse(immediate_response=immediate)


def _tls_credentials() -> grpc.ServerCredentials:
    now = datetime.now(UTC)
    ca = generate_ca(common_name="doctor-test-ca", now=now, valid_for=timedelta(days=1))
    serving = issue_serving_cert(
        ca, dns_names=["epp.test"], ip_addresses=["127.0.0.1"], now=now, valid_for=timedelta(hours=2)
    )
    return grpc.ssl_server_credentials([(serving.key_pem, serving.cert_pem)])


@dataclass
class RunningEpp:
    port: int
    servicer: PickingEpp | None
    server: grpc.aio.Server | None


@contextlib.asynccontextmanager
async def running_epp(kind: str, destination: str) -> AsyncIterator[RunningEpp]:
    """`plain`, `tls`, `body` (waits for the body), `refuse` (no endpoint), `slow` (half a second per
    answer), `eager` (streams bodies back before the headers answer), or `stopped` (nothing listens)."""
    if kind == "stopped":
        yield RunningEpp(port=_unused_port(), servicer=None, server=None)
        return
    servicer = PickingEpp(
        destination,
        wait_for_body=kind == "body",
        refuse=kind == "refuse",
        delay=0.5 if kind == "slow" else 0.0,
        eager=kind == "eager",
    )
    server = grpc.aio.server()
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    if kind == "tls":
        port = server.add_secure_port("127.0.0.1:0", _tls_credentials())
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield RunningEpp(port=port, servicer=servicer, server=server)
    finally:
        await server.stop(grace=None)


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---- the model server


@dataclass
class ModelServer:
    port: int
    hits: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running_model_server() -> AsyncIterator[ModelServer]:
    model: ModelServer | None = None

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        assert model is not None
        model.hits.append(request.path)
        return web.json_response({"id": "cmpl-test", "choices": [{"text": "ok"}]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with serving(app) as port:
        model = ModelServer(port=port)
        yield model


def _http_get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode()


# ---- the cases


Edit = Callable[[dict[str, Any]], None]


def _patch_value(document: dict[str, Any], apply_to: str) -> dict[str, Any]:
    for patch in document["spec"]["configPatches"]:
        if patch["applyTo"] == apply_to:
            value: dict[str, Any] = patch["patch"]["value"]
            return value
    raise KeyError(apply_to)


def drop_http2(document: dict[str, Any]) -> None:
    _patch_value(document, "CLUSTER").pop("typed_extension_protocol_options")


def short_message_timeout(document: dict[str, Any]) -> None:
    _patch_value(document, "HTTP_FILTER")["typed_config"]["message_timeout"] = "0.2s"


def partial_override(document: dict[str, Any]) -> None:
    per_route = _patch_value(document, "HTTP_ROUTE")["typed_per_filter_config"]
    per_route["envoy.filters.http.ext_proc"]["overrides"]["processing_mode"] = {"request_header_mode": "SEND"}


def allow_failure(document: dict[str, Any]) -> None:
    _patch_value(document, "HTTP_FILTER")["typed_config"]["failure_mode_allow"] = True


def drop_route_override(document: dict[str, Any]) -> None:
    patches = document["spec"]["configPatches"]
    document["spec"]["configPatches"] = [p for p in patches if p["applyTo"] != "HTTP_ROUTE"]


def require_tls(document: dict[str, Any]) -> None:
    """The GIE profile's transport socket on the EPP cluster (TLS without verification, as Istio does)."""
    _patch_value(document, "CLUSTER")["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "epp.test",
        },
    }


def rename_for_istio(document: dict[str, Any]) -> None:
    """Istio's own cluster naming and a filter-level stat_prefix (the unit tests' second shape)."""
    istio_name = "outbound|9002||gaie-epp.llm-d.svc.cluster.local"
    config = _patch_value(document, "HTTP_FILTER")["typed_config"]
    config["grpc_service"]["envoy_grpc"]["cluster_name"] = istio_name
    config["stat_prefix"] = "gie"
    cluster = _patch_value(document, "CLUSTER")
    cluster["name"] = istio_name
    cluster["load_assignment"]["cluster_name"] = istio_name


def limit_epp_requests(document: dict[str, Any]) -> None:
    """Circuit breakers that let one ext_proc stream at a time through to the EPP, and none wait."""
    _patch_value(document, "CLUSTER")["circuit_breakers"] = {
        "thresholds": [{"max_requests": 1, "max_pending_requests": 1}]
    }


def remove_ext_proc_filter(bootstrap: dict[str, Any]) -> None:
    """The gateway has no ext_proc filter at all: what REPLACE leaves when there was nothing to replace."""
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                config = network_filter["typed_config"]
                config["http_filters"] = [
                    f for f in config["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"
                ]


@dataclass(frozen=True)
class Case:
    name: str
    epp: str
    verdict: str
    first_rule: str | None
    edits: tuple[Edit, ...] = ()
    bootstrap_edits: tuple[Callable[[dict[str, Any]], None], ...] = ()
    stat_prefix: str = "outbound_0.0.0.0_80"
    epp_cluster: str = "epp-cluster"
    picks_dead_endpoint: bool = False
    concurrent: bool = False  # send the five requests at once
    istio: dict[str, Any] | None = None  # the Istio-native gateway (tests.istio_gateway) with these options
    profile: str | None = None  # the profile to tell the doctor (None: the policy's)


CASES = (
    Case("healthy", epp="plain", verdict="healthy", first_rule=None),
    Case("no-http2", epp="plain", verdict="broken", first_rule="EPX005", edits=(drop_http2,)),
    Case("plaintext-to-tls-epp", epp="tls", verdict="broken", first_rule="EPX010"),
    Case(
        "body-none-epp-waits",
        epp="body",
        verdict="broken",
        first_rule="EPX013",
        edits=(short_message_timeout,),
    ),
    Case(
        "tls-cluster-plaintext-epp", epp="plain", verdict="broken", first_rule="EPX010", edits=(require_tls,)
    ),
    Case("epp-has-no-endpoint", epp="refuse", verdict="broken", first_rule=None),
    Case("epp-picks-dead-endpoint", epp="plain", verdict="broken", first_rule=None, picks_dead_endpoint=True),
    Case("partial-override", epp="plain", verdict="broken", first_rule="EPX011", edits=(partial_override,)),
    Case(
        "failure-mode-allow-epp-down",
        epp="stopped",
        verdict="broken",
        first_rule="EPX009",
        edits=(allow_failure,),
    ),
    Case(
        "no-route-override", epp="plain", verdict="broken", first_rule="EPX004", edits=(drop_route_override,)
    ),
    Case(
        "no-ext-proc-filter",
        epp="plain",
        verdict="broken",
        first_rule="EPX012",
        bootstrap_edits=(remove_ext_proc_filter,),
    ),
    Case("epp-not-listening", epp="stopped", verdict="broken", first_rule="EPX006"),
    Case(
        "istio-names-healthy",
        epp="plain",
        verdict="healthy",
        first_rule=None,
        edits=(rename_for_istio,),
        stat_prefix="gateway.inference_8443",
        epp_cluster="outbound|9002||gaie-epp.llm-d.svc.cluster.local",
    ),
    Case(
        "istio-names-no-http2",
        epp="plain",
        verdict="broken",
        first_rule="EPX005",
        edits=(rename_for_istio, drop_http2),
        stat_prefix="gateway.inference_8443",
        epp_cluster="outbound|9002||gaie-epp.llm-d.svc.cluster.local",
    ),
    Case(
        "epp-cluster-overflow",
        epp="slow",
        verdict="broken",
        first_rule=None,
        edits=(limit_epp_requests,),
        concurrent=True,
    ),
    # The gateway istiod builds for an InferencePool: the EPP is named in the route's override.
    Case(
        "istio-native-healthy",
        epp="plain",
        verdict="healthy",
        first_rule=None,
        istio={},
        epp_cluster=ISTIO_EPP_CLUSTER,
        profile="gie-epp",
    ),
    Case(
        "epp-answers-out-of-turn",
        epp="eager",
        verdict="broken",
        first_rule=None,
        istio={},
        epp_cluster=ISTIO_EPP_CLUSTER,
        profile="gie-epp",
    ),
    Case(
        "fail-open-hides-dead-epp",
        epp="stopped",
        verdict="broken",
        first_rule="EPX009",
        istio={"epp_ready": False},
        epp_cluster=ISTIO_EPP_CLUSTER,
        profile="gie-epp",
    ),
)


@dataclass
class Rig:
    case: Case
    admin_url: str
    statuses: list[int]
    epp: RunningEpp
    model: ModelServer
    envoy: EnvoyRig
    filter_document: dict[str, Any]

    def read_admin(self, endpoint: str) -> str:
        return _http_get(f"{self.admin_url}/{endpoint}")


async def send_requests(port: int, count: int = REQUESTS, *, concurrent: bool = False) -> list[int]:
    timeout = ClientTimeout(total=15)
    async with ClientSession(timeout=timeout) as session:

        async def send(number: int) -> int:
            body = {"model": "random", "prompt": f"test {number}", "max_tokens": 5}
            async with session.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as response:
                await response.read()
                return response.status

        if concurrent:
            return list(await asyncio.gather(*(send(number) for number in range(count))))
        return [await send(number) for number in range(count)]


def _bootstrap(case: Case, document: dict[str, Any], epp_port: int, model_port: int) -> dict[str, Any]:
    if case.istio is not None:
        options = IstioGatewayOptions(
            epp=("127.0.0.1", epp_port), pool=[("127.0.0.1", model_port)], **case.istio
        )
        return build_istio_gateway(options)
    options = RenderOptions(
        listen_address="127.0.0.1",
        listen_port=0,
        admin_port=0,
        stat_prefix=case.stat_prefix,
        endpoint_overrides={case.epp_cluster: (SocketAddress("127.0.0.1", epp_port),)},
    )
    return copy.deepcopy(render_gateway(document, options=options).bootstrap)


@contextlib.asynccontextmanager
async def booted_case(case: Case) -> AsyncIterator[Rig]:
    document = load_corrected()
    for edit in case.edits:
        edit(document)
    async with running_model_server() as model:
        pick = _unused_port() if case.picks_dead_endpoint else model.port
        async with running_epp(case.epp, f"127.0.0.1:{pick}") as epp:
            bootstrap = _bootstrap(case, document, epp.port, model.port)
            for bootstrap_edit in case.bootstrap_edits:
                bootstrap_edit(bootstrap)
            with (
                tempfile.TemporaryDirectory(prefix="doctor-") as workdir,
                run_envoy(bootstrap, workdir=Path(workdir), log_level="warning") as envoy,
            ):
                statuses = await send_requests(envoy.listener_port(), concurrent=case.concurrent)
                yield Rig(case, envoy.admin_url, statuses, epp, model, envoy, document)
