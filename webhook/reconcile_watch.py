"""A list + watch of EnvoyFilters, so a filter written back to the bad form is looked at within seconds.

`FilterWatch` runs one thread per scope (every namespace, or each namespace the reconciler audits). Each
thread lists, then watches from the list's resourceVersion with bookmarks, resumes from the last version it
saw when a watch ends, lists again on `410 Gone`, and backs off exponentially (bounded) while the API is
unreachable. Every object that changed becomes a `FilterChange` for `on_change`, called on that thread:
after the first list, a relist reports what differs from the versions it knew. The apiserver serves every
stored EnvoyFilter through the version watched, whatever version it was written in, so one version suffices.

`ChangeQueue` hands changes over to the event loop (`loop.call_soon_threadsafe`) and coalesces them: one
pending entry per object, with the newest version, however many events a burst brings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from webhook.reconcile_kube import ENVOY_FILTERS, LIST_PAGE_SIZE, Resource
from webhook.services import interrupt_stream, iter_lines

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0
READ_GRACE_SECONDS = 30.0

ObjectKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class WatchSettings:
    timeout_seconds: int = 240
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class FilterChange:
    """An EnvoyFilter that changed (or went away) at `resource_version`."""

    namespace: str
    name: str
    resource_version: str
    deleted: bool = False

    @property
    def key(self) -> ObjectKey:
        return (self.namespace, self.name)


class WatchExpiredError(Exception):
    """410 Gone: the resourceVersion is older than the apiserver keeps; list again."""


class WatchStreamError(Exception):
    """The stream carried something other than a watch event, or an ERROR event other than 410."""


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _key_of(obj: Mapping[str, Any]) -> ObjectKey | None:
    metadata = _metadata(obj)
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if isinstance(namespace, str) and isinstance(name, str) and namespace and name:
        return (namespace, name)
    return None


def _version_of(obj: Mapping[str, Any]) -> str:
    version = _metadata(obj).get("resourceVersion")
    return version if isinstance(version, str) else ""


class _ScopeWatch:
    """The list + watch loop of one scope (a namespace, or None = every namespace)."""

    def __init__(
        self,
        custom: Any,
        resource: Resource,
        namespace: str | None,
        settings: WatchSettings,
        on_change: Callable[[FilterChange], None],
        stopping: threading.Event,
    ) -> None:
        self._custom = custom
        self._resource = resource
        self._namespace = namespace
        self._settings = settings
        self._on_change = on_change
        self._stopping = stopping
        self._known: dict[ObjectKey, str] = {}
        self._listed = False
        self.response: Any = None
        self.version: str | None = None
        self.where = (
            f"{resource.plural} in {namespace}" if namespace else f"{resource.plural} (all namespaces)"
        )

    def run(self) -> None:
        backoff = self._settings.backoff_initial_seconds
        while not self._stopping.is_set():
            try:
                if self.version is None:
                    self.version = self._list()
                self._watch(self.version)
                backoff = self._settings.backoff_initial_seconds
            except WatchExpiredError:
                logger.info("watch of %s expired (410 Gone), listing again", self.where)
                self.version = None
            except Exception as error:
                if self._stopping.is_set():
                    break
                if getattr(error, "status", None) == 410:
                    logger.info("list of %s expired (410 Gone), listing again", self.where)
                    self.version = None
                    continue
                logger.warning("watch of %s: %s; retrying in %.1fs", self.where, _describe(error), backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._settings.backoff_max_seconds)

    def _call(self, **kwargs: Any) -> Any:
        resource = self._resource
        if self._namespace is None:
            return self._custom.list_cluster_custom_object(
                resource.group, resource.version, resource.plural, _preload_content=False, **kwargs
            )
        return self._custom.list_namespaced_custom_object(
            resource.group,
            resource.version,
            self._namespace,
            resource.plural,
            _preload_content=False,
            **kwargs,
        )

    def _list(self) -> str:
        found: dict[ObjectKey, str] = {}
        token: str | None = None
        version: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE_SIZE}
            if token:
                kwargs["_continue"] = token
            response = self._call(_request_timeout=(CONNECT_TIMEOUT_SECONDS, 60.0), **kwargs)
            try:
                page = json.loads(response.data)
            finally:
                response.release_conn()
            if not isinstance(page, Mapping):
                raise WatchStreamError("the list is not a JSON object")
            if version is None:
                version = _version_of(page) or None
            for item in page.get("items") or ():
                if isinstance(item, Mapping) and (key := _key_of(item)) is not None:
                    found[key] = _version_of(item)
            token = _metadata(page).get("continue") or None
            if not token:
                break
        if version is None:
            raise WatchStreamError("the list carried no resourceVersion")
        previous, self._known = self._known, found
        if self._listed:
            self._report(_relist_changes(previous, found))
        self._listed = True
        logger.debug("listed %s objects=%d resource_version=%s", self.where, len(found), version)
        return version

    def _watch(self, version: str) -> None:
        timeout = self._settings.timeout_seconds
        response = self._call(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(CONNECT_TIMEOUT_SECONDS, timeout + READ_GRACE_SECONDS),
        )
        self.response = response
        try:
            if self._stopping.is_set():
                return
            for line in iter_lines(response):
                self.version = self._apply(json.loads(line), self.version or version)
                if self._stopping.is_set():
                    break
        finally:
            self.response = None
            response.release_conn()

    def _apply(self, event: Any, version: str) -> str:
        if not isinstance(event, Mapping):
            raise WatchStreamError("a watch line is not a JSON object")
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            raise WatchStreamError(f"a {kind} watch event has no object")
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchExpiredError(str(obj.get("message", "")))
            raise WatchStreamError(f"watch error {obj.get('code')}: {obj.get('message', '')}")
        new_version = _version_of(obj) or version
        if kind == "BOOKMARK":
            return new_version
        key = _key_of(obj)
        if key is None or kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise WatchStreamError(f"a {kind} watch event names no namespaced object")
        deleted = kind == "DELETED"
        if deleted:
            self._known.pop(key, None)
        else:
            self._known[key] = _version_of(obj)
        self._report([FilterChange(key[0], key[1], _version_of(obj), deleted)])
        return new_version

    def _report(self, changes: Iterable[FilterChange]) -> None:
        for change in changes:
            try:
                self._on_change(change)
            except Exception:
                logger.exception("handling a change of %s/%s failed", change.namespace, change.name)


def _relist_changes(old: Mapping[ObjectKey, str], new: Mapping[ObjectKey, str]) -> list[FilterChange]:
    changes = [FilterChange(*key, version) for key, version in sorted(new.items()) if old.get(key) != version]
    changes.extend(
        FilterChange(*key, version, True) for key, version in sorted(old.items()) if key not in new
    )
    return changes


class FilterWatch:
    """List + watch EnvoyFilters in `namespaces` (empty = every namespace), one thread per scope."""

    def __init__(
        self,
        api_client: Any,
        *,
        namespaces: tuple[str, ...],
        settings: WatchSettings,
        on_change: Callable[[FilterChange], None],
        resource: Resource = ENVOY_FILTERS,
    ) -> None:
        self._stopping = threading.Event()
        custom = client.CustomObjectsApi(api_client)
        scopes: tuple[str | None, ...] = namespaces or (None,)
        self._scopes = [
            _ScopeWatch(custom, resource, scope, settings, on_change, self._stopping) for scope in scopes
        ]
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("the EnvoyFilter watch is already running")
        self._stopping.clear()
        for scope in self._scopes:
            thread = threading.Thread(target=scope.run, name=f"watch {scope.where}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Interrupt every open watch and wait for the threads (bounded)."""
        self._stopping.set()
        for scope in self._scopes:
            interrupt_stream(scope.response)
        threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("%s did not stop within %.1fs", thread.name, timeout)


class ChangeQueue:
    """Changes from watch threads, handed to the event loop and coalesced: one entry per object."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: dict[ObjectKey, FilterChange] = {}
        self._ready = asyncio.Event()

    def offer(self, change: FilterChange) -> None:
        """Any thread: queue `change` for the event loop (dropped once the loop is closed)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._put, change)

    def _put(self, change: FilterChange) -> None:
        self._pending[change.key] = change
        self._ready.set()

    def __len__(self) -> int:
        return len(self._pending)

    async def wait(self) -> None:
        await self._ready.wait()

    def take(self) -> list[FilterChange]:
        """Everything pending, oldest object first; empties the queue."""
        batch, self._pending = list(self._pending.values()), {}
        self._ready.clear()
        return batch


def _describe(error: Exception) -> str:
    status = getattr(error, "status", None)
    if isinstance(status, int) and status:
        return f"the Kubernetes API answered {status} {getattr(error, 'reason', '')}".rstrip()
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__
