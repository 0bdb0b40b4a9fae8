"""`extproc-guard serve --workers 2` as processes: a supervisor and two workers on one TLS port.

Every test talks to the real command over real TLS. Which worker answers is up to the kernel (SO_REUSEPORT
spreads new connections by a hash of their addresses), so a test that needs a given worker opens fresh
connections until one lands there, and keeps it: `/readyz` names the worker of its connection, and a
keep-alive connection stays with its worker.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.documents import load_document
from tests.polling import WaitFailed, wait_until
from tests.webhook.serverkit import (
    START_SECONDS,
    UNUSABLE_FILES,
    answers_ok,
    assert_refused_with_one_line,
    free_port,
    running,
    serve_command,
    serve_static_command,
)
from tests.webhook.webhookrig import Pki, client_context, fingerprint, review_of
from webhook.settings import TLSSettings

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2
STOP_SECONDS = 30.0


# -- the command -----------------------------------------------------------------------------------------
@dataclass
class Workers:
    """`serve --workers 2` running: its port, the supervisor's process, its log and certificate files."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path
    tls: TLSSettings
    context: ssl.SSLContext
    opened: list[Connection] = field(default_factory=list)

    def connect(self) -> Connection:
        connection = Connection(self.port, self.context)
        self.opened.append(connection)
        return connection

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class Connection:
    """One keep-alive TLS connection, so to one worker."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self._http = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        self._http.request(method, path, body=payload, headers=headers)
        response = self._http.getresponse()
        return response.status, response.read()

    def readiness(self) -> dict[str, Any]:
        status, body = self.call("GET", "/readyz")
        state = json.loads(body)
        assert isinstance(state, dict)
        state["status"] = status
        return state

    def worker(self) -> tuple[int, int]:
        """(index, pid) of the worker at the other end."""
        worker = self.readiness()["worker"]
        return int(worker["index"]), int(worker["pid"])

    def metrics(self) -> str:
        status, body = self.call("GET", "/metrics")
        assert status == 200
        return body.decode()

    def close(self) -> None:
        self._http.close()


@contextmanager
def serve_workers(pki: Pki, folder: Path, *more: str) -> Iterator[Workers]:
    tls = pki.write_serving(folder / "tls")
    port = free_port()
    log = folder / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            serve_static_command(tls, port, "--workers", str(WORKERS), *more),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Workers(port, process, log, tls, client_context(pki))
    try:
        try:
            wait_until(
                lambda: answers_ok(f"https://127.0.0.1:{port}/readyz", served.context),
                "serve --workers's /readyz",
                timeout=START_SECONDS,
                interval=0.1,
                alive=running(process),
            )
        except WaitFailed as error:
            pytest.fail(f"serve --workers did not become ready: {error}: {served.log_text()[-2000:]}")
        yield served
    finally:
        for connection in served.opened:
            connection.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        with suppress(ProcessLookupError):  # nothing of the group may outlive a test
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def workers(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """One `serve --workers 2` for the tests that only send it requests."""
    with serve_workers(pki, tmp_path_factory.mktemp("workers")) as served:
        yield served


@pytest.fixture
def own_workers(pki: Pki, tmp_path: Path) -> Iterator[Workers]:
    """A `serve --workers 2` of the test's own, for a test that kills, stops or re-certifies it."""
    with serve_workers(pki, tmp_path, "--cert-poll-seconds", "0.1") as served:
        yield served


def connection_to_each_worker(served: Workers) -> dict[int, Connection]:
    """Fresh connections until one has reached each worker (bounded); keyed by worker index."""
    found: dict[int, Connection] = {}

    def reached_all() -> bool:
        connection = served.connect()
        found.setdefault(connection.worker()[0], connection)
        return len(found) == WORKERS

    wait_until(reached_all, f"a connection to each of the {WORKERS} workers", interval=0.0)
    return found


