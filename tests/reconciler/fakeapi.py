"""A stand-in Kubernetes API for the reconciler tests, speaking the REST protocol of the `kubernetes` client.

A fake, because no kube-apiserver runs in these unit tests (the end-to-end suite has the real one). It
serves, on loopback over plain HTTP:
- namespaced objects of any API group at `/apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME]` (EnvoyFilters,
  Leases, events.k8s.io Events, PolicyReports) and cluster-wide lists at `/apis/GROUP/VERSION/PLURAL`;
  GET, POST (with `generateName`, 409 AlreadyExists), PUT (409 Conflict on a stale resourceVersion), PATCH
  as `application/json-patch+json` (RFC 6902 through the `jsonpatch` library; a failed `test` op is a 422
  with the apiserver's generic message), the only patch the reconciler sends;
- `metadata.managedFields` per field manager (`fieldManager` query parameter), lists atomic as the
  apiserver's deduced schema for preserved unknown fields keeps them, so the writer of a field can be named;
- `?watch=true` on a collection (namespaced or cluster-wide): ADDED / MODIFIED events of the objects
  committed after the given resourceVersion, as newline-delimited JSON, until `timeoutSeconds` (no
  bookmarks, no compaction; the watch tests that need 410 Gone use `kubefake.FakeServiceAPI`);
- Services at `/api/v1/services` (list + watch) through the webhook tests' `FakeServiceAPI`.
Every request is recorded (method, path, User-Agent) so tests can count who wrote what.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
from aiohttp import web

from tests.kube.kubefake import FakeServiceAPI

ENVOY_FILTERS = ("networking.istio.io", "envoyfilters")
LEASES = ("coordination.k8s.io", "leases")
EVENTS = ("events.k8s.io", "events")
POLICY_REPORTS = ("wgpolicyk8s.io", "policyreports")

REJECTED = "the server rejected our request due to an error in our request"

FieldPath = tuple[str, ...]
Key = tuple[str, str, str, str]  # group, plural, namespace, name


@dataclass(frozen=True)
class Request:
    method: str
    group: str
    plural: str
    namespace: str
    name: str
    user_agent: str
    status: int

    @property
    def write(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason}
    return web.json_response({**body, "code": code}, status=code)


def _tracked_paths(obj: Any, prefix: FieldPath = ()) -> set[FieldPath]:
    """Leaf paths of an object, a list being one atomic leaf."""
    if isinstance(obj, dict) and obj:
        paths: set[FieldPath] = set()
        for key, value in obj.items():
            paths |= _tracked_paths(value, (*prefix, key))
        return paths
    return {prefix} if prefix else set()


def _changed_paths(old: Any, new: Any, prefix: FieldPath = ()) -> set[FieldPath]:
    if isinstance(old, dict) and isinstance(new, dict):
        paths: set[FieldPath] = set()
        for key in set(old) | set(new):
            if key not in new:
                paths.add((*prefix, key))
            elif key not in old:
                paths |= _tracked_paths(new[key], (*prefix, key)) or {(*prefix, key)}
            elif old[key] != new[key]:
                paths |= _changed_paths(old[key], new[key], (*prefix, key))
        return paths
    return {prefix} if old != new else set()


def _owned_content(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    content = {
        key: value for key, value in obj.items() if key not in ("metadata", "status", "apiVersion", "kind")
    }
    for key in ("labels", "annotations"):
        if key in metadata:
            content.setdefault("metadata", {})[key] = metadata[key]
    return content


def _fields_v1(paths: set[FieldPath]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for token in path:
            node = node.setdefault(f"f:{token}", {})
    return tree


@dataclass
class FakeKubeAPI:
    services: FakeServiceAPI = field(default_factory=FakeServiceAPI)
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    owners: dict[Key, dict[str, set[FieldPath]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    version: int = 1000
    serve_policy_reports: bool = True
    before_patch: list[Callable[[], None]] = field(default_factory=list)
    before_put: list[Callable[[], None]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _tick: int = 0
    _history: list[tuple[int, Key, dict[str, Any]]] = field(default_factory=list)
    _watchers: list[tuple[tuple[str, str, str | None], asyncio.Queue[dict[str, Any] | None]]] = field(
        default_factory=list
    )

    # -- driving the fake (from the test's event loop) -----------------------------------------------
    def store(self, obj: dict[str, Any], *, group: str, plural: str, manager: str) -> dict[str, Any]:
        """Create or overwrite an object as `manager` would with a full Update (PUT)."""
        metadata = obj["metadata"]
        key = (group, plural, metadata["namespace"], metadata["name"])
        old = self.objects.get(key)
        new = copy.deepcopy(obj)
        if old is not None:
            new["metadata"]["uid"] = old["metadata"]["uid"]
            new["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        return self._commit(key, old, new, manager)

    def store_envoy_filter(self, obj: dict[str, Any], *, manager: str) -> dict[str, Any]:
        return self.store(obj, group=ENVOY_FILTERS[0], plural=ENVOY_FILTERS[1], manager=manager)

    def envoy_filter(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(*ENVOY_FILTERS, namespace, name)])

    def objects_of(self, group: str, plural: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for k, o in sorted(self.objects.items()) if k[:2] == (group, plural)]

    def writes(self, *, plural: str | None = None, user_agent: str | None = None) -> list[Request]:
        return [
            r
            for r in self.requests
            if r.write
            and (plural is None or r.plural == plural)
            and (user_agent is None or r.user_agent.endswith("/" + user_agent))
        ]

    def successful_patches(self, *, user_agent: str | None = None) -> list[Request]:
        return [r for r in self.writes(plural="envoyfilters", user_agent=user_agent) if r.status == 200]

    def write_kubeconfig(self, path: Path) -> Path:
        self.services.port = self.port
        return self.services.write_kubeconfig(path)

    # -- object bookkeeping --------------------------------------------------------------------------
    def _commit(
        self, key: Key, old: dict[str, Any] | None, new: dict[str, Any], manager: str
    ) -> dict[str, Any]:
        self.version += 1
        self._tick += 1
        metadata = new.setdefault("metadata", {})
        metadata["namespace"], metadata["name"] = key[2], key[3]
        metadata["resourceVersion"] = str(self.version)
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        metadata.setdefault("generation", 1)
        if old is not None and old.get("spec") != new.get("spec"):
            metadata["generation"] = int(old["metadata"].get("generation", 1)) + 1
        before = _owned_content(old) if old is not None else {}
        changed = _changed_paths(before, _owned_content(new))
        owners = self.owners.setdefault(key, {})
        for other, paths in owners.items():
            if other != manager:
                owners[other] = {
                    p for p in paths if not (p[: len(c)] == c or c[: len(p)] == p for c in changed)
                }
        owners.setdefault(manager, set()).update(changed)
        timestamps = {
            m["manager"]: m["time"] for m in (old or {}).get("metadata", {}).get("managedFields") or ()
        }
        timestamps[manager] = f"2026-01-01T00:{self._tick // 60:02d}:{self._tick % 60:02d}Z"
        metadata["managedFields"] = [
            {
                "manager": name,
                "operation": "Update",
                "apiVersion": f"{key[0]}/v1",
                "time": timestamps.get(name, "2026-01-01T00:00:00Z"),
                "fieldsType": "FieldsV1",
                "fieldsV1": _fields_v1(paths),
            }
            for name, paths in sorted(owners.items())
            if paths
        ]
        self.objects[key] = new
        event = {"type": "ADDED" if old is None else "MODIFIED", "object": copy.deepcopy(new)}
        self._history.append((self.version, key, event))
        for (group, plural, namespace), queue in self._watchers:
            if (group, plural) == key[:2] and namespace in (None, key[2]):
                queue.put_nowait(event)
        return copy.deepcopy(new)

    # -- the HTTP side -------------------------------------------------------------------------------
    def _record(self, request: web.Request, key: Key, status: int) -> None:
        agent = request.headers.get("User-Agent", "")
        self.requests.append(Request(request.method, key[0], key[1], key[2], key[3], agent, status))

    def _served(self, group: str) -> bool:
        return self.serve_policy_reports or group != POLICY_REPORTS[0]

    async def handle_cluster_list(self, request: web.Request) -> web.StreamResponse:
        group, plural = request.match_info["group"], request.match_info["plural"]
        self._record(request, (group, plural, "", ""), 200)
        if request.query.get("watch") in ("true", "True", "1"):
            return await self._watch(request, group, plural, None)
        return self._list(group, plural, None, request.match_info["version"])

    async def _watch(
        self, request: web.Request, group: str, plural: str, namespace: str | None
    ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.version)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        for version, key, event in self._history:
            if version > since and key[:2] == (group, plural) and namespace in (None, key[2]):
                queue.put_nowait(event)
        watcher = ((group, plural, namespace), queue)
        self._watchers.append(watcher)
        try:
            async with asyncio.timeout(timeout):
                while (event := await queue.get()) is not None:
                    await response.write(json.dumps(event).encode() + b"\n")
        except (TimeoutError, ConnectionResetError):
            pass  # the watch timed out, or its client went away
        finally:
            self._watchers.remove(watcher)
        return response

    async def handle_collection(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        group, plural, namespace = info["group"], info["plural"], info["namespace"]
        if not self._served(group):
            self._record(request, (group, plural, namespace, ""), 404)
            return _status(404, "NotFound", "the server could not find the requested resource")
        if request.method == "GET":
            self._record(request, (group, plural, namespace, ""), 200)
            if request.query.get("watch") in ("true", "True", "1"):
                return await self._watch(request, group, plural, namespace)
            return self._list(group, plural, namespace, info["version"])
        body = await request.json()
        metadata = body.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
        key = (group, plural, namespace, str(metadata.get("name") or ""))
        if key in self.objects:
            self._record(request, key, 409)
            return _status(409, "AlreadyExists", f'{plural} "{key[3]}" already exists')
        manager = request.query.get("fieldManager", "unknown")
        created = self._commit(key, None, body, manager)
        self._record(request, key, 201)
        return web.json_response(created, status=201)

    async def handle_object(self, request: web.Request) -> web.Response:
        info = request.match_info
        key = (info["group"], info["plural"], info["namespace"], info["name"])
        if not self._served(key[0]):
            self._record(request, key, 404)
            return _status(404, "NotFound", "the server could not find the requested resource")
        if request.method == "PATCH":
            hooks, self.before_patch = self.before_patch, []
        elif request.method == "PUT":
            hooks, self.before_put = self.before_put, []
        else:
            hooks = []
        for hook in hooks:
            hook()
        current = self.objects.get(key)
        if current is None:
            self._record(request, key, 404)
            return _status(404, "NotFound", f'{key[1]} "{key[3]}" not found')
        if request.method == "GET":
            self._record(request, key, 200)
            return web.json_response(current)
        manager = request.query.get("fieldManager", "unknown")
        if request.method == "PUT":
            body = await request.json()
            if (
                str((body.get("metadata") or {}).get("resourceVersion") or "")
                != current["metadata"]["resourceVersion"]
            ):
                self._record(request, key, 409)
                return _status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {key[1]} "{key[3]}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                )
            for kept in ("uid", "creationTimestamp"):
                body["metadata"][kept] = current["metadata"][kept]
            written = self._commit(key, current, body, manager)
            self._record(request, key, 200)
            return web.json_response(written)
        return await self._patch(request, key, current, manager)

    async def _patch(
        self, request: web.Request, key: Key, current: dict[str, Any], manager: str
    ) -> web.Response:
        kind = request.content_type
        patch = json.loads(await request.read())
        if kind == "application/json-patch+json":
            try:
                patched = jsonpatch.JsonPatch(patch).apply(copy.deepcopy(current))
            except jsonpatch.JsonPatchTestFailed:
                self._record(request, key, 422)
                return _status(422, "Invalid", REJECTED)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                self._record(request, key, 422)
                return _status(422, "Invalid", f"the server rejected our request: {error}")
        else:
            self._record(request, key, 415)
            return _status(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {kind}"
            )
        patched["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        written = self._commit(key, current, patched, manager)
        self._record(request, key, 200)
        return web.json_response(written)

    def _list(self, group: str, plural: str, namespace: str | None, version: str) -> web.Response:
        items = [
            copy.deepcopy(o)
            for k, o in sorted(self.objects.items())
            if k[:2] == (group, plural) and (namespace is None or k[2] == namespace)
        ]
        return web.json_response(
            {
                "apiVersion": f"{group}/{version}",
                "kind": "List",
                "metadata": {"resourceVersion": str(self.version)},
                "items": items,
            }
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/services", self.services.handle)
        app.router.add_get("/apis/{group}/{version}/{plural}", self.handle_cluster_list)
        collection = "/apis/{group}/{version}/namespaces/{namespace}/{plural}"
        app.router.add_route("*", collection, self.handle_collection)
        app.router.add_route("*", collection + "/{name}", self.handle_object)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self.services.drop_watches()
        for _scope, queue in self._watchers:
            queue.put_nowait(None)
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
            self._runner = None
