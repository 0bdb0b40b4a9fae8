"""`extproc-guard serve` as a child process on loopback, and the webhook configurations that point the
apiserver at it. Shared by the end-to-end tests and the end-to-end benchmark."""

from __future__ import annotations

import base64
import logging
import shutil
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.e2e import pki
from tests.e2e.cluster import (
    LOOPBACK,
    START_TIMEOUT_S,
    ControlPlaneError,
    Kubectl,
    ManagedProcess,
    http_ok,
    pick_free_port,
)
from tests.polling import WaitFailed, wait_until

logger = logging.getLogger(__name__)

CONFIGURATION_NAME = "extproc-guard-e2e"
MUTATING_WEBHOOK = "envoyfilters.mutate.extproc-guard.io"
VALIDATING_WEBHOOK = "envoyfilters.validate.extproc-guard.io"


def webhook_configurations(
    port: int, ca_pem: bytes, namespace_labels: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Mutating + Validating configurations for EnvoyFilter CREATE/UPDATE, calling 127.0.0.1:port;
    with `namespace_labels`, only for namespaces that carry those labels."""
    ca_bundle = base64.b64encode(ca_pem).decode()

    def webhook(name: str, path: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": f"https://{LOOPBACK}:{port}{path}", "caBundle": ca_bundle},
            "rules": [
                {
                    "apiGroups": ["networking.istio.io"],
                    "apiVersions": ["*"],
                    "resources": ["envoyfilters"],
                    "operations": ["CREATE", "UPDATE"],
                    "scope": "Namespaced",
                }
            ],
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "sideEffects": "None",
            "timeoutSeconds": 5,
        }
        if namespace_labels:
            config["namespaceSelector"] = {"matchLabels": dict(namespace_labels)}
        return config

    mutating = webhook(MUTATING_WEBHOOK, "/mutate")
    mutating["reinvocationPolicy"] = "IfNeeded"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": CONFIGURATION_NAME},
            "webhooks": [mutating],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": CONFIGURATION_NAME},
            "webhooks": [webhook(VALIDATING_WEBHOOK, "/validate")],
        },
    ]


@dataclass
class WebhookServer:
    """`extproc-guard serve` on a loopback port with a generated CA and a serving cert for 127.0.0.1."""

    cli: Path
    kubeconfig: Path
    work_dir: Path
    port: int
    ca_pem: bytes
    cert_file: Path
    key_file: Path
    process: ManagedProcess

    @classmethod
    def create(cls, cli: Path, kubeconfig: Path, help_text: str) -> WebhookServer:
        """Certificates in a private temp dir and the command line; nothing runs until start()."""
        work_dir = Path(tempfile.mkdtemp(prefix="extproc-guard-webhook-"))
        ca = pki.create_ca("extproc-guard-e2e-webhook-ca")
        serving = pki.issue_cert(ca, "extproc-guard-webhook", ips=[LOOPBACK])
        cert_file, key_file = work_dir / "tls.crt", work_dir / "tls.key"
        cert_file.write_bytes(serving.cert_pem)
        key_file.write_bytes(serving.key_pem)
        key_file.chmod(0o600)
        port = pick_free_port()
        argv = [
            str(cli),
            "serve",
            "--tls-cert",
            str(cert_file),
            "--tls-key",
            str(key_file),
            "--port",
            str(port),
            "--kubeconfig",
            str(kubeconfig),
        ]
        # Listen on loopback only, where the command lets us say so.
        for flag in ("--host", "--bind", "--address"):
            if flag in help_text:
                argv += [flag, LOOPBACK]
                break
        process = ManagedProcess("extproc-guard serve", argv, work_dir / "serve.log")
        return cls(cli, kubeconfig, work_dir, port, ca.cert_pem, cert_file, key_file, process)

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Start the server and wait (bounded) until its /readyz answers 200 over TLS."""
        self.process.start()
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        try:
            wait_until(
                lambda: http_ok(f"{self.url}/readyz", context),
                "extproc-guard serve /readyz",
                timeout=START_TIMEOUT_S,
                interval=0.1,
                alive=self.process.death,
            )
        except WaitFailed as error:
            if self.process.death() is not None:
                raise  # its message already ends with the log
            raise ControlPlaneError(f"{error}; last log lines:\n{self.log_tail()}") from error

    def stop(self) -> None:
        self.process.stop()

    def log_tail(self) -> str:
        return self.process.log_tail()

    def remove(self) -> None:
        """Stop the server and delete its temp dir."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def register_webhooks(
    kubectl: Kubectl,
    server: WebhookServer,
    probe: dict[str, Any],
    namespace_labels: Mapping[str, str] | None = None,
) -> None:
    """Install the configurations, then wait until the apiserver really calls the webhook: a server
    dry run of `probe` (a filter the webhook changes) comes back changed."""
    configurations = webhook_configurations(server.port, server.ca_pem, namespace_labels)
    kubectl.apply(yaml.safe_dump_all(configurations))
    wait_until(
        lambda: _probe_mutated(kubectl, probe),
        "webhook configurations in effect",
        timeout=60,
        interval=0.25,
        alive=server.process.death,
    )


def _probe_mutated(kubectl: Kubectl, probe: dict[str, Any]) -> bool:
    result = kubectl.apply(yaml.safe_dump(probe), "--dry-run=server", "-o", "yaml", check=False)
    if result.returncode != 0:
        # Denied is also proof the webhook is called; anything else (not yet wired) is not.
        return "denied the request" in result.stderr
    returned = yaml.safe_load(result.stdout)
    return isinstance(returned, dict) and returned.get("spec") != probe.get("spec")


def unregister_webhooks(kubectl: Kubectl) -> None:
    """Delete the configurations (missing ones are fine)."""
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        result = kubectl.run("delete", kind, CONFIGURATION_NAME, "--ignore-not-found", check=False)
        if result.returncode != 0:
            logger.warning("could not delete %s: %s", kind, result.stderr.strip())
