"""The admission server: an aiohttp app factory, its routes, and one error-translating middleware.

`make_app(settings)` builds everything a running server owns (policy, resolver, Service cache, certificate
reloader, metrics) and hands the long-lived parts to `cleanup_ctx`, so `AppRunner.cleanup()` stops them.
The heap is one of them (`kube.heap`): while the server runs, its garbage collector has a long-lived
server's thresholds, and after every complete list of a cache (the first sync, each relist) what is alive
is frozen on the event loop, so full collections never walk the caches or the Kubernetes client in the
request path; every collection's pause is a metric.
The review handlers only translate: they read the body (refusing one too large or too slow), make one call,
`Reviewer.review(body)`, which parses, decides and encodes, and turn its result into HTTP: an `Answer` is a
200 AdmissionReview (a denial included: `allowed: false`), a `Refusal` a 400 with one plain line. They
count the review in the metrics and write its audit line.

Under `serve --workers N` (`webhook.workers`) every worker process runs this same app, with a `MetricShare`:
`/metrics` then answers for the whole server and `/readyz` names the worker that answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST

from kube.context import ContextCache, custom_objects_api
from kube.heap import Heap
from kube.services import ServiceCache, build_core_api
from policies import (
    ChainResolver,
    Context,
    ContextSource,
    FixedContext,
    ServiceResolver,
    StaticResolver,
    default_policy,
)
from telemetry.logoutput import log_info
from webhook.admission import AdmissionError, Webhook
from webhook.metrics import PUBLISH_SECONDS, Metrics, MetricShare, WorkerMetrics
from webhook.reviewer import Refusal, Reviewer
from webhook.settings import ServeSettings
from webhook.tlsreload import CertReloader

logger = logging.getLogger(__name__)

CACHE_STOP_SECONDS = 5.0
SHUTDOWN_SECONDS = 5.0
"""How long a stopping server waits for the requests in flight (`aiohttp`'s `shutdown_timeout`)."""
JSON_CONTENT_TYPE = "application/json"
STATIC_SOURCE = "static --service map"


SETTINGS_KEY = web.AppKey("settings", ServeSettings)
METRICS_KEY = web.AppKey("metrics", Metrics)
REVIEWER_KEY = web.AppKey("reviewer", Reviewer)
CACHE_KEY = web.AppKey("service_cache", ServiceCache)
CONTEXT_KEY = web.AppKey("context_cache", ContextCache)
HEAP_KEY = web.AppKey("heap", Heap)
TLS_KEY = web.AppKey("tls", CertReloader)
SHARED_METRICS_KEY = web.AppKey("shared_metrics", WorkerMetrics)


class RequestRefusedError(AdmissionError):
    """A request refused before it is parsed (content type, size, a body that never arrives)."""


def build_resolver(settings: ServeSettings, cache: ServiceCache | None) -> ServiceResolver:
    """Static `--service` answers first; then the Service cache, when there is one."""
    static = StaticResolver(settings.services)
    if cache is None:
        return static
    return ChainResolver((static, cache))


def check_startable(settings: ServeSettings) -> None:
    """Raise what `make_app(settings)` would for bad certificate files (`TLSFilesError`) or an unusable
    kubeconfig (`KubeConfigError`), without building a server: a supervisor checks once, before it forks."""
    CertReloader(settings.tls)
    if settings.kube is not None:
        build_core_api(kubeconfig=settings.kube.kubeconfig, context=settings.kube.context)


def make_app(
    settings: ServeSettings, *, kube_api: Any = None, share: MetricShare | None = None
) -> web.Application:
    """The whole server as an `aiohttp` application (TLS comes from `app[TLS_KEY].context`).

    `kube_api` is a `CoreV1Api` to use instead of building one from `settings.kube`. Bad certificate files
    or an unusable kubeconfig raise here, before anything listens. `share` makes the app one worker process
    of several: it publishes its metrics there, and its `/metrics` reports every worker's.
    """
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[translate_errors],
    )
    metrics = Metrics()
    heap = Heap()
    app[HEAP_KEY] = heap
    app.cleanup_ctx.append(_run_heap)
    cache: ServiceCache | None = None
    policy = settings.policy if settings.policy is not None else default_policy()
    context: ContextSource = FixedContext(
        Context(
            declared=settings.services,
            root_namespace=policy.root_namespace,
            cluster_domain=policy.cluster_domain,
            settled=False,
        )
    )
    if settings.kube is not None:
        api = (
            kube_api
            if kube_api is not None
            else build_core_api(kubeconfig=settings.kube.kubeconfig, context=settings.kube.context)
        )
        cache = ServiceCache(api, settings.kube, after_list=heap.settle_soon)
        app[CACHE_KEY] = cache
        app.cleanup_ctx.append(_run_service_cache)
        metrics.bind_cache(age=cache.age, synced=lambda: cache.synced, size=cache.size)
        live = ContextCache(
            custom_objects_api(api),
            settings.kube,
            root_namespace=policy.root_namespace,
            cluster_domain=policy.cluster_domain,
            declared=settings.services,
            settled=False,
            filter_name=policy.filter_name,
            after_list=heap.settle_soon,
        )
        app[CONTEXT_KEY] = live
        app.cleanup_ctx.append(_run_context_cache)
        context = live
    resolver = build_resolver(settings, cache)
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = metrics
    generation: Callable[[], int] = (lambda: cache.generation) if cache is not None else (lambda: 0)
    app[REVIEWER_KEY] = Reviewer(policy, resolver, generation=generation, context=context)
    app[TLS_KEY] = CertReloader(
        settings.tls, on_reload=lambda ok: metrics.cert_reloads.labels("ok" if ok else "failed").inc()
    )
    app.cleanup_ctx.append(_run_cert_reloader)
    if share is not None:
        app[SHARED_METRICS_KEY] = WorkerMetrics(metrics, share, pid=os.getpid())
        app.cleanup_ctx.append(_run_metrics_publisher)
    app.router.add_post("/mutate", functools.partial(handle_review, webhook=Webhook.MUTATE))
    app.router.add_post("/validate", functools.partial(handle_review, webhook=Webhook.VALIDATE))
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    return app


