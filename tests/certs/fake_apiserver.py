"""A small stand-in for the Kubernetes REST API: Secrets and webhook configurations only.

Used because no kube-apiserver runs in the unit suite; it speaks the real wire protocol (paths, verbs,
JSON Patch with `test` ops, resourceVersion conflicts, Status bodies), so the real `kubernetes` client
talks to it unchanged. Every request is recorded for assertions.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

SECRET = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/?]+))?$")
WEBHOOK = re.compile(
    r"^/apis/admissionregistration\.k8s\.io/v1/(?P<kind>mutating|validating)webhookconfigurations/(?P<name>[^/?]+)$"
)


@dataclass
class FakeApiState:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    version: int = 100
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def put_webhook_configuration(self, kind: str, name: str, webhook_names: list[str]) -> None:
        key = f"{kind}/{name}"
        kind_name = "MutatingWebhookConfiguration" if kind == "mutating" else "ValidatingWebhookConfiguration"
        self.objects[key] = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind_name,
            "metadata": {"name": name, "resourceVersion": self.next_version()},
            "webhooks": [
                {"name": hook, "clientConfig": {"service": {"name": "svc", "namespace": "ns"}}}
                for hook in webhook_names
            ],
        }

    def writes(self) -> list[tuple[str, str]]:
        return [(verb, path) for verb, path in self.requests if verb != "GET"]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


class _Handler(BaseHTTPRequestHandler):
    state: FakeApiState

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def _key(self) -> tuple[str | None, str | None]:
        path = self.path.split("?", 1)[0]
        if match := SECRET.match(path):
            name = match["name"]
            return (f"secret/{match['ns']}/{name}" if name else f"secrets/{match['ns']}"), match["ns"]
        if match := WEBHOOK.match(path):
            return f"{match['kind']}/{match['name']}", None
        return None, None

    def _handle(self, verb: str) -> None:
        state = self.state
        with state.lock:
            state.requests.append((verb, self.path.split("?", 1)[0]))
            key, namespace = self._key()
            if key is None:
                self._send(404, _status(404, "NotFound", f"no route {self.path}"))
                return
            if verb == "POST" and key.startswith("secrets/"):
                body = self._body()
                name = body["metadata"]["name"]
                target = f"secret/{namespace}/{name}"
                if target in state.objects:
                    self._send(409, _status(409, "AlreadyExists", f'secrets "{name}" already exists'))
                    return
                body["metadata"]["resourceVersion"] = state.next_version()
                state.objects[target] = body
                self._send(201, body)
                return
            current = state.objects.get(key)
            if current is None:
                self._send(404, _status(404, "NotFound", f"{key} not found"))
                return
            if verb == "GET":
                self._send(200, current)
            elif verb == "PUT":
                body = self._body()
                if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                    self._send(409, _status(409, "Conflict", "the object has been modified"))
                    return
                body["metadata"]["resourceVersion"] = state.next_version()
                state.objects[key] = body
                self._send(200, body)
            elif verb == "PATCH":
                if self.headers.get("Content-Type") != "application/json-patch+json":
                    self._send(415, _status(415, "UnsupportedMediaType", "json-patch only here"))
                    return
                try:
                    patched = jsonpatch.apply_patch(current, self._body())
                except jsonpatch.JsonPatchTestFailed:
                    self._send(409, _status(409, "Conflict", "the object has been modified"))
                    return
                patched["metadata"]["resourceVersion"] = state.next_version()
                state.objects[key] = patched
                self._send(200, patched)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")


@contextmanager
def run_fake_apiserver(folder: Path) -> Iterator[tuple[FakeApiState, Path]]:
    """Serve on a free loopback port; yield the state and a kubeconfig that points at it."""
    state = FakeApiState()
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    kubeconfig = folder / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "fake", "user": {"token": "fake"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    try:
        yield state, kubeconfig
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
