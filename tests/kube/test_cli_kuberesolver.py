"""`--kubeconfig` lookups: the real Kubernetes client and kubeconfig loader against a loopback HTTP server.

The server is a stand-in for the API server that answers only `GET /api/v1/namespaces/NS/services/NAME`
(the e2e suite runs the same resolver against a real kube-apiserver); it records every request so the
tests can show the resolver only ever reads.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cli.settings import ResolverSettings, build_resolver, parse_service_arg
from kube.resolver import build_kube_resolver
from policies.resolver import ServiceAddress, ServiceNotFound, ServiceRef, ServiceUnknown

SERVICES: dict[tuple[str, str], dict[str, Any]] = {
    ("llm-d", "epp"): {"clusterIP": "10.96.45.12", "ports": [{"port": 9002}, {"port": 9090}]},
    ("llm-d", "headless"): {"clusterIP": "None", "ports": [{"port": 9002}]},
}


class ServiceHandler(BaseHTTPRequestHandler):
    requests: list[tuple[str, str]]

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path))
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and parts[4] == "services":
            if parts[3] == "broken":
                self.answer(500, {"kind": "Status", "code": 500, "message": "etcd is sad"})
                return
            spec = SERVICES.get((parts[3], parts[5]))
            if spec is not None:
                self.answer(
                    200, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": parts[5]}, "spec": spec}
                )
                return
        self.answer(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

    def answer(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def api_server() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    requests: list[tuple[str, str]] = []
    handler = type("Handler", (ServiceHandler,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def write_kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path.write_text(json.dumps(config))
    return path


def test_a_service_is_read_with_its_cluster_ip_and_ports(
    api_server: tuple[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    url, requests = api_server
    resolver = build_kube_resolver(kubeconfig=write_kubeconfig(tmp_path / "kc", url), context=None)
    assert resolver.lookup(ServiceRef("llm-d", "epp")) == ServiceAddress("10.96.45.12", (9002, 9090))
    resolver.lookup(ServiceRef("llm-d", "epp"))
    assert {method for method, _ in requests} == {"GET"}
    assert requests.count(("GET", "/api/v1/namespaces/llm-d/services/epp")) == 1


@pytest.mark.parametrize(
    ("ref", "error", "reason"),
    [
        (ServiceRef("llm-d", "missing"), ServiceNotFound, "does not exist"),
        (ServiceRef("llm-d", "headless"), ServiceNotFound, "headless"),
        (ServiceRef("broken", "epp"), ServiceUnknown, "answered 500"),
    ],
    ids=["missing", "headless", "server-error"],
)
def test_a_service_without_a_usable_cluster_ip_is_a_lookup_error(
    api_server: tuple[str, list[tuple[str, str]]],
    tmp_path: Path,
    ref: ServiceRef,
    error: type[Exception],
    reason: str,
) -> None:
    resolver = build_kube_resolver(kubeconfig=write_kubeconfig(tmp_path / "kc", api_server[0]), context=None)
    with pytest.raises(error, match=reason):
        resolver.lookup(ref)


def test_an_unreachable_api_server_is_unknown_not_missing(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    resolver = build_kube_resolver(
        kubeconfig=write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}"),
        context=None,
    )
    with pytest.raises(ServiceUnknown, match="unreachable"):
        resolver.lookup(ServiceRef("llm-d", "epp"))


def test_static_answers_win_and_the_cluster_answers_the_rest(
    api_server: tuple[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    ref, address = parse_service_arg("llm-d/epp=10.1.1.1:9002")
    resolver = build_resolver(
        ResolverSettings(services={ref: address}, kubeconfig=write_kubeconfig(tmp_path / "kc", api_server[0]))
    )
    assert resolver.lookup(ref) == address
    with pytest.raises(ServiceNotFound):
        resolver.lookup(ServiceRef("llm-d", "missing"))
