"""A stand-in for the Kubernetes API's Service list/watch endpoint, for tests that must make it misbehave.

It speaks the REST protocol the `kubernetes` client uses (a fake, because a real kube-apiserver cannot be
told to drop a watch, forget history or refuse requests on cue): `GET /api/v1/services` lists with
`metadata.resourceVersion` and `limit`/`continue` paging; `?watch=true&resourceVersion=N` streams
newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`) after N, ends at `timeoutSeconds`, and
answers a compacted resourceVersion with an `ERROR` event carrying a `410 Gone` Status, as the apiserver
does. Tests drive it: change Services, drop open watches, compact history, or refuse requests to play an
unreachable API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass
class RecordedRequest:
    watch: bool
    resource_version: str | None
    cont: str | None


@dataclass
class FakeServiceAPI:
    page_size: int = 1000
    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    version: int = 100
    compacted_below: int = 0
    refuse_with: int | None = None
    history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    _watchers: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    port: int = 0

    # -- driving the fake --------------------------------------------------------------------------
    def put(self, namespace: str, name: str, cluster_ip: str, ports: tuple[int, ...] = (9002,)) -> None:
        key = (namespace, name)
        kind = "MODIFIED" if key in self.services else "ADDED"
        self.version += 1
        obj = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"namespace": namespace, "name": name, "resourceVersion": str(self.version)},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": cluster_ip,
                "ports": [{"port": port, "protocol": "TCP"} for port in ports],
            },
        }
        self.services[key] = obj
        self._emit(kind, obj)

    def delete(self, namespace: str, name: str) -> None:
        obj = self.services.pop((namespace, name))
        self.version += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}
        self._emit("DELETED", obj)

    def drop_watches(self) -> None:
        """Cut every open watch stream, as a restarting apiserver or a broken connection would."""
        for queue in list(self._watchers):
            queue.put_nowait(None)

    def compact(self) -> None:
        """Forget history: a watch from an older resourceVersion now gets 410 Gone."""
        self.compacted_below = self.version + 1
        self.history.clear()

    @property
    def lists(self) -> int:
        return sum(1 for r in self.requests if not r.watch and r.cont is None)

    @property
    def watches(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.watch]

    @property
    def open_watches(self) -> int:
        """Watch streams the fake is still serving (one it has not yet found closed counts)."""
        return len(self._watchers)

    def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": obj}
        self.history.append((self.version, kind, obj))
        for queue in list(self._watchers):
            queue.put_nowait(event)

    # -- the HTTP side -------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        watch = query.get("watch") in ("true", "True", "1")
        self.requests.append(RecordedRequest(watch, query.get("resourceVersion"), query.get("continue")))
        if self.refuse_with is not None:
            status = {
                "kind": "Status",
                "status": "Failure",
                "code": self.refuse_with,
                "message": "unavailable",
            }
            return web.json_response(status, status=self.refuse_with)
        if watch:
            return await self._watch(request)
        return self._list(query.get("limit"), query.get("continue"))

    def _list(self, limit: str | None, cont: str | None) -> web.Response:
        items = [self.services[key] for key in sorted(self.services)]
        size = min(int(limit), self.page_size) if limit else self.page_size
        start = int(cont) if cont else 0
        page = items[start : start + size]
        metadata: dict[str, Any] = {"resourceVersion": str(self.version)}
        if start + size < len(items):
            metadata["continue"] = str(start + size)
        return web.json_response(
            {"kind": "ServiceList", "apiVersion": "v1", "metadata": metadata, "items": page}
        )

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.version)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if since < self.compacted_below - 1:
            gone = {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": f"too old resource version: {since} ({self.compacted_below})",
                    "reason": "Expired",
                    "code": 410,
                },
            }
            with contextlib.suppress(ConnectionResetError):
                await response.write(json.dumps(gone).encode() + b"\n")
            return response
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        for version, kind, obj in self.history:
            if version > since:
                queue.put_nowait({"type": kind, "object": obj})
        self._watchers.add(queue)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await queue.get()
                    if event is None:
                        # Drop: close the connection without a clean end of the chunked body.
                        if request.transport is not None:
                            request.transport.close()
                        return response
                    await response.write(json.dumps(event).encode() + b"\n")
        except TimeoutError:
            return response
        except ConnectionResetError:
            # The client went away (a stopped watch): there is no one left to answer.
            return response
        finally:
            self._watchers.discard(queue)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/services", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
            self._runner = None

    def write_kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))
        return path
