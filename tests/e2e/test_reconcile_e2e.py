"""The reconciler end to end: an EPP Service deleted and recreated gets a new ClusterIP from the real
apiserver, and `extproc-guard reconcile` re-pins the stored EnvoyFilter to it."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.documents import load_document, renamed
from tests.e2e.cluster import ControlPlaneInfo, Kubectl, ManagedProcess, reconcile_argv
from tests.e2e.objects import EPP_SERVICE, cluster_ip_of, epp_service_manifest
from tests.e2e.seeds import dump, pinned_to
from tests.polling import wait_until

pytestmark = pytest.mark.e2e

PROVENANCE_ANNOTATION = "extproc-guard.io/epp-service"
FILTER_NAME = "epp-ext-proc"


def recreate_with_new_cluster_ip(kubectl: Kubectl, namespace: str, old_ip: str) -> str:
    """Delete and recreate the Service until the apiserver allocates an address other than `old_ip`."""
    for _ in range(5):
        kubectl.run("delete", "service", EPP_SERVICE, "-n", namespace, "--wait=true", "--timeout=30s")
        kubectl.apply(epp_service_manifest(namespace))
        new_ip = cluster_ip_of(kubectl, namespace)
        if new_ip != old_ip:
            return new_ip
    raise AssertionError(f"the apiserver kept allocating {old_ip}")


def socket_address(filter_doc: dict[str, Any]) -> dict[str, Any]:
    """The EPP cluster's socket_address mapping in a corrected-form filter."""
    for patch in filter_doc["spec"]["configPatches"]:
        if patch["applyTo"] == "CLUSTER":
            endpoint = patch["patch"]["value"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
            address: dict[str, Any] = endpoint["endpoint"]["address"]["socket_address"]
            return address
    raise AssertionError("the filter has no CLUSTER patch")


def pinned_address(filter_doc: dict[str, Any]) -> str:
    return str(socket_address(filter_doc)["address"])


@pytest.fixture
def pinned_filter(kubectl: Kubectl, namespace: str) -> str:
    """A namespace holding an EPP Service and a corrected filter pinned to its current ClusterIP."""
    kubectl.apply(epp_service_manifest(namespace))
    document = renamed(
        pinned_to(load_document("seed-corrected.yaml"), cluster_ip_of(kubectl, namespace)),
        FILTER_NAME,
        namespace,
    )
    document["metadata"]["annotations"][PROVENANCE_ANNOTATION] = f"{namespace}/{EPP_SERVICE}"
    kubectl.apply(dump(document))
    return namespace


def test_one_reconcile_pass_repins_the_filter_to_the_recreated_services_new_cluster_ip(
    control_plane: ControlPlaneInfo, kubectl: Kubectl, pinned_filter: str
) -> None:
    namespace = pinned_filter
    old_ip = cluster_ip_of(kubectl, namespace)
    new_ip = recreate_with_new_cluster_ip(kubectl, namespace, old_ip)
    stale = kubectl.get_json("envoyfilter", FILTER_NAME, "-n", namespace)
    assert pinned_address(stale) == old_ip

    result = subprocess.run(
        reconcile_argv(control_plane, namespace, "--once"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    repaired = kubectl.get_json("envoyfilter", FILTER_NAME, "-n", namespace)
    expected = copy.deepcopy(stale)
    socket_address(expected)["address"] = new_ip
    assert repaired["spec"] == expected["spec"]


@pytest.fixture
def running_reconciler(
    control_plane: ControlPlaneInfo, pinned_filter: str, tmp_path: Path
) -> Iterator[ManagedProcess]:
    """`extproc-guard reconcile` looping every second over the test's namespace."""
    process = ManagedProcess(
        "extproc-guard reconcile",
        reconcile_argv(control_plane, pinned_filter, "--interval", "1"),
        tmp_path / "reconcile.log",
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_a_running_reconciler_follows_the_service_to_its_new_cluster_ip(
    kubectl: Kubectl, pinned_filter: str, running_reconciler: ManagedProcess
) -> None:
    namespace = pinned_filter
    new_ip = recreate_with_new_cluster_ip(kubectl, namespace, cluster_ip_of(kubectl, namespace))

    def repinned() -> bool:
        return pinned_address(kubectl.get_json("envoyfilter", FILTER_NAME, "-n", namespace)) == new_ip

    wait_until(
        repinned,
        "the filter re-pinned by the reconciler",
        timeout=60,
        interval=0.25,
        alive=running_reconciler.death,
    )
