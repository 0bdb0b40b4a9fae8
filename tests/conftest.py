"""Fixtures for every test package: the real control plane (etcd + kube-apiserver on loopback, the real
kubectl, the real CRDs: Istio's, InferencePool) and what the end-to-end, reconciler and Kubernetes-client
tests create in it.

The control plane starts once per session, and only when a test asks for it. Without its build outputs
(build them with `tests/e2e/controlplane/build.sh`) those tests skip with one line; with
EXTPROC_GUARD_REQUIRE_E2E=1 (as CI sets it) they fail instead.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.e2e.cluster import ControlPlaneInfo, Kubectl
from tests.e2e.harness import running_control_plane
from tests.e2e.objects import EppService, create_epp_service, create_namespace
from tests.reconciler.fakeapi import FakeKubeAPI


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlaneInfo]:
    """etcd + kube-apiserver on loopback with the real CRDs Established; torn down at session end."""
    with running_control_plane() as info:
        yield info


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlaneInfo) -> Kubectl:
    """The real kubectl bound to the control plane's admin kubeconfig."""
    return control_plane.kubectl


@pytest.fixture(scope="session")
def epp_service(kubectl: Kubectl) -> EppService:
    """The seed's EPP Service (gRPC port 9002) in its namespace, and the ClusterIP the apiserver gave it."""
    return create_epp_service(kubectl)


@pytest.fixture
def namespace(kubectl: Kubectl) -> str:
    """A fresh namespace for one test. Not deleted: without a controller manager a namespace never
    finishes terminating, and the whole control plane goes away at the end of the session."""
    return create_namespace(kubectl, f"e2e-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeKubeAPI]:
    """The in-process stand-in for the Kubernetes API that the reconciler's and client's unit tests use."""
    api = FakeKubeAPI()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()
