"""Prometheus metrics of the reconciler, in a registry it owns, and the small HTTP app that serves them."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


class ReconcileMetrics:
    """Objects audited, fixed, unfixable, fights (by writer), conflicts, drift repairs, leadership."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.audited = Counter(
            "extproc_guard_reconcile_objects_audited",
            "EnvoyFilters the reconciler ran the policy on.",
            registry=self.registry,
        )
        self.fixed = Counter(
            "extproc_guard_reconcile_objects_fixed",
            "EnvoyFilters patched to their corrected form (dry runs are not counted).",
            ["cause"],
            registry=self.registry,
        )
        self.would_fix = Counter(
            "extproc_guard_reconcile_objects_would_fix",
            "EnvoyFilters a dry run would have patched.",
            registry=self.registry,
        )
        self.unfixable = Gauge(
            "extproc_guard_reconcile_objects_unfixable",
            "EnvoyFilters with enforce findings no fix removes, as of the last audit.",
            registry=self.registry,
        )
        self.fights = Counter(
            "extproc_guard_reconcile_fights",
            "Objects written back to the bad form after a fix, by the writer that managedFields names.",
            ["writer"],
            registry=self.registry,
        )
        self.backing_off = Gauge(
            "extproc_guard_reconcile_objects_backing_off",
            "EnvoyFilters left alone for now because another writer keeps undoing the fix.",
            registry=self.registry,
        )
        self.conflicts = Counter(
            "extproc_guard_reconcile_write_conflicts",
            "Patches refused because the object changed since it was read (retried on the fresh object).",
            registry=self.registry,
        )
        self.errors = Counter(
            "extproc_guard_reconcile_api_errors",
            "Kubernetes API requests that failed, by what was attempted.",
            ["action"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "extproc_guard_reconcile_last_success_timestamp_seconds",
            "Unix time of the last audit that completed without an API error.",
            registry=self.registry,
        )
        self.leader = Gauge(
            "extproc_guard_reconcile_leader",
            "1 while this replica holds the Lease (or runs without leader election), else 0.",
            registry=self.registry,
        )

    def bind_leader(self, holds: Callable[[], bool]) -> None:
        self.leader.set_function(lambda: 1.0 if holds() else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS_KEY = web.AppKey("reconcile_metrics", ReconcileMetrics)


async def handle_metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def handle_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_metrics_app(metrics: ReconcileMetrics) -> web.Application:
    app = web.Application()
    app[METRICS_KEY] = metrics
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/healthz", handle_healthz)
    return app
