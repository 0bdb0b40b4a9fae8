"""`serve --workers 2 --kubeconfig` against the real kube-apiserver: each worker syncs its own caches, writes
through the apiserver are stored corrected, and `/metrics` counts every review whichever worker took it
(the log has one line per review from every worker)."""

from __future__ import annotations

import http.client
import json
import re
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from tests.documents import load_document, renamed
from tests.e2e.cluster import LOOPBACK, ControlPlaneInfo, Kubectl, ManagedProcess, cli_help, find_cli
from tests.e2e.objects import EppService
from tests.e2e.seeds import dump, pinned_to
from tests.e2e.webhook_server import WebhookServer, register_webhooks, unregister_webhooks
from tests.polling import wait_until

pytestmark = pytest.mark.e2e

WORKERS = 2
FILTERS = 6


def readiness(server: WebhookServer) -> dict[str, Any]:
    """/readyz on a fresh connection (so from whichever worker the kernel picks), with its status."""
    context = ssl.create_default_context(cadata=server.ca_pem.decode())
    connection = http.client.HTTPSConnection(LOOPBACK, server.port, context=context, timeout=10)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        state = json.loads(response.read())
    finally:
        connection.close()
    assert isinstance(state, dict)
    state["status"] = response.status
    return state


def metrics(server: WebhookServer) -> str:
    context = ssl.create_default_context(cadata=server.ca_pem.decode())
    connection = http.client.HTTPSConnection(LOOPBACK, server.port, context=context, timeout=10)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def ready_by_worker() -> dict[int, dict[str, Any]]:
    return {}


@pytest.fixture(scope="module")
def webhook(
    control_plane: ControlPlaneInfo,
    kubectl: Kubectl,
    epp_service: EppService,
    ready_by_worker: dict[int, dict[str, Any]],
) -> Iterator[WebhookServer]:
    """`serve --workers 2` running, every worker ready, registered (mutating + validating)."""
    server = WebhookServer.create(find_cli(), control_plane.kubeconfig, cli_help("serve"))
    single = server.process
    server.process = ManagedProcess(single.name, [*single.argv, "--workers", str(WORKERS)], single.log_path)
    try:
        server.start()

        def every_worker_ready() -> bool:
            state = readiness(server)
            if state["status"] == 200:
                ready_by_worker[state["worker"]["index"]] = state
            return len(ready_by_worker) == WORKERS

        wait_until(every_worker_ready, "/readyz 200 from each worker", timeout=60, interval=0.05)
        register_webhooks(kubectl, server, renamed(load_document("seed-bad.yaml"), "workers-probe"))
        yield server
    finally:
        unregister_webhooks(kubectl)
        server.remove()


def test_each_worker_has_synced_its_own_caches_from_the_apiserver(
    webhook: WebhookServer, ready_by_worker: dict[int, dict[str, Any]]
) -> None:
    pids = {state["worker"]["pid"] for state in ready_by_worker.values()}
    assert len(pids) == WORKERS
    for state in ready_by_worker.values():
        assert state["services"]["source"] == "kubernetes"
        assert state["services"]["synced"] is True
        assert state["services"]["count"] >= 1
        assert state["context"]["synced"] is True


def test_filters_written_through_the_apiserver_are_stored_corrected_and_every_review_is_counted(
    webhook: WebhookServer, kubectl: Kubectl, epp_service: EppService
) -> None:
    corrected = pinned_to(load_document("seed-corrected.yaml"), epp_service.cluster_ip)
    names = [f"workers-{number}" for number in range(FILTERS)]
    for name in names:
        result = kubectl.apply(dump(renamed(load_document("seed-bad.yaml"), name)), check=False)
        assert result.returncode == 0, f"{result.stderr}\n{webhook.log_tail()}"

    for name in names:
        stored = kubectl.get_json("envoyfilter", name, "-n", epp_service.namespace)
        assert stored["spec"] == corrected["spec"]

    def logged_mutations() -> int:
        text = webhook.process.log_path.read_text(errors="replace")
        return len(re.findall(r" webhook=mutate uid=", text))

    def counted_mutations() -> float:
        lines = re.findall(
            r'^extproc_guard_reviews_total\{[^}]*webhook="mutate"[^}]*\} (\S+)$', metrics(webhook), re.M
        )
        return sum(float(value) for value in lines)

    wait_until(
        lambda: logged_mutations() >= FILTERS and counted_mutations() == logged_mutations(),
        "/metrics to count every mutation the workers logged",
        interval=0.1,
    )
