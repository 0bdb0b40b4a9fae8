"""`make cluster-check` (manifests/cluster_check.py): every layout renders and validates; a broken one,
or one that runs another image tag than the version, fails it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.docs.conftest import ROOT

SCRIPT = ROOT / "manifests" / "cluster_check.py"
LAYOUTS = ("base", "base/crds", "epp", "overlays/dev", "overlays/gie-epp")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def cluster_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def manifests_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", copy)
    return copy


@pytest.mark.parametrize("renderer", ["kubectl", "python"])
def test_every_layout_renders_and_validates(renderer: str, tmp_path: Path) -> None:
    if renderer == "kubectl" and shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed here; the Python builder renders instead")
    extra = ["--python-build"] if renderer == "python" else []
    done = cluster_check("--out", str(tmp_path), *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"cluster-check: {len(LAYOUTS)} layout(s) valid" in done.stdout
    for layout in LAYOUTS:
        rendered = list(yaml.safe_load_all((tmp_path / f"{layout.replace('/', '-')}.yaml").read_text()))
        assert rendered, layout
    report = done.stdout.split("\noverlays/dev: ", 1)[1].split("\noverlays/gie-epp: ", 1)[0]
    assert "deployments (replicas): extproc-guard-reconciler=1, extproc-guard-webhook=1" in report
    assert f"images: extproc-guard:{VERSION}" in report


def test_an_unknown_field_fails_the_check(manifests_copy: Path, tmp_path: Path) -> None:
    service = manifests_copy / "base" / "webhook-service.yaml"
    document = yaml.safe_load(service.read_text())
    document["spec"]["portz"] = []
    service.write_text(yaml.safe_dump(document))
    done = cluster_check("--out", str(tmp_path / "out"), "--python-build", str(manifests_copy / "base"))
    assert done.returncode == 1
    assert "INVALID Service/extproc-guard-webhook (Kubernetes 1.30)" in done.stdout
    assert "portz" in done.stdout


def test_an_image_tag_other_than_the_version_fails_the_check(manifests_copy: Path, tmp_path: Path) -> None:
    kustomization = manifests_copy / "base" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace(f"newTag: {VERSION}", "newTag: latest"))
    done = cluster_check("--out", str(tmp_path / "out"), "--python-build", str(manifests_copy / "base"))
    assert done.returncode == 1
    assert f"extproc-guard:latest, expected extproc-guard:{VERSION}" in done.stdout
