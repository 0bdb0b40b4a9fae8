"""Shared fixtures for the `kube/` tests: kubeconfig files, a pod's service account folder, a loopback
API server over real TLS (a CA of its own, a bearer token it checks) for the in-cluster path, and the
reconciler tests' stand-in API (lists and watches of any collection) for the informer caches."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certs.pki import generate_ca
from tests.kube.rig import TOKEN, TlsApiServer, WriteKubeconfig, serving_tls_api, write_kubeconfig_file


@pytest.fixture
def write_kubeconfig(tmp_path: Path) -> WriteKubeconfig:
    """`write_kubeconfig(name, {context: server_url, ...}, current=CONTEXT)` writes a kubeconfig file under
    tmp_path (see `rig.write_kubeconfig_file`)."""

    def write(name: str, contexts: Mapping[str, str], *, current: str | None = None) -> Path:
        return write_kubeconfig_file(tmp_path / name, contexts, current=current)

    return write


@pytest.fixture
def service_account(tmp_path: Path) -> Path:
    """A folder laid out like `/var/run/secrets/kubernetes.io/serviceaccount` (token, ca.crt, namespace);
    the CA is a real one, but nothing serves with it."""
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    ca = generate_ca(common_name="unused-ca", now=datetime.now(UTC), valid_for=timedelta(days=1))
    (folder / "token").write_text(TOKEN)
    (folder / "ca.crt").write_bytes(ca.cert_pem)
    (folder / "namespace").write_text("extproc-guard")
    return folder


@pytest.fixture(scope="module")
def tls_api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsApiServer]:
    with serving_tls_api(tmp_path_factory.mktemp("tls-api-server")) as server:
        yield server
