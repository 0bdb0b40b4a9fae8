"""The EnvoyFilter documents the tests share, one copy of each: the shipped examples (`manifests/examples`,
the incident's seed-bad and seed-corrected among them) and the test-only ones (`tests/data`).

A test names a document by its file name; the two folders share no name (`test_documents.py` sees to it).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "manifests" / "examples"
DATA = Path(__file__).resolve().parent / "data"
SEED_BAD = EXAMPLES / "seed-bad.yaml"
SEED_CORRECTED = EXAMPLES / "seed-corrected.yaml"


def document_path(name: str) -> Path:
    """The shipped example with that file name, else the test-only document."""
    example = EXAMPLES / name
    return example if example.exists() else DATA / name


def load_document(name: str) -> dict[str, Any]:
    """The one YAML mapping in the named document."""
    loaded = yaml.safe_load(document_path(name).read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"{name} is not one YAML mapping")
    return loaded


def renamed(document: dict[str, Any], name: str, namespace: str | None = None) -> dict[str, Any]:
    """A copy of `document` with a new metadata.name (and namespace, if given)."""
    result = copy.deepcopy(document)
    result["metadata"]["name"] = name
    if namespace is not None:
        result["metadata"]["namespace"] = namespace
    return result
