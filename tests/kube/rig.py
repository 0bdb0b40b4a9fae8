"""Helpers for the `kube/` tests (their fixtures are in conftest.py): kubeconfig files and an HTTPS stand-in
for the API server with a CA of its own that accepts one bearer token."""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from certs.pki import generate_ca, issue_serving_cert

TOKEN = "sa-token-1"
WriteKubeconfig = Callable[..., Path]
"""`write(name, {context: server_url, ...}, current=CONTEXT) -> Path`"""


def write_kubeconfig_file(path: Path, contexts: Mapping[str, str], *, current: str | None = None) -> Path:
    """A kubeconfig with one cluster and user (token `CONTEXT-token`) per context; `current` defaults to
    the first context."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": f"{c}-cluster", "cluster": {"server": url}} for c, url in contexts.items()],
        "users": [{"name": f"{c}-user", "user": {"token": f"{c}-token"}} for c in contexts],
        "contexts": [
            {"name": c, "context": {"cluster": f"{c}-cluster", "user": f"{c}-user"}} for c in contexts
        ],
        "current-context": current or next(iter(contexts)),
    }
    path.write_text(json.dumps(config))
    return path


@dataclass
class TlsApiServer:
    """An HTTPS stand-in for the API server: answers `GET /api/v1/namespaces/NS/services/NAME` from
    `services` when the request carries `Bearer TOKEN`, 401 otherwise, and records every request."""

    port: int
    ca_pem: bytes
    services: dict[tuple[str, str], dict[str, Any]]
    requests: list[tuple[str, str]] = field(default_factory=list)


@contextlib.contextmanager
def serving_tls_api(folder: Path) -> Iterator[TlsApiServer]:
    """Run a `TlsApiServer` on a free loopback port (certificates written under `folder`) until exit."""
    now = datetime.now(UTC)
    ca = generate_ca(common_name="test-cluster-ca", now=now, valid_for=timedelta(days=1))
    serving = issue_serving_cert(
        ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"], now=now, valid_for=timedelta(days=1)
    )
    (folder / "tls.crt").write_bytes(serving.cert_pem)
    (folder / "tls.key").write_bytes(serving.key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "tls.crt", folder / "tls.key")

    state = TlsApiServer(port=0, ca_pem=ca.cert_pem, services={})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.headers.get("Authorization", ""), self.path))
            if self.headers.get("Authorization", "").lower() != f"bearer {TOKEN}":
                self.answer(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
                return
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and parts[4] == "services":
                service = state.services.get((parts[3], parts[5]))
                if service is not None:
                    self.answer(200, service)
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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
