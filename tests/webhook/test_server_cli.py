"""`extproc-guard serve` as a process: static `--service` answers, ready at once, one log line per review."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.documents import load_document
from tests.polling import WaitFailed, wait_until
from tests.webhook.serverkit import (
    START_SECONDS,
    UNUSABLE_FILES,
    answers_ok,
    assert_refused_with_one_line,
    free_port,
    request,
    running,
    serve_command,
    serve_static_command,
)
from tests.webhook.webhookrig import Pki, client_context, review_of


@dataclass(frozen=True)
class Served:
    port: int
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def serving(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tls = pki.write_serving(tmp_path_factory.mktemp("tls"))
    port = free_port()
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            serve_static_command(tls, port),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        context = client_context(pki)
        try:
            wait_until(
                lambda: answers_ok(f"https://127.0.0.1:{port}/readyz", context),
                "serve's /readyz",
                timeout=START_SECONDS,
                interval=0.1,
                alive=running(process),
            )
        except WaitFailed as error:
            pytest.fail(f"serve did not become ready: {error}: {log.read_text()[-2000:]}")
        yield Served(port, process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def test_serve_with_static_services_is_ready_at_once_and_mutates(pki: Pki, serving: Served) -> None:
    port = serving.port
    review = review_of(load_document("seed-bad.yaml"), uid="cli-uid-1")
    status, body = request(
        f"https://127.0.0.1:{port}/mutate", client_context(pki), json.dumps(review).encode()
    )
    assert status == 200
    response = json.loads(body)["response"]
    assert response["uid"] == "cli-uid-1"
    assert response["patchType"] == "JSONPatch"


def test_serve_logs_one_line_per_review(pki: Pki, serving: Served) -> None:
    port = serving.port
    review = review_of(load_document("unfixable.yaml"), uid="cli-uid-2")
    request(f"https://127.0.0.1:{port}/validate", client_context(pki), json.dumps(review).encode())
    log = serving.log

    def logged() -> list[str]:
        return [line for line in log.read_text().splitlines() if "uid=cli-uid-2" in line]

    wait_until(lambda: bool(logged()), "the review's log line")
    (line,) = logged()
    assert "webhook=validate" in line
    assert "object=llm-d-inference-scheduler/epp-ext-proc-unfixable" in line
    assert "operation=CREATE" in line
    assert "result=denied" in line
    assert "EPX007" in line


def test_serve_stops_cleanly_on_sigterm(pki: Pki, tmp_path: Path) -> None:
    tls = pki.write_serving(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        serve_static_command(tls, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: answers_ok(f"https://127.0.0.1:{port}/healthz", client_context(pki)),
            "serve's /healthz",
            timeout=START_SECONDS,
            interval=0.1,
            alive=running(process),
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        *UNUSABLE_FILES,
        pytest.param(
            ("--tls-cert", "{cert}", "--tls-key", "{key}", "--service", "nope"), "--service", id="bad-service"
        ),
        pytest.param(
            ("--tls-cert", "{cert}", "--tls-key", "{key}", "--port", "99999"), "port", id="bad-port"
        ),
    ],
)
def test_unusable_flags_exit_2_with_one_line(
    pki: Pki, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    tls = pki.write_serving(tmp_path)
    argv = [a.format(cert=tls.cert_file, key=tls.key_file) for a in args]
    if "--port" not in argv:
        argv += ["--port", str(free_port())]
    assert_refused_with_one_line(serve_command(*argv), message, cwd=tmp_path)
