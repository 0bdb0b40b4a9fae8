"""Objects the end-to-end tests create in the control plane: namespaces and the seed's EPP Service."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from tests.e2e.cluster import Kubectl

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


def create_epp_service(kubectl: Kubectl) -> EppService:
    """The seed's EPP Service in its own namespace, and the ClusterIP the apiserver gave it."""
    create_namespace(kubectl, EPP_NAMESPACE)
    kubectl.apply(epp_service_manifest(EPP_NAMESPACE))
    return EppService(EPP_NAMESPACE, EPP_SERVICE, cluster_ip_of(kubectl, EPP_NAMESPACE), EPP_PORT)
