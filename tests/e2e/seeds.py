"""Small helpers that shape the shared documents (`tests.documents`) for the end-to-end tests."""

from __future__ import annotations

import re
from typing import Any

import yaml

# The ClusterIP written into the corrected example; tests swap in the one the apiserver allocated.
EXAMPLE_CLUSTER_IP = "10.96.45.12"


def pinned_to(document: dict[str, Any], cluster_ip: str) -> dict[str, Any]:
    """A copy of a corrected-form document with the example ClusterIP replaced by `cluster_ip`."""
    text = yaml.safe_dump(document)
    return dict(yaml.safe_load(re.sub(re.escape(EXAMPLE_CLUSTER_IP), cluster_ip, text)))


def dump(*documents: dict[str, Any]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)
