"""The long-running side of `extproc-guard reconcile`: Lease, audit interval, EnvoyFilter watch, drift
repair, metrics.

Three loops write, all through the one `Reconciler` (whose lock keeps them apart):
- the audit: every filter in scope, at once on gaining the Lease and then every interval (the safety net);
- the EnvoyFilter watch: each filter that changed, within moments of the change (coalesced per object, the
  echo of the reconciler's own patch skipped, a fighting writer held off by the fight back-off);
- drift repair: woken by the Service cache's change callback when a pinned Service's address changes
  (with an optional slow poll as a fallback).

`run_reconciler` owns every background part and stops them all, in order, when `stop` is set (SIGTERM):
the loops are cancelled and awaited, the Lease is released so another replica takes over at once, the
watch and Service cache threads are stopped, the metrics server is closed. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from kubernetes import client

from kube.context import ContextCache
from kube.heap import Heap
from kube.services import ServiceCache
from kube.settings import KubeSettings
from policies import ChainResolver, Policy, ServiceAddress, ServiceRef, ServiceResolver, StaticResolver
from reconciler.api import KubeObjects, build_api_client
from reconciler.core import Action, AuditResult, Reconciler
from reconciler.leader import LeaseElector
from reconciler.metrics import ReconcileMetrics, make_metrics_app
from reconciler.settings import ReconcileSettings
from reconciler.watch import ChangeQueue, FilterChange, FilterWatch, WatchSettings

logger = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Parts:
    """The long-lived objects one reconciler process is made of."""

    kube: KubeObjects
    cache: ServiceCache
    context: ContextCache
    reconciler: Reconciler
    elector: LeaseElector | None
    metrics: ReconcileMetrics
    api_client: Any
    may_write: Callable[[], bool]
    """True while this process may write: it holds the Lease, or runs without one."""
    heap: Heap
    """Settled after each cache list, so the collector does not walk the caches during audits."""


def build_parts(
    settings: ReconcileSettings, *, policy: Policy, services: Mapping[ServiceRef, ServiceAddress]
) -> Parts:
    """Raises `KubeConfigError` for an unusable kubeconfig."""
    api_client = build_api_client(
        kubeconfig=settings.kubeconfig,
        context=settings.context,
        user_agent=f"extproc-guard-reconciler/{settings.identity}",
    )
    kube = KubeObjects(
        api_client, field_manager=settings.field_manager, timeout=settings.request_timeout_seconds
    )
    kube_settings = KubeSettings(kubeconfig=settings.kubeconfig)
    heap = Heap()
    cache = ServiceCache(client.CoreV1Api(api_client), kube_settings, after_list=heap.settle_soon)
    context = ContextCache(
        client.CustomObjectsApi(api_client),
        kube_settings,
        root_namespace=policy.root_namespace,
        cluster_domain=policy.cluster_domain,
        declared=services,
        settled=True,
        filter_name=policy.filter_name,
        after_list=heap.settle_soon,
    )
    resolver: ServiceResolver = cache
    if services:
        resolver = ChainResolver((StaticResolver(services), cache))
    elector = None
    if settings.lease is not None and not settings.dry_run:
        elector = LeaseElector(kube, settings.lease)
    metrics = ReconcileMetrics()
    may_write = elector.holds if elector is not None else _always
    metrics.bind_leader(may_write)
    reconciler = Reconciler(
        kube,
        policy=policy,
        resolver=resolver,
        settings=settings,
        metrics=metrics,
        may_write=may_write,
        context=context,
    )
    return Parts(kube, cache, context, reconciler, elector, metrics, api_client, may_write, heap)


def _always() -> bool:
    return True


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _wait_any(*waits: Awaitable[object], seconds: float | None) -> None:
    """Until the first of `waits` finishes (or `seconds` pass); the others are cancelled and awaited."""
    waiters = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def keep_lease(
    elector: LeaseElector, *, retry_seconds: float, wake: asyncio.Event, stop: asyncio.Event
) -> None:
    held = False
    while not stop.is_set():
        now_held = await asyncio.to_thread(elector.step)
        if now_held and not held:
            wake.set()
        held = now_held
        await _sleep_or_stop(stop, retry_seconds)


async def audit_periodically(
    reconciler: Reconciler,
    *,
    may_write: Callable[[], bool],
    interval: float,
    wake: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Audit when leading: at once on gaining the Lease, then every `interval` seconds."""
    while not stop.is_set():
        if may_write():
            wake.clear()
            await reconciler.audit()
        await _wait_any(wake.wait(), stop.wait(), seconds=interval)


