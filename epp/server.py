"""Assemble and run one EPP: gRPC ext_proc + health, endpoint source, scraper, metrics endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from epp.discovery import KubeDiscovery
from epp.endpoints import Endpoint
from epp.health import EppHealth
from epp.picker import Picker
from epp.processor import Processor
from epp.scraper import Scraper
from epp.settings import EppSettings
from epp.telemetry import EppMetrics
from telemetry.logoutput import flush_periodically

if TYPE_CHECKING:
    from epp.h2server import H2GrpcServer as H2GrpcServerType

logger = logging.getLogger(__name__)


class EppServer:
    """One EPP in the running event loop. `start()` binds and returns; `stop()` drains and cleans up."""

    def __init__(self, settings: EppSettings) -> None:
        self.settings = settings
        self.metrics = EppMetrics()
        self.picker = Picker(settings.picker, metrics=self.metrics)
        self.processor = Processor(self.picker, self.metrics, settings.processor)
        self.health = EppHealth(lambda: self.picker.synced)
        self.port = 0
        self.metrics_port = 0
        self.health_port = 0
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._h2: H2GrpcServerType | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        settings = self.settings
        if settings.discovery is None:
            self.picker.set_endpoints(settings.endpoints, engines=settings.engines)
        else:

            def publish(endpoints: tuple[Endpoint, ...], engines: dict[Endpoint, str]) -> None:
                self.picker.set_endpoints(endpoints, engines=engines)

            discovery = KubeDiscovery(settings.discovery, publish)
            self._tasks.append(asyncio.create_task(discovery.run(), name="epp-discovery"))
        self._tasks.append(
            asyncio.create_task(Scraper(self.picker, settings.scrape).run(), name="epp-scraper")
        )
        h2_server = _h2_server_class() if settings.transport == "h2" and settings.tls is None else None
        if h2_server is not None:
            self._h2 = h2_server(self.processor, ready=lambda: self.picker.synced)
            self.port = await self._h2.start(settings.host, settings.port, reuse_port=settings.workers > 1)
        else:
            await self._start_grpcio()
        if settings.metrics_port is not None:
            await self._start_metrics()
        if settings.health_port is not None:
            await self._start_health()
        logger.info(
            "epp listening address=%s:%d transport=%s tls=%s endpoints=%s metrics_port=%s health_port=%s"
            " fallbacks=%d shed_queue_depth=%s",
            settings.host,
            self.port,
            "h2" if self._h2 else "grpcio",
            "on" if settings.tls else "off",
            ",".join(map(str, self.picker.endpoints)) or ("kubernetes" if settings.discovery else "-"),
            self.metrics_port or "off",
            self.health_port or "off",
            settings.picker.fallbacks,
            "off" if settings.picker.shed_queue_depth is None else f"{settings.picker.shed_queue_depth:g}",
        )

    async def _start_grpcio(self) -> None:
        settings = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
                ("grpc.max_concurrent_streams", 1000),
            ]
        )
        server.add_generic_rpc_handlers((self.processor.rpc_handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        address = f"{settings.host}:{settings.port}"
        if settings.tls is None:
            self.port = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(settings.tls.key.read_bytes(), settings.tls.cert.read_bytes())]
            )
            self.port = server.add_secure_port(address, credentials)
        await server.start()
        self._server = server

    async def _start_health(self) -> None:
        """gRPC health alone on its own plaintext port (the GIE EPP's 9003), whatever the main transport."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.health_port = server.add_insecure_port(f"{self.settings.host}:{self.settings.health_port or 0}")
        await server.start()
        self._health_server = server

    async def stop(self) -> None:
        if self._h2 is not None:
            await self._h2.stop(self.settings.grace)
            self._h2 = None
        if self._server is not None:
            await self._server.stop(self.settings.grace)
            self._server = None
        if self._health_server is not None:
            await self._health_server.stop(None)
            self._health_server = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.processor.write_log()  # the lines of the streams the stop ended

    async def _start_metrics(self) -> None:
        async def metrics(_: web.Request) -> web.Response:
            body = generate_latest(self.metrics.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok\n")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        sock = bind_listener(self.settings.host, self.settings.metrics_port or 0)
        await web.SockSite(runner, sock).start()
        self.metrics_port = sock.getsockname()[1]


def _h2_server_class() -> type[H2GrpcServerType] | None:
    """The EPP's own HTTP/2 server, or None (with a warning) when its HPACK library is missing."""
    try:
        from epp.h2server import H2GrpcServer
    except ImportError as exc:
        logger.warning("h2 transport unavailable (%s); serving with grpcio", exc)
        return None
    return H2GrpcServer


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 picks a free one); the caller hands it to a server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def running_epp(settings: EppSettings) -> AsyncIterator[EppServer]:
    """An EPP for the duration of the block (tests and embedding)."""
    server = EppServer(settings)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


async def serve_epp(settings: EppSettings, *, log_handler: logging.Handler | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain for `settings.grace` seconds; flush `log_handler` meanwhile."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    flusher = asyncio.create_task(flush_periodically(log_handler)) if log_handler else None
    try:
        async with running_epp(settings):
            await stop.wait()
            logger.info("epp stopping grace_s=%s", settings.grace)
    finally:
        if flusher is not None:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
