"""The one factory for `kubernetes` API clients, with one configuration order.

`build_api_client` takes the first source that is present, in this order:

1. `kubeconfig`, when the caller names a file (a flag). It must exist.
2. In-cluster: the pod's service account (`KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` set and a
   token under `/var/run/secrets/kubernetes.io/serviceaccount`). Skipped when a `context` is named:
   contexts live in kubeconfig files.
3. `KUBECONFIG`: its files (a `:`-separated list whose contexts, clusters and users are merged by the
   library; files that do not exist are skipped, but at least one must).
4. `~/.kube/config`.

The first present source is the one used: when it cannot be loaded (a broken file, a service account
without its CA) that is the error, rather than a quiet switch to another cluster. `context` picks a
kubeconfig context (default: the file's current one).

This order replaced five factories. The certs command, the doctor's pod exec and EPP discovery already
followed it. `serve`, `reconcile` and `check`/`fix --in-cluster` without a kubeconfig used the service
account only; outside a pod they now fall back to `KUBECONFIG` and `~/.kube/config`.

The environment is read when the function is called, from the `environ` mapping it is given (default: the
process environment), never from what the `kubernetes` package captured at import. Every client has its own
`Configuration`; the package's global default configuration is never touched, so clients for different
clusters live side by side. Every failure is a `KubeConfigError` whose message is one plain line.

A configuration that skips TLS verification (`insecure-skip-tls-verify: true`) is said once, in the log,
when its client is built; urllib3's `InsecureRequestWarning`, which would otherwise be printed for every
request, is silenced (`urllib3.disable_warnings`, for that warning only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.config import incluster_config, kube_config

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
SERVICE_PORT_ENV = "KUBERNETES_SERVICE_PORT"
KUBECONFIG_ENV = "KUBECONFIG"


class KubeConfigError(Exception):
    """The kubeconfig or in-cluster configuration cannot be used; one plain line."""


def build_api_client(
    *,
    kubeconfig: Path | None = None,
    context: str | None = None,
    user_agent: str | None = None,
    environ: Mapping[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> Any:
    """An `ApiClient` of its own, configured from the first present source (see the module docstring).

    `user_agent` None keeps the library's. `environ` and `service_account_dir` are where the environment
    and the pod's service account are read (tests pass their own)."""
    configuration, source = load_configuration(
        kubeconfig=kubeconfig,
        context=context,
        environ=os.environ if environ is None else environ,
        service_account_dir=service_account_dir,
    )
    logger.debug("kubernetes client configured from %s host=%s", source, configuration.host)
    if not configuration.verify_ssl:
        logger.warning(
            "TLS verification of the Kubernetes API server is off (%s: insecure-skip-tls-verify); "
            "its identity is not checked for any request to %s",
            source,
            configuration.host,
        )
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    api_client = client.ApiClient(configuration)
    if user_agent is not None:
        api_client.user_agent = user_agent
    return api_client


def load_configuration(
    *,
    kubeconfig: Path | None,
    context: str | None,
    environ: Mapping[str, str],
    service_account_dir: Path,
) -> tuple[Any, str]:
    """A fresh `Configuration` and the name of the source it came from; raises `KubeConfigError`."""
    if kubeconfig is not None:
        if not kubeconfig.is_file():
            raise KubeConfigError(f"{kubeconfig}: kubeconfig file not found")
        return _from_kubeconfig(str(kubeconfig), context, where=str(kubeconfig)), str(kubeconfig)
    tried: list[str] = []
    if context is not None:
        tried.append(f"in-cluster config: skipped (context {context!r} names a kubeconfig context)")
    elif (absent := _in_cluster_absent(environ, service_account_dir)) is not None:
        tried.append(f"in-cluster config: {absent}")
    else:
        return _from_service_account(environ, service_account_dir), "in-cluster config"
    home = environ.get("HOME") or None
    listed = environ.get(KUBECONFIG_ENV, "")
    if listed:
        where = f"{KUBECONFIG_ENV}={listed}"
        paths = [_expand(part, home) for part in listed.split(os.pathsep) if part]
        present = [path for path in paths if os.path.isfile(path)]
        if not present:
            raise KubeConfigError(f"{where}: no such kubeconfig file")
        return _from_kubeconfig(os.pathsep.join(present), context, where=where), where
    tried.append(f"{KUBECONFIG_ENV}: not set")
    if home is None:
        tried.append("~/.kube/config: HOME is not set")
    else:
        default = Path(home) / ".kube" / "config"
        if default.is_file():
            return _from_kubeconfig(str(default), context, where=str(default)), str(default)
        tried.append(f"{default}: not found")
    raise KubeConfigError(f"no Kubernetes configuration found: {'; '.join(tried)}")


def _in_cluster_absent(environ: Mapping[str, str], service_account_dir: Path) -> str | None:
    """Why the pod's service account is not there to use (None = it is)."""
    if not environ.get(SERVICE_HOST_ENV) or not environ.get(SERVICE_PORT_ENV):
        return f"{SERVICE_HOST_ENV}/{SERVICE_PORT_ENV} not set"
    if not (service_account_dir / "token").is_file():
        return f"no service account token in {service_account_dir}"
    return None


def _from_service_account(environ: Mapping[str, str], service_account_dir: Path) -> Any:
    configuration = client.Configuration()
    loader = incluster_config.InClusterConfigLoader(  # type: ignore[no-untyped-call]
        token_filename=str(service_account_dir / "token"),
        cert_filename=str(service_account_dir / "ca.crt"),
        environ=environ,
    )
    try:
        loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
    except Exception as error:  # ConfigException, OSError, UnicodeDecodeError
        raise KubeConfigError(f"in-cluster config: cannot use it: {_one_line(error)}") from None
    return configuration


def _from_kubeconfig(files: str, context: str | None, *, where: str) -> Any:
    """Load kubeconfig `files` (one path, or several joined with `os.pathsep`) into a new `Configuration`."""
    configuration = client.Configuration()
    try:
        kube_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=files, context=context, client_configuration=configuration, persist_config=False
        )
    except Exception as error:  # ConfigException, YAML, OS, key and type errors from odd files
        raise KubeConfigError(f"{where}: cannot use it: {_one_line(error)}") from None
    return configuration


def _expand(path: str, home: str | None) -> str:
    """`~` from the given HOME (not the process's), as kubectl would for its own environment."""
    if home is not None and (path == "~" or path.startswith("~/")):
        return home + path[1:]
    return path


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
