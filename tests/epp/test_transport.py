"""Transport details over real gRPC: large bodies (flow control, frame splitting), unknown methods,
TLS with grpcio, and the `epp` command's argument errors and worker processes."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from certs.pki import generate_ca, issue_serving_cert
from epp.children import free_port, free_ports, start_child, stop_child, wait_for_port
from epp.server import EppServer, running_epp
from epp.settings import TlsFiles
from tests.epp.conftest import (
    STATIC,
    STATIC_NAMES,
    Mode,
    destination,
    exchange,
    make_settings,
    request_headers,
)

CLI = (sys.executable, "-m", "cli.main")


async def test_a_large_full_duplex_body_comes_back_whole_across_many_frames(epp: EppServer) -> None:
    payload = b'{"model": "big", "prompt": "' + b"x" * 300_000 + b'"}'
    chunks = [payload[i : i + 70_000] for i in range(0, len(payload), 70_000)]
    messages = [request_headers(body_mode=Mode.FULL_DUPLEX_STREAMED)]
    messages += [
        ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=c, end_of_stream=i == len(chunks) - 1))
        for i, c in enumerate(chunks)
    ]
    answers = await exchange(epp.port, messages)
    assert destination(answers[0]) in STATIC_NAMES
    assert answers[1].request_body.response.body_mutation.streamed_response.body == payload


async def test_an_unknown_method_is_unimplemented_and_the_connection_keeps_working(epp: EppServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.port}") as channel:
        call = channel.unary_unary("/no.such.Service/Method")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(b"", timeout=5)
        assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
        answers = [
            a async for a in ext_proc_grpc.ExternalProcessorStub(channel).Process(iter([request_headers()]))
        ]
        assert destination(answers[0]) in STATIC_NAMES


async def test_tls_serves_ext_proc_with_a_certificate_from_the_certs_package(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = generate_ca(common_name="test CA", now=now, valid_for=timedelta(days=1))
    pair = issue_serving_cert(
        ca, dns_names=["epp.test"], ip_addresses=["127.0.0.1"], now=now, valid_for=timedelta(days=1)
    )
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    settings = replace(
        make_settings(STATIC, transport="grpcio"), tls=TlsFiles(tmp_path / "tls.crt", tmp_path / "tls.key")
    )
    async with running_epp(settings) as server:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem)
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
            call = ext_proc_grpc.ExternalProcessorStub(channel).Process(iter([request_headers()]), timeout=10)
            answers = [a async for a in call]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as plain:
            call = ext_proc_grpc.ExternalProcessorStub(plain).Process(iter([request_headers()]), timeout=3)
            with pytest.raises(grpc.aio.AioRpcError):
                _ = [a async for a in call]
    assert destination(answers[0]) in STATIC_NAMES


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        pytest.param([], "no model servers", id="no-endpoints"),
        pytest.param(["--endpoints", "model.svc:8000"], "not an IP address", id="host-name-endpoint"),
        pytest.param(
            ["--endpoints", "10.0.0.1:80", "--service", "llm"], "need --namespace", id="no-namespace"
        ),
        pytest.param(["--namespace", "n", "--selector", "a=b"], "--target-port", id="selector-no-port"),
        pytest.param(["--endpoints", "10.0.0.1:80", "--tls-cert", "x"], "go together", id="half-tls"),
        pytest.param(
            ["--endpoints", "10.0.0.1:80", "--workers", "2", "--port", "0"], "fixed --port", id="workers"
        ),
        pytest.param(
            ["--endpoints", "10.0.0.1:80", "--scrape-timeout", "0"], "--scrape-timeout", id="scrape-timeout"
        ),
        pytest.param(["--endpoints", "10.0.0.1:80", "--fallbacks", "-1"], "--fallbacks", id="fallbacks"),
        pytest.param(
            ["--endpoints", "10.0.0.1:80", "--shed-queue-depth", "0"], "--shed-queue-depth", id="shed-depth"
        ),
        pytest.param(
            ["--endpoints", "10.0.0.1:80", "--engine-type", "llamacpp"], "known: sglang", id="engine-type"
        ),
        pytest.param(
            ["--endpoints", "10.0.0.1:80", "--endpoint-engine", "10.0.0.1:80"],
            "IP:PORT=ENGINE",
            id="endpoint-engine-form",
        ),
        pytest.param(
            ["--endpoints", "10.0.0.1:80", "--endpoint-engine", "10.0.0.1:80=tgi"],
            "unknown engine type 'tgi'",
            id="endpoint-engine-unknown",
        ),
    ],
)
def test_the_epp_command_refuses_bad_arguments_in_one_line(argv: list[str], says: str) -> None:
    done = subprocess.run([*CLI, "epp", *argv], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_two_worker_processes_share_the_port_and_stop_together(tmp_path: Path) -> None:
    port, metrics = free_port(), free_ports(2)  # the workers' metrics listen on metrics and metrics + 1
    argv = [*CLI, "epp", "--host", "127.0.0.1", "--port", str(port), "--endpoints", "127.0.0.1:9",
            "--scrape-interval", "0", "--workers", "2", "--metrics-port", str(metrics)]  # fmt: skip
    child = start_child("epp-workers", argv, log_dir=tmp_path)
    try:
        wait_for_port(child, port)
        wait_for_port(child, metrics)
        wait_for_port(child, metrics + 1)
        served = subprocess.run(
            [sys.executable, "-c", _ONE_CALL, str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert served.returncode == 0, served.stderr
        assert served.stdout.strip() == "127.0.0.1:9"
    finally:
        stop_child(child, timeout=10)
    assert child.process.returncode == 0
    assert child.log_text().count("epp listening") == 2


_ONE_CALL = """
import sys, grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as m, external_processor_pb2_grpc as g
from envoy.config.core.v3 import base_pb2
request = m.ProcessingRequest(request_headers=m.HttpHeaders(headers=base_pb2.HeaderMap(
    headers=[base_pb2.HeaderValue(key=":path", raw_value=b"/v1/completions")])))
with grpc.insecure_channel("127.0.0.1:" + sys.argv[1]) as channel:
    answer = next(iter(g.ExternalProcessorStub(channel).Process(iter([request]), timeout=20)))
print(answer.request_headers.response.header_mutation.set_headers[0].header.raw_value.decode())
"""
