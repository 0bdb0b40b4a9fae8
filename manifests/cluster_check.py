"""Render the Kustomize layouts and validate them before `kubectl apply -k`, without a cluster.

`make cluster-check` runs this. For each layout (default: every folder under `manifests/` with a
`kustomization.yaml`, examples aside) it:

1. renders it the way `kubectl apply -k` does: with `kubectl kustomize` when kubectl is on PATH (or the
   test control plane's, `tests/e2e/controlplane/bin/kubectl`), else with the Python builder the manifest
   tests use (`tests/manifests/kustomize.py`, the subset of Kustomize these layouts use);
2. validates every object against the Kubernetes OpenAPI schema of each `--k8s-version` (strict: an
   unknown field is an error), and custom resources against the CRD in the same build
   (`kubernetes-validate`, offline, from the `test` extra);
3. checks that the project's image is the one the README builds and loads (`extproc-guard:VERSION`,
   VERSION from pyproject.toml);
4. writes the rendered YAML to `--out` (default `build/manifests/LAYOUT.yaml`) and prints what a cluster
   would run: replicas, images, the webhooks' failurePolicy.

Exit 0 when every object validates, 1 when one does not, 2 when a layout cannot be rendered.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
K8S_VERSIONS = ("1.30", "1.34")
CONTROL_PLANE_KUBECTL = ROOT / "tests" / "e2e" / "controlplane" / "bin" / "kubectl"

IMAGE = "extproc-guard"
Manifest = dict[str, Any]


class RenderError(Exception):
    """A layout that does not render; the message says which and why."""


def find_kubectl() -> str | None:
    found = shutil.which("kubectl")
    if found:
        return found
    return str(CONTROL_PLANE_KUBECTL) if CONTROL_PLANE_KUBECTL.is_file() else None


def project_version() -> str:
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as handle:
        version: str = tomllib.load(handle)["project"]["version"]
    return version


def image_problems(objects: list[Manifest], version: str) -> list[str]:
    """Containers that run the project's image under another tag than the version `make image` builds."""
    expected = f"{IMAGE}:{version}"
    return sorted(
        {
            f"  IMAGE {obj['kind']}/{obj['metadata']['name']}: {container['image']}, expected {expected}"
            for obj in objects
            for container in pod_containers(obj)
            if container.get("image", "").partition(":")[0] == IMAGE and container["image"] != expected
        }
    )


def layouts(root: Path) -> list[Path]:
    """Every folder with a kustomization.yaml under `root`, examples aside."""
    return sorted(
        path.parent
        for path in root.rglob("kustomization.yaml")
        if "examples" not in path.relative_to(root).parts
    )


