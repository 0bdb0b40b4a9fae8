"""Session fixtures for the end-to-end tests: a real etcd + kube-apiserver, the real kubectl, the
real CRDs (Istio's, InferencePool), and the seed's EPP Service with the ClusterIP the apiserver allocated.

Without the control plane binaries (build them with `tests/e2e/controlplane/build.sh`) the tests skip
with one line; with EXTPROC_GUARD_REQUIRE_E2E=1 (as CI sets it) they fail instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from tests.e2e.cluster import ControlPlaneInfo, Kubectl
from tests.e2e.harness import running_control_plane

EPP_NAMESPACE = "llm-d-inference-scheduler"
EPP_SERVICE = "gaie-inference-scheduling-epp"
EPP_PORT = 9002


@dataclass(frozen=True)
class EppService:
    """The seed's EPP Service as created in the control plane, with its allocated ClusterIP."""

    namespace: str
    name: str
    cluster_ip: str
    port: int

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlaneInfo]:
    """etcd + kube-apiserver on loopback with the real CRDs Established; torn down at session end."""
    with running_control_plane() as info:
        yield info


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlaneInfo) -> Kubectl:
    """The real kubectl bound to the control plane's admin kubeconfig."""
    return control_plane.kubectl


def create_namespace(kubectl: Kubectl, name: str) -> str:
    kubectl.run("create", "namespace", name)
    return name


def epp_service_manifest(namespace: str) -> str:
    """The seed's EPP Service (gRPC port 9002) in `namespace`, as YAML for `kubectl apply`."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": EPP_SERVICE, "namespace": namespace},
        "spec": {
            "selector": {"app": EPP_SERVICE},
            "ports": [{"name": "grpc-ext-proc", "port": EPP_PORT, "targetPort": EPP_PORT, "protocol": "TCP"}],
        },
    }
    return yaml.safe_dump(service)


def cluster_ip_of(kubectl: Kubectl, namespace: str) -> str:
    """The ClusterIP the apiserver allocated to the EPP Service in `namespace`."""
    return kubectl.run(
        "get", "service", EPP_SERVICE, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout.strip()


@pytest.fixture(scope="session")
def epp_service(kubectl: Kubectl) -> EppService:
    """The seed's EPP Service (gRPC port 9002) in its namespace, and the ClusterIP the apiserver gave it."""
    create_namespace(kubectl, EPP_NAMESPACE)
    kubectl.apply(epp_service_manifest(EPP_NAMESPACE))
    return EppService(EPP_NAMESPACE, EPP_SERVICE, cluster_ip_of(kubectl, EPP_NAMESPACE), EPP_PORT)


@pytest.fixture
def namespace(kubectl: Kubectl) -> str:
    """A fresh namespace for one test. Not deleted: without a controller manager a namespace never
    finishes terminating, and the whole control plane goes away at the end of the session."""
    return create_namespace(kubectl, f"e2e-{uuid.uuid4().hex[:8]}")
