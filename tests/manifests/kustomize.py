"""Build a kustomization the way `kustomize build` does, for the subset of features the manifests use.

`resources` (files and directories with their own kustomization), JSON 6902 `patches` with a `target`,
and `images` (tag and name). Any other key is an error: the manifests must not rely on something this
builder would silently ignore, or the tests would check a different object than the cluster gets.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}
TARGET_KEYS = {"group", "version", "kind", "name", "namespace"}

Manifest = dict[str, Any]


class KustomizeError(Exception):
    pass


def load_documents(path: Path) -> list[Manifest]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def build_kustomization(folder: Path) -> list[Manifest]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{folder}: keys this builder does not implement: {sorted(unknown)}")
    objects: list[Manifest] = []
    for entry in kustomization.get("resources") or []:
        path = (folder / entry).resolve()
        objects += build_kustomization(path) if path.is_dir() else load_documents(path)
    for patch in kustomization.get("patches") or []:
        _apply_patch(folder, objects, patch)
    for image in kustomization.get("images") or []:
        _set_image(objects, image)
    return objects


def _apply_patch(folder: Path, objects: list[Manifest], patch: dict[str, Any]) -> None:
    if set(patch) != {"target", "patch"}:
        raise KustomizeError(f"{folder}: only inline JSON 6902 patches with a target are supported: {patch}")
    target = patch["target"]
    if set(target) - TARGET_KEYS:
        raise KustomizeError(f"{folder}: unsupported target keys {sorted(set(target) - TARGET_KEYS)}")
    operations = yaml.safe_load(patch["patch"])
    matched = [index for index, obj in enumerate(objects) if _matches(obj, target)]
    if not matched:
        raise KustomizeError(f"{folder}: patch target {target} matches nothing")
    for index in matched:
        objects[index] = jsonpatch.apply_patch(objects[index], operations)


def _matches(obj: Manifest, target: dict[str, str]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    metadata = obj.get("metadata") or {}
    checks = {
        "group": group,
        "version": version,
        "kind": obj["kind"],
        "name": metadata.get("name"),
        "namespace": metadata.get("namespace"),
    }
    return all(checks[key] == value for key, value in target.items())


def _set_image(objects: list[Manifest], image: dict[str, str]) -> None:
    for obj in objects:
        for container in iter_containers(obj):
            name, _, _ = container["image"].partition(":")
            if name == image["name"]:
                new_name = image.get("newName", name)
                container["image"] = f"{new_name}:{image['newTag']}" if "newTag" in image else new_name


def pod_spec(obj: Manifest) -> dict[str, Any] | None:
    """The Pod spec of a workload (Deployment, Job, CronJob, ...), or None."""
    spec = obj.get("spec") or {}
    if obj["kind"] == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    template = spec.get("template")
    return None if template is None else template.get("spec")


def iter_containers(obj: Manifest) -> Iterator[dict[str, Any]]:
    spec = pod_spec(obj)
    if spec is None:
        return
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def clone(objects: list[Manifest]) -> list[Manifest]:
    return copy.deepcopy(objects)
