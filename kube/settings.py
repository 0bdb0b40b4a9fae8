"""How the long-running parts reach the Kubernetes API and keep their caches: one object, built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class KubeSettings:
    """How the Service cache reaches the Kubernetes API (`kubeconfig` None = in-cluster config)."""

    kubeconfig: Path | None = None
    context: str | None = None
    resync_seconds: float = 300.0
    watch_timeout_seconds: int = 240
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    stale_after_seconds: float = 120.0