async def repair_on_drift(
    reconciler: Reconciler,
    *,
    may_write: Callable[[], bool],
    wake: asyncio.Event,
    poll: float | None,
    stop: asyncio.Event,
) -> None:
    """Compare pinned Services' live addresses with what filters were pinned to and repair at once, each
    time `wake` is set (a Service changed) and every `poll` seconds (None = only when woken)."""
    while not stop.is_set():
        wake.clear()
        if may_write() and reconciler.drifted():
            await reconciler.repair_drift()
        await _wait_any(wake.wait(), stop.wait(), seconds=poll)


def wake_on_service_changes(
    cache: ServiceCache, reconciler: Reconciler, wake: asyncio.Event, loop: asyncio.AbstractEventLoop
) -> Callable[[], None]:
    """Set `wake` on the event loop when the cache sees a pinned Service's address change; returns the
    unsubscribe function."""

    def on_loop(ref: ServiceRef) -> None:
        if reconciler.is_pinned(ref):
            wake.set()

    def on_change(ref: ServiceRef, _old: ServiceAddress | None, _new: ServiceAddress | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to repair
            loop.call_soon_threadsafe(on_loop, ref)

    return cache.subscribe(on_change)


async def reconcile_changes(
    reconciler: Reconciler, *, changes: ChangeQueue, may_write: Callable[[], bool], stop: asyncio.Event
) -> None:
    """Look at each EnvoyFilter the watch saw change. Changes seen while not leading are dropped: gaining
    the Lease starts a full audit anyway. An object left alone for a fight's back-off is looked at again
    when the back-off ends (one timer per object), not only at the next audit."""
    loop = asyncio.get_running_loop()
    timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
    try:
        await _reconcile_changes(reconciler, changes, may_write, stop, loop, timers)
    finally:
        for timer in timers.values():
            timer.cancel()


async def _reconcile_changes(
    reconciler: Reconciler,
    changes: ChangeQueue,
    may_write: Callable[[], bool],
    stop: asyncio.Event,
    loop: asyncio.AbstractEventLoop,
    timers: dict[tuple[str, str], asyncio.TimerHandle],
) -> None:
    while not stop.is_set():
        await _wait_any(changes.wait(), stop.wait(), seconds=None)
        if stop.is_set():
            return
        batch = changes.take()
        if not may_write():
            continue
        for change in batch:
            if stop.is_set():
                return
            outcome = await reconciler.reconcile_change(change)
            if outcome is not None and outcome.retry_in is not None:
                if (previous := timers.pop(change.key, None)) is not None:
                    previous.cancel()
                again = FilterChange(change.namespace, change.name, "")
                timers[change.key] = loop.call_later(outcome.retry_in, changes.offer, again)


async def _wait_for_services(
    cache: ServiceCache, seconds: float, context: ContextCache | None = None
) -> None:
    """Give the Service cache (and the context cache) their first list before auditing; an audit without
    them still runs."""
    if not await asyncio.to_thread(cache.wait_synced, seconds):
        logger.warning("service cache not synced after %.0fs; auditing anyway", seconds)
    if context is not None and not await asyncio.to_thread(context.wait_synced, seconds):
        logger.warning("context cache not synced after %.0fs; auditing anyway", seconds)


async def _start_metrics(settings: ReconcileSettings, metrics: ReconcileMetrics) -> web.AppRunner | None:
    if settings.metrics_port is None:
        return None
    runner = web.AppRunner(make_metrics_app(metrics), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    logger.info("metrics on %s:%d/metrics", settings.metrics_host, settings.metrics_port)
    return runner


async def run_reconciler(parts: Parts, settings: ReconcileSettings, *, stop: asyncio.Event) -> None:
    """Run until `stop` is set; then stop every part (bounded) and release the Lease."""
    parts.heap.start(asyncio.get_running_loop())
    parts.cache.start()
    await asyncio.to_thread(parts.context.start)
    metrics_runner: web.AppRunner | None = None
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    drift_wake = asyncio.Event()
    unsubscribe = wake_on_service_changes(parts.cache, parts.reconciler, drift_wake, loop)
    changes = ChangeQueue(loop)
    watch: FilterWatch | None = None
    if settings.watch_filters:
        watch = FilterWatch(
            parts.api_client,
            namespaces=settings.namespaces,
            settings=WatchSettings(
                timeout_seconds=settings.watch_timeout_seconds,
                backoff_initial_seconds=settings.watch_backoff_initial_seconds,
                backoff_max_seconds=settings.watch_backoff_max_seconds,
            ),
            on_change=changes.offer,
        )
    try:
        metrics_runner = await _start_metrics(settings, parts.metrics)
        await _wait_for_services(parts.cache, settings.cache_sync_timeout_seconds, parts.context)
        wake = asyncio.Event()
        may_write = parts.may_write
        loops: list[Awaitable[None]] = [
            audit_periodically(
                parts.reconciler,
                may_write=may_write,
                interval=settings.interval_seconds,
                wake=wake,
                stop=stop,
            ),
            repair_on_drift(
                parts.reconciler,
                may_write=may_write,
                wake=drift_wake,
                poll=settings.drift_poll_seconds,
                stop=stop,
            ),
            reconcile_changes(parts.reconciler, changes=changes, may_write=may_write, stop=stop),
        ]
        if watch is not None:
            watch.start()
        if parts.elector is not None and settings.lease is not None:
            loops.append(
                keep_lease(parts.elector, retry_seconds=settings.lease.retry_seconds, wake=wake, stop=stop)
            )
        else:
            wake.set()
        tasks = [asyncio.ensure_future(loop) for loop in loops]
        stopper = asyncio.ensure_future(stop.wait())
        tasks_and_stopper = [stopper, *tasks]
        done, _pending = await asyncio.wait(tasks_and_stopper, return_when=asyncio.FIRST_COMPLETED)
        failed = next((t for t in done if t is not stopper and t.exception() is not None), None)
        stop.set()
        await stopper
        if failed is not None:
            logger.error("reconciler loop failed: %r; shutting down", failed.exception())
            raise failed.exception()  # type: ignore[misc]
    finally:
        stop.set()
        unsubscribe()
        if watch is not None:
            await asyncio.to_thread(watch.stop, STOP_TIMEOUT_SECONDS)
        await _shutdown(parts, tasks, metrics_runner)


async def _shutdown(
    parts: Parts, tasks: list[asyncio.Task[None]], metrics_runner: web.AppRunner | None
) -> None:
    """Let the loops finish the step they are in (a write in flight completes before the Lease goes),
    then cancel what is left; every wait is bounded."""
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_SECONDS)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=STOP_TIMEOUT_SECONDS)
    if parts.elector is not None:
        try:
            await asyncio.wait_for(asyncio.to_thread(parts.elector.release), timeout=STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            logger.warning("lease release did not finish within %.0fs", STOP_TIMEOUT_SECONDS)
    await asyncio.to_thread(parts.cache.stop, STOP_TIMEOUT_SECONDS)
    await asyncio.to_thread(parts.context.stop, STOP_TIMEOUT_SECONDS)
    parts.heap.stop()
    if metrics_runner is not None:
        await metrics_runner.cleanup()


async def audit_once(parts: Parts, settings: ReconcileSettings) -> AuditResult | None:
    """One audit (for `--once`): None when another replica holds the Lease (nothing was written)."""
    parts.heap.start(asyncio.get_running_loop())
    parts.cache.start()
    await asyncio.to_thread(parts.context.start)
    try:
        await _wait_for_services(parts.cache, settings.cache_sync_timeout_seconds, parts.context)
        if parts.elector is not None and not await asyncio.to_thread(parts.elector.step):
            return None
        return await parts.reconciler.audit()
    finally:
        if parts.elector is not None:
            await asyncio.to_thread(parts.elector.release)
        await asyncio.to_thread(parts.cache.stop, STOP_TIMEOUT_SECONDS)
        await asyncio.to_thread(parts.context.stop, STOP_TIMEOUT_SECONDS)
        parts.heap.stop()


def audit_exit_code(result: AuditResult) -> int:
    """0: every filter clean or fixed; 1: findings left unfixed, changes only proposed, or API errors."""
    pending = (Action.WOULD_FIX, Action.BACKING_OFF, Action.GAVE_UP, Action.ERROR, Action.NOT_LEADER)
    if result.errors or any(o.action in pending or o.unfixed for o in result.outcomes):
        return 1
    return 0
