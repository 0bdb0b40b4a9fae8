"""Answer "what is this Service's ClusterIP" from a live cluster with one read-only GET per Service.

For the CLI (`check --kubeconfig`, `fix --kubeconfig`): a run asks about a handful of Services, so a plain
GET with a per-run memo is enough. The long-running webhook keeps an informer cache instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kube.addresses import address_of
from kube.client import build_api_client
from policies import (
    ServiceAddress,
    ServiceLookupError,
    ServiceNotFound,
    ServiceRef,
    ServiceUnknown,
)

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0


class KubeServiceResolver:
    """Reads Services with `CoreV1Api.read_namespaced_service`; never writes anything."""

    def __init__(self, api: Any, *, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self._api = api
        self._timeout = timeout
        self._answers: dict[ServiceRef, ServiceAddress | ServiceLookupError] = {}

    def lookup(self, ref: ServiceRef) -> ServiceAddress:
        answer = self._answers.get(ref)
        if answer is None:
            answer = self._fetch(ref)
            self._answers[ref] = answer
        if isinstance(answer, ServiceLookupError):
            raise answer
        return answer

    def _fetch(self, ref: ServiceRef) -> ServiceAddress | ServiceLookupError:
        try:
            service = self._api.read_namespaced_service(
                ref.name, ref.namespace, _request_timeout=self._timeout
            )
        except ApiException as exc:
            logger.info("service lookup failed service=%s status=%s", ref, exc.status)
            if exc.status == 404:
                return ServiceNotFound(ref, "does not exist in the cluster")
            if exc.status in (401, 403):
                return ServiceUnknown(ref, f"the API server refused the read ({exc.status} {exc.reason})")
            return ServiceUnknown(ref, f"the API server answered {exc.status} {exc.reason}")
        except Exception as exc:  # urllib3 and socket errors have no common base worth naming
            logger.info("service lookup failed service=%s error=%s", ref, exc)
            return ServiceUnknown(ref, f"the API server is unreachable ({type(exc).__name__})")
        return address_of(ref, service)


def build_kube_resolver(
    *, kubeconfig: Path | None, context: str | None, environ: Mapping[str, str] | None = None
) -> KubeServiceResolver:
    """A resolver on its own API client from `kube.client.build_api_client` (its configuration order:
    `kubeconfig`, in-cluster, `KUBECONFIG`, `~/.kube/config`); raises `KubeConfigError`."""
    api_client = build_api_client(kubeconfig=kubeconfig, context=context, environ=environ)
    return KubeServiceResolver(client.CoreV1Api(api_client))
