"""What the admission-server test modules share besides their fixtures (those are in conftest.py): a
static-answer server, a metric read, and `extproc-guard serve` as a process."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.webhook.webhookrig import STATIC_SERVICES, ServerThread, running_server
from webhook.settings import ServeSettings, TLSSettings


@contextmanager
def static_server(tls: TLSSettings, **settings: Any) -> Iterator[ServerThread]:
    """A server on a loopback port of its own that answers the seed's EPP Service from `--service`."""
    with running_server(
        ServeSettings(tls=tls, host="127.0.0.1", port=0, services=STATIC_SERVICES, **settings)
    ) as server:
        yield server


async def metric_value(session: aiohttp.ClientSession, server: ServerThread, sample: str) -> float:
    """The value of one sample (name and labels, as `/metrics` prints them), 0 when it is not there yet."""
    async with session.get(server.url + "/metrics") as response:
        text = await response.text()
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# -- `serve` as a process ----------------------------------------------------------------------------
START_SECONDS = 30.0
SERVICE = "llm-d-inference-scheduler/gaie-inference-scheduling-epp=10.96.45.12:9002"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "serve", *args]


def serve_static_command(tls: TLSSettings, port: int, *more: str) -> list[str]:
    """`serve` on loopback `port` with the pair in `tls` and the seed's EPP from `--service` (and `more`)."""
    return serve_command(
        "--tls-cert",
        str(tls.cert_file),
        "--tls-key",
        str(tls.key_file),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--service",
        SERVICE,
        *more,
    )


def request(url: str, context: ssl.SSLContext, body: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=body, headers=headers), context=context, timeout=10
        ) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def answers_ok(url: str, context: ssl.SSLContext) -> bool:
    try:
        return request(url, context)[0] == 200
    except (OSError, ssl.SSLError):
        return False


def running(process: subprocess.Popen[bytes]) -> Callable[[], str | None]:
    """For `wait_until(alive=...)`: None while `process` runs, then how it ended."""
    return lambda: None if process.poll() is None else f"serve exited with {process.returncode}"


UNUSABLE_FILES = [
    pytest.param(
        ("--tls-cert", "missing.crt", "--tls-key", "missing.key"),
        "cannot read the certificate",
        id="missing-cert",
    ),
    pytest.param(
        ("--tls-cert", "{cert}", "--tls-key", "{cert}"),
        "not a usable certificate and key",
        id="cert-as-key",
    ),
    pytest.param(
        ("--tls-cert", "{cert}", "--tls-key", "{key}", "--kubeconfig", "missing"),
        "kubeconfig",
        id="bad-kubeconfig",
    ),
]
"""`serve` arguments (`{cert}`, `{key}`: a usable pair's files) it must refuse before it serves, and what
its one line of error says."""


def assert_refused_with_one_line(argv: list[str], message: str, *, cwd: Path | None = None) -> None:
    """`argv` exits 2 with one line on stderr that says `message`."""
    result = subprocess.run(argv, capture_output=True, timeout=60, cwd=cwd)
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert message in stderr
    assert stderr.count("\n") == 1, stderr