def render(folder: Path, kubectl: str | None) -> list[Manifest]:
    import yaml

    if kubectl is None:
        sys.path.insert(0, str(ROOT))
        from tests.manifests.kustomize import KustomizeError, build_kustomization

        try:
            return build_kustomization(folder)
        except (KustomizeError, OSError, yaml.YAMLError) as error:
            raise RenderError(f"{folder}: {error}") from None
    done = subprocess.run(
        [kubectl, "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "KUBECONFIG": os.devnull},  # rendering needs no cluster
    )
    if done.returncode != 0:
        raise RenderError(f"{folder}: kubectl kustomize: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def validate(obj: Manifest, version: str, crds: list[Manifest]) -> str | None:
    """Why `obj` is not valid for Kubernetes `version`, or None."""
    import jsonschema  # type: ignore[import-untyped]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
        return None
    except kubernetes_validate.SchemaNotFoundError:
        pass
    except kubernetes_validate.ValidationError as error:
        return _one_line(error)
    group, _, api_version = obj.get("apiVersion", "").rpartition("/")
    for crd in crds:
        spec = crd["spec"]
        if spec["group"] == group and spec["names"]["kind"] == obj.get("kind"):
            served = {entry["name"]: entry for entry in spec["versions"]}
            if api_version not in served:
                return f"the CRD serves no version {api_version}"
            try:
                jsonschema.validate(obj, served[api_version]["schema"]["openAPIV3Schema"])
            except jsonschema.ValidationError as error:
                return _one_line(error)
            return None
    return f"no Kubernetes schema for {obj.get('apiVersion')} {obj.get('kind')} and no CRD in this build"


def _one_line(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error)
    path = "/".join(str(token) for token in getattr(error, "absolute_path", ()) or ())
    text = " ".join(str(message).split())
    return f"{path}: {text}" if path else text


def pod_containers(obj: Manifest) -> Iterator[Manifest]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def describe(objects: list[Manifest]) -> list[str]:
    """What a cluster would run: Deployments with replicas, images, webhook failure policies."""
    lines = []
    deployments = sorted(
        f"{obj['metadata']['name']}={obj['spec'].get('replicas', 1)}"
        for obj in objects
        if obj.get("kind") == "Deployment"
    )
    if deployments:
        lines.append("deployments (replicas): " + ", ".join(deployments))
    images = sorted({container["image"] for obj in objects for container in pod_containers(obj)})
    if images:
        lines.append("images: " + ", ".join(images))
    policies = sorted(
        {
            f"{obj['kind']}/{obj['metadata']['name']} failurePolicy {hook.get('failurePolicy', 'Fail')}"
            for obj in objects
            if obj.get("kind") in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
            for hook in obj.get("webhooks") or []
        }
    )
    lines += policies
    return lines


def check_layout(
    folder: Path, *, root: Path, kubectl: str | None, versions: tuple[str, ...], out: Path
) -> tuple[int, list[str]]:
    """(problems, report lines) for one layout; raises `RenderError`."""
    import yaml

    objects = render(folder, kubectl)
    name = str(folder.relative_to(root)) if folder.is_relative_to(root) else folder.name
    target = out / (name.replace("/", "-") + ".yaml")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump_all(objects, sort_keys=False), "utf-8")
    crds = [obj for obj in objects if obj.get("kind") == "CustomResourceDefinition"]
    problems = []
    for obj in objects:
        for version in versions:
            reason = validate(obj, version, crds)
            if reason is not None:
                what = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
                problems.append(f"  INVALID {what} (Kubernetes {version}): {reason}")
    problems += image_problems(objects, project_version())
    status = "ok" if not problems else f"{len(problems)} problem(s)"
    lines = [f"{name}: {len(objects)} objects, {status}; rendered to {_shown(target)}"]
    lines += problems
    lines += [f"  {line}" for line in describe(objects)]
    return len(problems), lines


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "layouts", nargs="*", type=Path, metavar="DIR", help="kustomization folders (default: all)"
    )
    parser.add_argument(
        "--k8s-version",
        action="append",
        dest="versions",
        metavar="X.Y",
        help=f"validate for this Kubernetes version (repeatable; default: {', '.join(K8S_VERSIONS)})",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "manifests", help="rendered YAML here")
    parser.add_argument(
        "--python-build", action="store_true", help="render with the Python builder even if kubectl is here"
    )
    args = parser.parse_args(argv)
    kubectl = None if args.python_build else find_kubectl()
    versions = tuple(args.versions or K8S_VERSIONS)
    folders = [folder.resolve() for folder in args.layouts] or layouts(MANIFESTS)
    if kubectl:
        renderer = f"kubectl kustomize ({kubectl})"
    else:
        renderer = "the Python builder" + ("" if args.python_build else " (no kubectl found)")
    print(f"cluster-check: rendering with {renderer}; validating for Kubernetes {', '.join(versions)}")
    problems = 0
    for folder in folders:
        try:
            found, lines = check_layout(
                folder, root=MANIFESTS, kubectl=kubectl, versions=versions, out=args.out
            )
        except RenderError as error:
            print(f"cluster-check: error: {error}", file=sys.stderr)
            return 2
        problems += found
        print("\n".join(lines))
    if problems:
        print(f"cluster-check: {problems} problem(s); fix them before `kubectl apply -k`", file=sys.stderr)
        return 1
    print(f"cluster-check: {len(folders)} layout(s) valid")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
