"""The Kubernetes side of the certificates: TLS Secrets and the `caBundle` of webhook configurations.

Two Secrets hold the state: the serving Secret (`kubernetes.io/tls`: `tls.crt`, `tls.key`, `ca.crt`) that the
webhook Pods mount, and a CA Secret (`ca.crt`, `ca.key`) that only the certificate job reads, so the CA key
never reaches the serving Pods. Writes carry the `resourceVersion` that was read, so a concurrent writer
makes this fail with a conflict instead of being overwritten.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from certs.files import CA_CERT, CA_KEY, TLS_CERT, TLS_KEY
from certs.rotation import StoredCerts
from kube import client as kube_client

logger = logging.getLogger(__name__)

MANAGED_BY = "extproc-guard-certs"
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
REQUEST_TIMEOUT_SECONDS = 15


class CaBundleError(Exception):
    """A Kubernetes step of the certificate command failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class SecretNames:
    namespace: str
    serving: str
    ca: str


@dataclass(frozen=True, slots=True)
class _SecretState:
    data: dict[str, bytes]
    resource_version: str | None


@dataclass(frozen=True, slots=True)
class StoredSecrets:
    """The certificates found in the two Secrets, and the versions to write back against."""

    certs: StoredCerts
    serving_version: str | None
    ca_version: str | None


def build_api_client(kubeconfig: Path | None) -> client.ApiClient:
    """A client from `kube.client.build_api_client` (`kubeconfig`, else in-cluster, else `KUBECONFIG`, else
    `~/.kube/config`), with its error as a `CaBundleError`."""
    try:
        api_client: client.ApiClient = kube_client.build_api_client(kubeconfig=kubeconfig)
    except kube_client.KubeConfigError as exc:
        raise CaBundleError(f"cannot load a Kubernetes configuration: {exc}") from None
    return api_client


def read_secrets(api: client.ApiClient, names: SecretNames) -> StoredSecrets:
    core = client.CoreV1Api(api)
    serving = _read_secret(core, names.namespace, names.serving)
    ca = _read_secret(core, names.namespace, names.ca)
    return StoredSecrets(
        certs=StoredCerts(
            ca_bundle=ca.data.get(CA_CERT),
            ca_key=ca.data.get(CA_KEY),
            serving_cert=serving.data.get(TLS_CERT),
            serving_key=serving.data.get(TLS_KEY),
        ),
        serving_version=serving.resource_version,
        ca_version=ca.resource_version,
    )


def write_ca_secret(
    api: client.ApiClient, names: SecretNames, certs: StoredCerts, *, version: str | None
) -> bool:
    """Create or update the CA Secret; False when it already holds exactly this."""
    data = {CA_CERT: certs.ca_bundle, CA_KEY: certs.ca_key}
    return _write_secret(api, names.namespace, names.ca, "Opaque", data, version=version)


def write_serving_secret(
    api: client.ApiClient, names: SecretNames, certs: StoredCerts, *, version: str | None
) -> bool:
    """Create or update the serving Secret (`kubernetes.io/tls` plus `ca.crt`); False when unchanged."""
    data = {TLS_CERT: certs.serving_cert, TLS_KEY: certs.serving_key, CA_CERT: certs.ca_bundle}
    return _write_secret(api, names.namespace, names.serving, "kubernetes.io/tls", data, version=version)


def encode_ca_bundle(ca_bundle_pem: bytes) -> str:
    """The `caBundle` field's value: base64 of the PEM bundle."""
    return base64.b64encode(ca_bundle_pem).decode("ascii")


def patch_webhook_ca_bundles(api: client.ApiClient, names: Sequence[str], ca_bundle_pem: bytes) -> list[str]:
    """Set `clientConfig.caBundle` on every webhook of the named configurations (mutating and validating).

    Returns `Kind/name` of each configuration that was patched; one already up to date is not touched.
    A name found as neither kind is an error.
    """
    admission = client.AdmissionregistrationV1Api(api)
    wanted = encode_ca_bundle(ca_bundle_pem)
    patched = []
    for name in names:
        found = False
        for kind in WEBHOOK_KINDS:
            current = _read_webhook_configuration(admission, kind, name)
            if current is None:
                continue
            found = True
            ops = build_ca_bundle_patch(current, wanted)
            if ops:
                _patch_webhook_configuration(admission, kind, name, ops)
                patched.append(f"{kind}/{name}")
        if not found:
            raise CaBundleError(f"no Mutating- or ValidatingWebhookConfiguration named {name!r}")
    return patched


