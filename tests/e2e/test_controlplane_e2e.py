"""End-to-end tests that need only the control plane (no webhook): real kube-apiserver, real kubectl."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.documents import load_document, renamed
from tests.e2e.cluster import E2E_DIR, SERVICE_CIDR, ControlPlaneInfo, Kubectl, find_cli
from tests.e2e.objects import EppService
from tests.e2e.seeds import dump, pinned_to

pytestmark = pytest.mark.e2e

REPO_ROOT = E2E_DIR.parent.parent
MANIFESTS_DIR = REPO_ROOT / "manifests"
NO_KUSTOMIZATION = "no kustomization under manifests/ yet"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def pinned_kube_version() -> str:
    """The k8s.io/kubernetes version the control plane module pins."""
    go_mod = (E2E_DIR / "controlplane" / "go.mod").read_text()
    match = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", go_mod, re.M)
    assert match is not None, "go.mod pins no k8s.io/kubernetes version"
    return match.group(1)


def kustomization_dirs() -> list[Path]:
    if not MANIFESTS_DIR.is_dir():
        return []
    found = {path.parent for name in KUSTOMIZATION_FILES for path in MANIFESTS_DIR.rglob(name)}
    return sorted(found)


def test_kubectl_and_apiserver_report_the_pinned_kubernetes_version(kubectl: Kubectl) -> None:
    versions = json.loads(kubectl.run("version", "-o", "json").stdout)
    expected = pinned_kube_version()
    assert versions["clientVersion"]["gitVersion"] == expected
    assert versions["serverVersion"]["gitVersion"] == expected


def test_a_service_gets_a_cluster_ip_allocated_from_the_service_range(epp_service: EppService) -> None:
    address = ipaddress.ip_address(epp_service.cluster_ip)
    assert address in ipaddress.ip_network(SERVICE_CIDR)
    # The first address of the range belongs to the `kubernetes` Service.
    assert address != ipaddress.ip_network(SERVICE_CIDR)[1]


def test_an_envoyfilter_is_stored_exactly_as_applied_without_webhooks(
    kubectl: Kubectl, namespace: str
) -> None:
    document = renamed(load_document("seed-bad.yaml"), "seed-as-written", namespace)
    kubectl.apply(dump(document))
    stored = kubectl.get_json("envoyfilter", "seed-as-written", "-n", namespace)
    assert stored["spec"] == document["spec"]
    assert stored["apiVersion"] == "networking.istio.io/v1alpha3"


@pytest.mark.parametrize(
    "directory",
    kustomization_dirs() or [pytest.param(None, marks=pytest.mark.skip(reason=NO_KUSTOMIZATION))],
    ids=lambda d: str(d.relative_to(REPO_ROOT)) if isinstance(d, Path) else "none",
)
def test_every_kustomization_under_manifests_builds(kubectl: Kubectl, directory: Path) -> None:
    result = kubectl.run("kustomize", str(directory), check=False)
    assert result.returncode == 0, result.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert documents, f"{directory} renders no objects"


def served_group_kinds(kubectl: Kubectl) -> set[tuple[str, str]]:
    """(API group, kind) for every resource the apiserver serves, from its discovery documents."""
    listing = json.loads(kubectl.run("get", "--raw", "/apis").stdout)
    group_versions = ["v1"] + [
        version["groupVersion"] for group in listing["groups"] for version in group["versions"]
    ]
    kinds: set[tuple[str, str]] = set()
    for group_version in group_versions:
        path = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        resources = json.loads(kubectl.run("get", "--raw", path).stdout)["resources"]
        group = group_version.rpartition("/")[0]
        kinds.update((group, resource["kind"]) for resource in resources)
    return kinds


def group_of(document: dict[str, Any]) -> str:
    return str(document.get("apiVersion", "")).rpartition("/")[0]


@pytest.mark.skipif(not (MANIFESTS_DIR / "base").is_dir(), reason="manifests/base does not exist yet")
def test_the_rendered_base_is_accepted_by_the_apiserver_in_a_server_dry_run(
    control_plane: ControlPlaneInfo, kubectl: Kubectl
) -> None:
    rendered = kubectl.run("kustomize", str(MANIFESTS_DIR / "base")).stdout
    documents = [doc for doc in yaml.safe_load_all(rendered) if doc]
    served = served_group_kinds(kubectl)
    accepted = [doc for doc in documents if (group_of(doc), doc.get("kind")) in served]
    assert accepted, "the base renders nothing this apiserver serves"
    # A dry run creates nothing, so the namespaces the objects live in must exist for real.
    namespaces = {doc["metadata"]["namespace"] for doc in accepted if doc["metadata"].get("namespace")}
    namespaces |= {doc["metadata"]["name"] for doc in accepted if doc.get("kind") == "Namespace"}
    for name in sorted(namespaces):
        if kubectl.run("get", "namespace", name, check=False).returncode != 0:
            kubectl.run("create", "namespace", name)
    result = kubectl.apply(dump(*accepted), "--dry-run=server", check=False)
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout


@pytest.mark.parametrize(
    ("pinned", "expected_exit", "stale"),
    [
        pytest.param("live", 0, False, id="pinned-to-the-live-cluster-ip-is-clean"),
        pytest.param("10.96.45.12", 1, True, id="pinned-to-another-ip-is-epx006-naming-the-live-ip"),
    ],
)
def test_check_resolves_the_cluster_ip_from_the_control_plane(
    control_plane: ControlPlaneInfo,
    epp_service: EppService,
    tmp_path: Path,
    pinned: str,
    expected_exit: int,
    stale: bool,
) -> None:
    cli = find_cli()
    address = epp_service.cluster_ip if pinned == "live" else pinned
    if address == epp_service.cluster_ip and stale:
        pytest.skip("the apiserver happened to allocate the example address")
    document = pinned_to(load_document("seed-corrected.yaml"), address)
    path = tmp_path / "filter.yaml"
    path.write_text(dump(document))
    result = subprocess.run(
        [str(cli), "check", "--kubeconfig", str(control_plane.kubeconfig), "-o", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == expected_exit, result.stderr
    findings = json.loads(result.stdout)["findings"]
    stale_findings = [f for f in findings if f["rule"] == "EPX006"]
    if stale:
        assert stale_findings, findings
        assert epp_service.cluster_ip in stale_findings[0]["message"]
    else:
        assert [f for f in findings if f["level"] == "enforce"] == []
