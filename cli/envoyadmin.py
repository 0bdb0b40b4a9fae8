"""Read Envoy's admin output: from an admin URL, or from a gateway pod through the Kubernetes exec API."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

MAX_ADMIN_BYTES = 64 * 1024 * 1024


class AdminReadError(Exception):
    """Envoy's admin output could not be read; the message is one plain sentence."""


class AdminSource(Protocol):
    """Something that returns the text of an admin endpoint (`stats`, `clusters`)."""

    def read(self, endpoint: str) -> str: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class AdminUrl:
    """Envoy's admin listener over HTTP (`http://127.0.0.1:15000`)."""

    base: str
    timeout: float = 10.0

    def read(self, endpoint: str) -> str:
        url = f"{self.base.rstrip('/')}/{endpoint}"
        logger.debug("reading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                body: bytes = response.read(MAX_ADMIN_BYTES + 1)
        except urllib.error.HTTPError as error:
            raise AdminReadError(f"{url} answered HTTP {error.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise AdminReadError(f"cannot read {url}: {reason}") from None
        if len(body) > MAX_ADMIN_BYTES:
            raise AdminReadError(f"{url} sent more than {MAX_ADMIN_BYTES} bytes")
        return body.decode("utf-8", errors="replace")

    def describe(self) -> str:
        return self.base


def parse_admin_url(value: str, *, timeout: float = 10.0) -> AdminUrl:
    """Check an `--admin` value: an http(s) URL with a host; raise ValueError with a plain reason."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http URL: {value!r} (expected e.g. http://127.0.0.1:15000)")
    return AdminUrl(value, timeout=timeout)


@dataclass(frozen=True, slots=True)
class PodTarget:
    namespace: str
    name: str
    container: str = "istio-proxy"


def parse_pod(value: str, container: str) -> PodTarget:
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"expected NAMESPACE/NAME, got {value!r}")
    return PodTarget(namespace, name, container)


def pilot_agent_command(endpoint: str) -> list[str]:
    """The command the seed's verification steps ran by hand in the gateway's proxy container."""
    return ["pilot-agent", "request", "GET", endpoint]


@dataclass(frozen=True, slots=True)
class PodExec:
    """Envoy's admin inside a gateway pod, read with `pilot-agent request GET ...` over the exec API."""

    target: PodTarget
    kubeconfig: str | None = None
    timeout: float = 30.0

    def read(self, endpoint: str) -> str:
        from kubernetes import client
        from kubernetes.stream import stream
        from kubernetes.stream.ws_client import ERROR_CHANNEL, STDERR_CHANNEL, STDOUT_CHANNEL

        api = client.CoreV1Api(self._api_client())
        try:
            session = stream(
                api.connect_get_namespaced_pod_exec,
                self.target.name,
                self.target.namespace,
                container=self.target.container,
                command=pilot_agent_command(endpoint),
                stderr=True,
                stdin=False,
                stdout=True,
                tty=False,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        except Exception as error:  # the client raises many types (ApiException, websocket, urllib3)
            raise AdminReadError(f"exec in pod {self.describe()} failed: {_one_line(error)}") from None
        try:
            session.run_forever(timeout=self.timeout)
            if session.is_open():
                raise AdminReadError(f"exec in pod {self.describe()} did not finish in {self.timeout:g} s")
            stdout = str(session.read_channel(STDOUT_CHANNEL) or "")
            stderr = str(session.read_channel(STDERR_CHANNEL) or "")
            status_text = str(session.read_channel(ERROR_CHANNEL) or "")
        finally:
            session.close()
        failure = _exec_failure(status_text, stderr)
        if failure:
            raise AdminReadError(
                f"`{' '.join(pilot_agent_command(endpoint))}` in pod {self.describe()}: {failure}"
            )
        return stdout

    def _api_client(self) -> Any:
        """A client from `kube.client.build_api_client`: `kubeconfig`, else in-cluster, else `KUBECONFIG`,
        else `~/.kube/config`."""
        from kube.client import KubeConfigError, build_api_client

        try:
            return build_api_client(kubeconfig=Path(self.kubeconfig) if self.kubeconfig else None)
        except KubeConfigError as error:
            raise AdminReadError(str(error)) from None

    def describe(self) -> str:
        return f"{self.target.namespace}/{self.target.name} ({self.target.container})"


def _exec_failure(status_text: str, stderr: str) -> str | None:
    """The reason an exec failed, from its status channel (a metav1.Status as JSON), or None on success."""
    if not status_text.strip():
        return None
    try:
        status = json.loads(status_text)
    except json.JSONDecodeError:
        return _one_line(ValueError(status_text))
    if not isinstance(status, dict) or status.get("status") == "Success":
        return None
    reason = str(status.get("message") or status.get("reason") or "failed")
    detail = stderr.strip().splitlines()
    return f"{reason} ({detail[-1]})" if detail else reason


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