def build_ca_bundle_patch(configuration: dict[str, Any], ca_bundle_b64: str) -> list[dict[str, Any]]:
    """JSON Patch ops that set every webhook's caBundle, guarded by the object's resourceVersion."""
    ops: list[dict[str, Any]] = []
    for index, webhook in enumerate(configuration.get("webhooks") or []):
        client_config = webhook.get("clientConfig") or {}
        if client_config.get("caBundle") == ca_bundle_b64:
            continue
        if "clientConfig" not in webhook:
            ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig", "value": {}})
        ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": ca_bundle_b64})
    version = (configuration.get("metadata") or {}).get("resourceVersion")
    if ops and version:
        ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": version})
    return ops


def _read_secret(core: client.CoreV1Api, namespace: str, name: str) -> _SecretState:
    try:
        response = core.read_namespaced_secret(
            name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    except ApiException as exc:
        if exc.status == 404:
            return _SecretState(data={}, resource_version=None)
        raise CaBundleError(f"reading secret {namespace}/{name}: {_api_reason(exc)}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise CaBundleError(f"reading secret {namespace}/{name}: {_first_line(exc)}") from exc
    body = _json_body(response)
    raw = body.get("data") or {}
    try:
        data = {key: base64.b64decode(value, validate=True) for key, value in raw.items()}
    except ValueError as exc:
        raise CaBundleError(f"secret {namespace}/{name} holds data that is not base64") from exc
    return _SecretState(data=data, resource_version=(body.get("metadata") or {}).get("resourceVersion"))


def _write_secret(
    api: client.ApiClient,
    namespace: str,
    name: str,
    secret_type: str,
    data: dict[str, bytes | None],
    *,
    version: str | None,
) -> bool:
    core = client.CoreV1Api(api)
    wanted = {key: value for key, value in data.items() if value is not None}
    if version is not None and _read_secret(core, namespace, name).data == wanted:
        return False
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/name": "extproc-guard", "app.kubernetes.io/managed-by": MANAGED_BY},
    }
    if version is not None:
        metadata["resourceVersion"] = version
    secret = client.V1Secret.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": secret_type,
            "data": {key: base64.b64encode(value).decode("ascii") for key, value in wanted.items()},
        }
    )
    if secret is None:
        raise CaBundleError(f"cannot build secret {namespace}/{name}")
    try:
        if version is None:
            core.create_namespaced_secret(namespace, secret, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        else:
            core.replace_namespaced_secret(name, namespace, secret, _request_timeout=REQUEST_TIMEOUT_SECONDS)
    except ApiException as exc:
        raise CaBundleError(f"writing secret {namespace}/{name}: {_api_reason(exc)}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise CaBundleError(f"writing secret {namespace}/{name}: {_first_line(exc)}") from exc
    logger.info("wrote secret %s/%s", namespace, name)
    return True


def _read_webhook_configuration(
    admission: client.AdmissionregistrationV1Api, kind: str, name: str
) -> dict[str, Any] | None:
    read = (
        admission.read_mutating_webhook_configuration
        if kind == "MutatingWebhookConfiguration"
        else admission.read_validating_webhook_configuration
    )
    try:
        response = read(name, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise CaBundleError(f"reading {kind} {name}: {_api_reason(exc)}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise CaBundleError(f"reading {kind} {name}: {_first_line(exc)}") from exc
    return _json_body(response)


def _patch_webhook_configuration(
    admission: client.AdmissionregistrationV1Api, kind: str, name: str, ops: list[dict[str, Any]]
) -> None:
    patch = (
        admission.patch_mutating_webhook_configuration
        if kind == "MutatingWebhookConfiguration"
        else admission.patch_validating_webhook_configuration
    )
    try:
        patch(
            name,
            ops,
            _content_type="application/json-patch+json",
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
    except ApiException as exc:
        raise CaBundleError(f"patching {kind} {name}: {_api_reason(exc)}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise CaBundleError(f"patching {kind} {name}: {_first_line(exc)}") from exc
    logger.info("patched caBundle of %s %s (%d ops)", kind, name, len(ops))


def _json_body(response: object) -> dict[str, Any]:
    """The decoded JSON of a raw response (the client's `_preload_content=False` mode)."""
    try:
        body = json.loads(cast(Any, response).data)
    except ValueError as exc:
        raise CaBundleError(f"the apiserver answered with something that is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise CaBundleError("the apiserver answered with JSON that is not an object")
    return body


def _api_reason(exc: ApiException) -> str:
    """The apiserver's own message when the body is a Status, else the HTTP reason."""
    try:
        message = json.loads(exc.body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {exc.status} {message or exc.reason}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
