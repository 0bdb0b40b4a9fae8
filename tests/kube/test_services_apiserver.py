"""The Service cache against a real kube-apiserver (and etcd) on loopback, driven with the real kubectl.

Skips with one line when the control plane binaries are not built (see `tests/e2e/controlplane`), and fails
instead when the environment requires the end-to-end tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial

import pytest
import yaml

from kube.services import ServiceCache, build_core_api
from kube.settings import KubeSettings
from policies.resolver import ServiceAddress, ServiceNotFound, ServiceRef, ServiceUnknown
from tests.e2e.cluster import ControlPlaneInfo
from tests.e2e.objects import create_namespace
from tests.kube.test_services import answers
from tests.polling import wait_until

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 20.0
eventually = partial(wait_until, timeout=WAIT_SECONDS, interval=0.05)  # the cache thread sets the conditions
NAMESPACE = "cache-e2e"
# Watches end every second on the server side, so every test also crosses watch restarts.
SETTINGS = KubeSettings(
    resync_seconds=3600.0, watch_timeout_seconds=1, backoff_initial_seconds=0.1, backoff_max_seconds=1.0
)


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlaneInfo) -> ControlPlaneInfo:
    """The session's control plane, with this module's namespace created."""
    create_namespace(control_plane.kubectl, NAMESPACE)
    return control_plane


@pytest.fixture
def cache(plane: ControlPlaneInfo) -> Iterator[ServiceCache]:
    running = ServiceCache(build_core_api(kubeconfig=plane.kubeconfig, context=None), SETTINGS)
    running.start()
    try:
        yield running
    finally:
        running.stop(timeout=10.0)


def apply_service(plane: ControlPlaneInfo, name: str, cluster_ip: str, port: int = 9002) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"clusterIP": cluster_ip, "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}]},
    }
    plane.kubectl.apply(yaml.safe_dump(service))


def delete_service(plane: ControlPlaneInfo, name: str) -> None:
    plane.kubectl.run("delete", "service", name, "-n", NAMESPACE, "--wait=true")


def not_found(cache: ServiceCache, ref: ServiceRef, reason: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            cache.lookup(ref)
        except ServiceNotFound as error:
            return reason in str(error)
        except ServiceUnknown:
            return False
        return False

    return check


def test_the_first_list_holds_existing_services(plane: ControlPlaneInfo, cache: ServiceCache) -> None:
    apply_service(plane, "epp-listed", "10.96.50.10")
    eventually(lambda: cache.synced, "the first list")
    eventually(
        answers(cache, ServiceRef(NAMESPACE, "epp-listed"), ServiceAddress("10.96.50.10", (9002,))), "it"
    )
    kubernetes = cache.lookup(ServiceRef("default", "kubernetes"))
    assert kubernetes.cluster_ip == "10.96.0.1"


def test_a_recreated_service_with_a_new_cluster_ip_is_followed(
    plane: ControlPlaneInfo, cache: ServiceCache
) -> None:
    ref = ServiceRef(NAMESPACE, "epp-recreated")
    apply_service(plane, ref.name, "10.96.50.20")
    eventually(answers(cache, ref, ServiceAddress("10.96.50.20", (9002,))), "the first ClusterIP")
    delete_service(plane, ref.name)
    eventually(not_found(cache, ref, "does not exist"), "the deletion")
    apply_service(plane, ref.name, "10.96.50.21")
    eventually(answers(cache, ref, ServiceAddress("10.96.50.21", (9002,))), "the new ClusterIP")


def test_a_headless_service_is_not_found_with_the_reason(
    plane: ControlPlaneInfo, cache: ServiceCache
) -> None:
    apply_service(plane, "epp-headless", "None")
    eventually(not_found(cache, ServiceRef(NAMESPACE, "epp-headless"), "headless"), "the headless Service")


def test_changes_across_many_watch_restarts_are_all_seen(
    plane: ControlPlaneInfo, cache: ServiceCache
) -> None:
    eventually(lambda: cache.synced, "the first list")
    for index in range(3):
        time.sleep(1.2)  # let the one-second server-side watch end between changes
        apply_service(plane, f"epp-later-{index}", f"10.96.51.{index + 1}", port=9100 + index)
    for index in range(3):
        ref = ServiceRef(NAMESPACE, f"epp-later-{index}")
        eventually(answers(cache, ref, ServiceAddress(f"10.96.51.{index + 1}", (9100 + index,))), str(ref))
