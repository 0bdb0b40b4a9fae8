"""Answer "what is this Service's ClusterIP" from a live cluster with one read-only GET per Service.

For the CLI (`check --kubeconfig`, `fix --kubeconfig`): a run asks about a handful of Services, so a plain
GET with a per-run memo is enough. The long-running webhook keeps an informer cache instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from kube.client import KubeConfigError
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


def address_of(ref: ServiceRef, service: Any) -> ServiceAddress | ServiceLookupError:
    """The ClusterIP and ports of a `V1Service`, or why it has none usable."""
    spec = service.spec
    cluster_ip = getattr(spec, "cluster_ip", None) if spec is not None else None
    if not cluster_ip or cluster_ip == "None":
        return ServiceNotFound(ref, "is headless (no ClusterIP), so no STATIC address can point at it")
    ports = tuple(int(p.port) for p in (spec.ports or []) if getattr(p, "port", None))
    return ServiceAddress(cluster_ip=str(cluster_ip), ports=ports)


def build_kube_resolver(
    *, kubeconfig: Path | None, context: str | None, in_cluster: bool
) -> KubeServiceResolver:
    """A resolver on its own API client (the library's global default configuration is left alone)."""
    try:
        if in_cluster and kubeconfig is None:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            api_client = client.ApiClient(configuration)
        else:
            if kubeconfig is not None and not kubeconfig.is_file():
                raise KubeConfigError(f"{kubeconfig}: kubeconfig file not found")
            api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig) if kubeconfig is not None else None,
                context=context,
                persist_config=False,
            )
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        where = str(kubeconfig) if kubeconfig is not None else "in-cluster config"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise KubeConfigError(f"{where}: cannot use it: {reason}") from None
    return KubeServiceResolver(client.CoreV1Api(api_client))
