"""Settings of `extproc-guard reconcile`: one object, built by the CLI and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FIELD_MANAGER = "extproc-guard-reconciler"
"""The field manager the reconciler writes with; fight detection never blames this one."""

REPORTING_CONTROLLER = "extproc-guard.io/reconciler"


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """A coordination.k8s.io/v1 Lease: only its holder writes.

    The holder renews every `retry_seconds`; it stops writing when it has not renewed for
    `renew_deadline_seconds`, which is shorter than `duration_seconds`, the time another replica waits
    after the last renewal it saw before taking over.
    """

    name: str
    namespace: str
    identity: str
    duration_seconds: int = 15
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class ReconcileSettings:
    """What the reconciler audits, how often, and how it behaves when writes are refused or undone.

    `namespaces` empty = every namespace. `lease` None = no leader election (a single replica writes).
    `watch_filters` looks at each EnvoyFilter as it changes, between audits. Drift repair wakes when the
    Service cache reports a change; `drift_poll_seconds` is a fallback poll besides (None = none).
    """

    namespaces: tuple[str, ...] = ()
    interval_seconds: float = 60.0
    dry_run: bool = False
    identity: str = "extproc-guard"
    field_manager: str = FIELD_MANAGER
    conflict_retries: int = 5
    fight_threshold: int = 2
    backoff_initial_seconds: float = 30.0
    backoff_max_seconds: float = 3600.0
    request_timeout_seconds: float = 15.0
    drift_poll_seconds: float | None = 30.0
    watch_filters: bool = True
    watch_timeout_seconds: int = 240
    watch_backoff_initial_seconds: float = 0.5
    watch_backoff_max_seconds: float = 30.0
    cache_sync_timeout_seconds: float = 30.0
    audit_concurrency: int = 8
    """Objects of one page an audit has in flight at once (their API writes overlap)."""
    lease: LeaseSettings | None = None
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = None
    kubeconfig: Path | None = None
    context: str | None = None
