"""Shared parts of the webhook server tests: real certificates, a real server on loopback, review bodies.

The server runs `webhook.server.make_app` in its own thread and event loop (as in production, one loop
serves every request), so a test's client and Hypothesis' synchronous examples talk to it over real TLS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.pki import KeyPair, generate_ca, issue_serving_cert
from policies.resolver import ServiceAddress, ServiceRef
from webhook.server import make_app, start_server
from webhook.settings import ServeSettings, TLSSettings

EPP = ServiceRef("llm-d-inference-scheduler", "gaie-inference-scheduling-epp")
EPP_ADDRESS = ServiceAddress("10.96.45.12", (9002,))
STATIC_SERVICES = {EPP: EPP_ADDRESS}
START_SECONDS = 20.0


# -- certificates -----------------------------------------------------------------------------------
@dataclass
class Pki:
    """A CA and what it issues; `write_serving` puts a fresh serving pair at the given paths."""

    ca: KeyPair = field(
        default_factory=lambda: generate_ca(
            common_name="webhook test CA", now=_now(), valid_for=timedelta(days=2)
        )
    )

    def serving(self) -> KeyPair:
        return issue_serving_cert(
            self.ca,
            dns_names=["localhost"],
            ip_addresses=["127.0.0.1"],
            now=_now(),
            valid_for=timedelta(days=1),
        )

    def client(self, common_name: str = "kube-apiserver") -> KeyPair:
        """A client certificate (clientAuth), as an apiserver that authenticates to webhooks presents."""
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem)
        ca_key = serialization.load_pem_private_key(self.ca.key_pem, password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return KeyPair(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=key_pem)

    def write_serving(self, folder: Path, pair: KeyPair | None = None) -> TLSSettings:
        pair = pair or self.serving()
        folder.mkdir(parents=True, exist_ok=True)
        replace_file(folder / "tls.crt", pair.cert_pem)
        replace_file(folder / "tls.key", pair.key_pem)
        return TLSSettings(cert_file=folder / "tls.crt", key_file=folder / "tls.key")


def _now() -> datetime:
    return datetime.now(UTC)


def replace_file(path: Path, data: bytes) -> None:
    """Write atomically (rename), as a Secret volume update swaps whole files."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    temporary.replace(path)


def fingerprint(cert_pem: bytes) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert_pem.decode())
    return hashlib.sha256(der).hexdigest()


def client_context(pki: Pki, *, client: KeyPair | None = None, folder: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=pki.ca.cert_pem.decode())
    if client is not None:
        assert folder is not None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "client.crt").write_bytes(client.cert_pem)
        (folder / "client.key").write_bytes(client.key_pem)
        context.load_cert_chain(folder / "client.crt", folder / "client.key")
    return context


def served_fingerprint(port: int, context: ssl.SSLContext, *, timeout: float = 5.0) -> str:
    """Open a fresh TLS connection and hash the certificate the server presents."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


# -- the server -------------------------------------------------------------------------------------
class ServerThread:
    """`make_app(settings)` served on 127.0.0.1:<free port> in a thread with its own loop."""

    def __init__(self, settings: ServeSettings, *, kube_api: Any = None) -> None:
        self.settings = settings
        self._kube_api = kube_api
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="webhook-server", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported to the test thread by start()
            self._error = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = make_app(self.settings, kube_api=self._kube_api)
        self.app = app
        runner, self.port = await start_server(app, host="127.0.0.1", port=0)
        try:
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(START_SECONDS):
            raise TimeoutError("the webhook server did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_SECONDS)
        assert not self._thread.is_alive(), "the webhook server did not stop"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@contextmanager
def running_server(settings: ServeSettings, *, kube_api: Any = None) -> Iterator[ServerThread]:
    server = ServerThread(settings, kube_api=kube_api).start()
    try:
        yield server
    finally:
        server.stop()


# -- reviews ----------------------------------------------------------------------------------------
def review_of(
    obj: Mapping[str, Any] | None,
    *,
    operation: str = "CREATE",
    uid: str | None = None,
    dry_run: bool = False,
    kind: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    metadata = (obj or {}).get("metadata") or {}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": dict(
                kind or {"group": "networking.istio.io", "version": "v1alpha3", "kind": "EnvoyFilter"}
            ),
            "resource": {"group": "networking.istio.io", "version": "v1alpha3", "resource": "envoyfilters"},
            "requestKind": {"group": "networking.istio.io", "version": "v1alpha3", "kind": "EnvoyFilter"},
            "name": metadata.get("name", ""),
            "namespace": metadata.get("namespace", ""),
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:llm-d:operator",
                "groups": ["system:authenticated"],
            },
            "object": None if obj is None else dict(obj),
            "oldObject": None,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def decode_patch(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    assert isinstance(patch, list)
    return patch
