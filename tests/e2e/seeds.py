"""The end-to-end tests' EnvoyFilter documents (tests/e2e/data) and small helpers to shape them."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

DATA_DIR = Path(__file__).resolve().parent / "data"
# The ClusterIP written into the corrected example; tests swap in the one the apiserver allocated.
EXAMPLE_CLUSTER_IP = "10.96.45.12"


def load_document(name: str) -> dict[str, Any]:
    """One YAML document from the data folder."""
    loaded = yaml.safe_load((DATA_DIR / name).read_text())
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


def pinned_to(document: dict[str, Any], cluster_ip: str) -> dict[str, Any]:
    """A copy of a corrected-form document with the example ClusterIP replaced by `cluster_ip`."""
    text = yaml.safe_dump(document)
    return dict(yaml.safe_load(re.sub(re.escape(EXAMPLE_CLUSTER_IP), cluster_ip, text)))


def dump(*documents: dict[str, Any]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)
