"""A `kubernetes` API client of its own, from a kubeconfig file or the pod's service account."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException


class KubeConfigError(Exception):
    """The kubeconfig or in-cluster configuration cannot be used; one plain line."""


def build_api_client(*, kubeconfig: Path | None, context: str | None, user_agent: str | None = None) -> Any:
    """An `ApiClient` of its own (kubeconfig None = the pod's service account); the library's global
    default configuration is left alone. `user_agent` None keeps the library's."""
    try:
        if kubeconfig is None:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            api_client = client.ApiClient(configuration)
        else:
            if not kubeconfig.is_file():
                raise KubeConfigError(f"{kubeconfig}: kubeconfig file not found")
            api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), context=context, persist_config=False
            )
    except (ConfigException, OSError, ValueError, TypeError) as error:
        where = str(kubeconfig) if kubeconfig is not None else "in-cluster config"
        raise KubeConfigError(f"{where}: cannot use it: {' '.join(str(error).split())}") from None
    if user_agent is not None:
        api_client.user_agent = user_agent
    return api_client