def process_gone(pid: int) -> bool:
    """True when `pid` has exited (a zombie nobody has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def reviews_counted(metrics: str, *, webhook: str, operation: str) -> float:
    """extproc_guard_reviews_total of `webhook` and `operation`, summed over results."""
    total = 0.0
    for line in metrics.splitlines():
        wanted = f'webhook="{webhook}"' in line and f'operation="{operation}"' in line
        if line.startswith("extproc_guard_reviews_total{") and wanted:
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- serving -------------------------------------------------------------------------------------------
def test_each_worker_answers_on_the_one_port_and_says_which_it_is(workers: Workers) -> None:
    connections = connection_to_each_worker(workers)

    pids = set()
    for index, connection in connections.items():
        state = connection.readiness()
        assert state["status"] == 200
        assert state["ready"] is True
        assert state["worker"]["index"] == index
        pids.add(state["worker"]["pid"])
    assert len(pids) == WORKERS
    assert workers.process.pid not in pids, "the supervisor serves nothing itself"


def test_every_worker_reviews(pki: Pki, workers: Workers) -> None:
    for index, connection in connection_to_each_worker(workers).items():
        review = review_of(load_document("seed-bad.yaml"), uid=f"worker-{index}")
        status, body = connection.call("POST", "/mutate", review)

        assert status == 200
        response = json.loads(body)["response"]
        assert response["uid"] == f"worker-{index}"
        assert response["patchType"] == "JSONPatch"


def test_metrics_on_any_worker_count_the_reviews_of_every_worker(workers: Workers) -> None:
    connections = connection_to_each_worker(workers)
    sent = {0: 3, 1: 2}
    for index, count in sent.items():
        for number in range(count):
            review = review_of(load_document("seed-bad.yaml"), operation="UPDATE", uid=f"m-{index}-{number}")
            assert connections[index].call("POST", "/validate", review)[0] == 200

    for index, connection in connections.items():
        wait_until(
            lambda c=connection: reviews_counted(c.metrics(), webhook="validate", operation="UPDATE") == 5,
            f"worker {index}'s /metrics to count the 5 reviews of both workers",
        )
    text = connections[0].metrics()
    assert re.search(r'^extproc_guard_gc_frozen_objects\{worker="0"\} ', text, re.MULTILINE)
    assert re.search(r'^extproc_guard_gc_frozen_objects\{worker="1"\} ', text, re.MULTILINE)


# -- supervision ---------------------------------------------------------------------------------------
def test_a_killed_worker_is_replaced_and_the_counts_it_published_are_kept(own_workers: Workers) -> None:
    connections = connection_to_each_worker(own_workers)
    victim_index = 1
    _, victim = connections[victim_index].worker()
    for number in range(2):
        review = review_of(load_document("seed-bad.yaml"), operation="UPDATE", uid=f"k-{number}")
        assert connections[victim_index].call("POST", "/validate", review)[0] == 200
    wait_until(
        lambda: reviews_counted(connections[0].metrics(), webhook="validate", operation="UPDATE") == 2,
        "the other worker to see the reviews published",
    )

    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        try:
            index, pid = own_workers.connect().worker()
        except (OSError, http.client.HTTPException):
            return False  # queued to the killed worker's socket as it closed: reset
        return index == victim_index and pid != victim

    wait_until(replaced, "a new worker in the killed one's place", timeout=START_SECONDS, interval=0.05)
    assert own_workers.process.poll() is None
    assert re.search(
        rf"worker exited index={victim_index} pid={victim} killed by SIGKILL; starting it again",
        own_workers.log_text(),
    )
    for connection in connection_to_each_worker(own_workers).values():
        assert reviews_counted(connection.metrics(), webhook="validate", operation="UPDATE") == 2


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_signal_to_the_supervisor_stops_every_worker_and_exits_0(
    own_workers: Workers, stop: signal.Signals
) -> None:
    pids = [connection.worker()[1] for connection in connection_to_each_worker(own_workers).values()]

    own_workers.process.send_signal(stop)

    assert own_workers.process.wait(timeout=STOP_SECONDS) == 0
    assert all(process_gone(pid) for pid in pids)
    log = own_workers.log_text()
    assert f"stopping on {stop.name} workers=2" in log
    for index in range(WORKERS):
        assert re.search(rf"worker stopped index={index} pid=\d+ exit code 0", log), log


def test_workers_stop_by_themselves_when_the_supervisor_is_gone(own_workers: Workers) -> None:
    pids = [connection.worker()[1] for connection in connection_to_each_worker(own_workers).values()]

    own_workers.process.kill()
    own_workers.process.wait(timeout=STOP_SECONDS)

    wait_until(
        lambda: all(process_gone(pid) for pid in pids), "the orphaned workers to exit", timeout=STOP_SECONDS
    )
    assert "the supervisor is gone; stopping" in own_workers.log_text()


def test_a_new_certificate_is_served_by_every_worker(pki: Pki, own_workers: Workers) -> None:
    pair = pki.serving()
    pki.write_serving(own_workers.tls.cert_file.parent, pair)
    new = fingerprint(pair.cert_pem)
    reloaded: set[int] = set()

    def every_worker_reloaded() -> bool:
        state = own_workers.connect().readiness()
        if state["tls_fingerprint"] == new:
            reloaded.add(state["worker"]["index"])
        return len(reloaded) == WORKERS

    wait_until(every_worker_reloaded, "each worker to serve the new certificate", interval=0.05)
    wait_until(
        lambda: (
            len(re.findall(f"tls certificate reloaded fingerprint={new}", own_workers.log_text())) == WORKERS
        ),
        "each worker's reload line in the log",
    )


# -- failing to start ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), UNUSABLE_FILES)
def test_unusable_files_exit_2_with_one_line_before_any_worker_starts(
    pki: Pki, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    tls = pki.write_serving(tmp_path)
    argv = [a.format(cert=tls.cert_file, key=tls.key_file) for a in args]
    command = serve_command(*argv, "--port", str(free_port()), "--workers", str(WORKERS))
    assert_refused_with_one_line(command, message, cwd=tmp_path)


def test_a_port_someone_holds_exits_2_with_one_line(pki: Pki, tmp_path: Path) -> None:
    tls = pki.write_serving(tmp_path)
    with held_port() as port:
        command = serve_static_command(tls, port, "--workers", str(WORKERS))
        assert_refused_with_one_line(command, f"cannot listen on 127.0.0.1:{port}")


@contextmanager
def held_port() -> Iterator[int]:
    """A plain listening socket on a loopback port (someone else's server)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield int(holder.getsockname()[1])


def run_supervisor_rig(code: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.webhook.supervisorrig", "fail-at-start", str(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_workers_that_keep_failing_to_start_end_the_server_with_one_error_line() -> None:
    result = run_supervisor_rig(3)

    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("extproc-guard serve: error: worker ")
    assert "failed to start 3 times in a row (last: worker " in lines[-1]
    assert lines[-1].endswith(": no luck, exit code 3)")
    assert "Traceback" not in result.stderr
    restarts = [line for line in lines if "before it listened: worker" in line]
    assert len(restarts) >= 2, result.stderr


def test_a_settings_error_of_a_worker_at_first_start_ends_the_server_at_once_with_its_line() -> None:
    result = run_supervisor_rig(2)

    assert result.returncode == 2
    assert re.fullmatch(r"extproc-guard serve: error: worker [01]: no luck\n", result.stderr), result.stderr


@pytest.mark.parametrize("value", ["0", "-1", "many", "1000"], ids=["zero", "negative", "word", "too-many"])
def test_a_workers_value_that_is_not_a_count_is_a_usage_error(pki: Pki, tmp_path: Path, value: str) -> None:
    tls = pki.write_serving(tmp_path)
    result = subprocess.run(
        serve_static_command(tls, free_port(), "--workers", value), capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2
    assert "--workers" in result.stderr