async def _run_heap(app: web.Application) -> AsyncIterator[None]:
    """Server thresholds and pause metrics while the app runs; settles go to this loop. Without caches the
    heap is settled once at start (the modules and the policy are all there is to freeze)."""
    heap, pauses = app[HEAP_KEY], app[METRICS_KEY].gc
    heap.start(asyncio.get_running_loop())
    pauses.install()
    if CACHE_KEY not in app:
        heap.settle_soon()
    try:
        yield
    finally:
        pauses.uninstall()
        heap.stop()


async def _run_context_cache(app: web.Application) -> AsyncIterator[None]:
    live = app[CONTEXT_KEY]
    await asyncio.to_thread(live.start)  # probes each collection once (bounded) before its informer starts
    try:
        yield
    finally:
        await asyncio.to_thread(live.stop, CACHE_STOP_SECONDS)


async def _run_service_cache(app: web.Application) -> AsyncIterator[None]:
    cache = app[CACHE_KEY]
    cache.start()
    try:
        yield
    finally:
        await asyncio.to_thread(cache.stop, CACHE_STOP_SECONDS)


@contextlib.asynccontextmanager
async def running_task(coroutine: Coroutine[Any, Any, object], name: str) -> AsyncIterator[None]:
    """`coroutine` as a task while the block runs; cancelled, and waited for, when the block ends."""
    task = asyncio.create_task(coroutine, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _run_cert_reloader(app: web.Application) -> AsyncIterator[None]:
    async with running_task(app[TLS_KEY].run(), "tls-reload"):
        yield


async def _run_metrics_publisher(app: web.Application) -> AsyncIterator[None]:
    """Publish this worker's metrics every PUBLISH_SECONDS, and once more when it stops."""
    shared = app[SHARED_METRICS_KEY]

    async def publish_periodically() -> None:
        warned = False
        while True:
            if not shared.publish() and not warned:
                warned = True
                logger.warning("metrics too large for the shared board; other workers see older values")
            await asyncio.sleep(PUBLISH_SECONDS)

    try:
        async with running_task(publish_periodically(), "metrics-publish"):
            yield
    finally:
        shared.publish()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _plain(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n")


def _refuse(request: web.Request, *, status: int, reason: str) -> web.Response:
    """A request that gets no review: counted, logged, and answered with one plain line."""
    request.app[METRICS_KEY].count_malformed(request.path)
    logger.info("refused %s %s: %s", request.method, request.path, reason)
    return _plain(status, reason)


@web.middleware
async def translate_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal is a 4xx with one plain line; nothing escapes as a traceback."""
    try:
        return await handler(request)
    except AdmissionError as error:
        return _refuse(request, status=error.status, reason=error.reason)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS_KEY].max_body_bytes
        request.app[METRICS_KEY].count_malformed(request.path)
        return _plain(400, f"request body is larger than {limit} bytes")
    except web.HTTPNotFound:
        return _plain(
            404, f"no such path: {request.path} (try /mutate, /validate, /healthz, /readyz, /metrics)"
        )
    except web.HTTPMethodNotAllowed as error:
        return _plain(
            405, f"{request.method} is not allowed on {request.path} (use {', '.join(error.allowed_methods)})"
        )
    except web.HTTPException as error:
        if error.status >= 500:
            logger.error("server error on %s %s: %s", request.method, request.path, error.reason)
        return _plain(error.status, error.reason)
    except (asyncio.CancelledError, ConnectionError):
        raise  # the client went away: nothing to answer
    except Exception as error:
        # Reviews never get here (`Reviewer.review` returns refusals and turns engine failures into
        # verdicts); a bug elsewhere is logged with its traceback and answered with one line, not a page.
        logger.exception("internal error on %s %s", request.method, request.path)
        return _plain(500, f"internal error ({type(error).__name__}); see the server log")


async def read_body(request: web.Request, settings: ServeSettings) -> bytes:
    """The whole body; refused when it is not JSON by its type, too large, empty or slow to arrive."""
    if (
        request.headers.get(hdrs.CONTENT_TYPE) != JSON_CONTENT_TYPE
        and request.content_type != JSON_CONTENT_TYPE
    ):
        raise RequestRefusedError(f"Content-Type must be application/json, not {request.content_type!r}")
    limit = settings.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise RequestRefusedError(f"request body is larger than {limit} bytes")
    content = request.content
    if content.is_eof():
        # The whole body arrived with the headers (the usual case): take the buffered chunk as it is,
        # without the copy `read()` makes, and without a timer.
        body = content.read_nowait()
        if len(body) > limit:
            raise RequestRefusedError(f"request body is larger than {limit} bytes")
    else:
        try:
            async with asyncio.timeout(settings.body_timeout_seconds):
                body = await request.read()
        except TimeoutError:
            raise RequestRefusedError(
                f"request body not received within {settings.body_timeout_seconds:g} seconds"
            ) from None
    if not body:
        raise RequestRefusedError("request body is empty (expected an AdmissionReview)")
    return body


async def handle_review(request: web.Request, *, webhook: Webhook) -> web.Response:
    app = request.app
    body = await read_body(request, app[SETTINGS_KEY])
    started = time.perf_counter()
    result = app[REVIEWER_KEY].review(body, webhook=webhook)
    seconds = time.perf_counter() - started
    if isinstance(result, Refusal):
        return _refuse(request, status=result.status, reason=result.reason)
    app[METRICS_KEY].record_review(
        webhook=webhook,
        operation=result.operation,
        outcome=result.outcome,
        rules=result.rules,
        seconds=seconds,
        patched=result.patch_applied,
    )
    log_info(logger, result.audit_line(seconds=seconds))
    return web.Response(body=result.payload, content_type=JSON_CONTENT_TYPE)


async def handle_healthz(request: web.Request) -> web.Response:
    return _plain(200, "ok")


def describe_readiness(app: web.Application) -> tuple[bool, dict[str, Any]]:
    """Ready when ClusterIPs can be answered: the Service cache has synced (or only static answers)."""
    cache = app.get(CACHE_KEY)
    settings = app[SETTINGS_KEY]
    tls = app[TLS_KEY]
    state: dict[str, Any] = {"tls_fingerprint": tls.fingerprint}
    shared = app.get(SHARED_METRICS_KEY)
    if shared is not None:
        state["worker"] = {"index": shared.share.index, "pid": shared.pid}
    if cache is None:
        state["services"] = {"source": STATIC_SOURCE, "count": len(settings.services)}
        return True, {"ready": True, **state}
    live = app.get(CONTEXT_KEY)
    context_ready = live is None or live.synced
    if live is not None:
        state["context"] = {"synced": live.synced, "count": live.size(), "skipped": list(live.skipped)}
    ready = cache.synced and context_ready
    age = cache.age()
    stale_after = settings.kube.stale_after_seconds if settings.kube is not None else 0.0
    state["services"] = {
        "source": "kubernetes",
        "synced": ready,
        "count": cache.size(),
        "age_seconds": None if age is None else round(age, 3),
        "stale": age is not None and age > stale_after,
        "last_error": cache.last_error or None,
    }
    return ready, {"ready": ready, **state}


async def handle_readyz(request: web.Request) -> web.Response:
    ready, state = describe_readiness(request.app)
    return web.json_response(state, status=200 if ready else 503)


async def handle_metrics(request: web.Request) -> web.Response:
    shared = request.app.get(SHARED_METRICS_KEY)
    body = request.app[METRICS_KEY].render() if shared is None else shared.render()
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


async def start_server(
    app: web.Application, *, host: str, port: int, reuse_port: bool = False
) -> tuple[web.AppRunner, int]:
    """Listen with TLS; return the runner (call `cleanup()`) and the bound port (useful with port 0).

    `reuse_port` joins the port's SO_REUSEPORT group, where the kernel spreads new connections over the
    processes listening (`serve --workers`)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, host, port, ssl_context=app[TLS_KEY].context, reuse_port=True if reuse_port else None
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)
