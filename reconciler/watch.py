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
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from kubernetes import client

from kube.informer import Change, Informer, InformerLog, InformerSettings, resource_version_of
from reconciler.api import ENVOY_FILTERS, LIST_PAGE_SIZE, Resource

logger = logging.getLogger(__name__)

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
    return resource_version_of(obj) or ""


class _ScopeWatch:
    """The EnvoyFilters of one scope (a namespace, or None = every namespace): an informer of
    (namespace, name) -> resourceVersion, whose changes become `FilterChange`s."""

    def __init__(
        self,
        custom: Any,
        resource: Resource,
        namespace: str | None,
        settings: WatchSettings,
        on_change: Callable[[FilterChange], None],
    ) -> None:
        self._on_change = on_change
        self._listed = False
        where = f"{resource.plural} in {namespace}" if namespace else f"{resource.plural} (all namespaces)"
        if namespace is None:
            call = partial(
                custom.list_cluster_custom_object, resource.group, resource.version, resource.plural
            )
        else:
            call = partial(
                custom.list_namespaced_custom_object,
                resource.group,
                resource.version,
                namespace,
                resource.plural,
            )
        self.informer: Informer[ObjectKey, str] = Informer(
            name=f"watch {where}",
            call=call,
            decode=_decode_filter,
            on_listed=self._relisted,
            on_event=self._changed,
            settings=InformerSettings(
                watch_timeout_seconds=settings.timeout_seconds,
                backoff_initial_seconds=settings.backoff_initial_seconds,
                backoff_max_seconds=settings.backoff_max_seconds,
                page_size=LIST_PAGE_SIZE,
            ),
            log=InformerLog(
                logger=logger,
                watch_expired=f"watch of {where} expired (410 Gone), listing again",
                list_expired=f"list of {where} expired (410 Gone), listing again",
                retrying=f"watch of {where}: %s; retrying in %.1fs",
            ),
        )
        self.where = where

    def _relisted(
        self, found: Mapping[ObjectKey, str], changes: Sequence[Change[ObjectKey, str]], version: str
    ) -> None:
        """After the first list, report what a relist found different: changed objects, then deleted."""
        if self._listed:
            ordered = sorted(changes, key=lambda change: change.kind == "DELETED")
            self._report([_filter_change(change) for change in ordered])
        self._listed = True
        logger.debug("listed %s objects=%d resource_version=%s", self.where, len(found), version)

    def _changed(self, change: Change[ObjectKey, str], version: str) -> None:
        self._report([_filter_change(change)])

    def _report(self, changes: Sequence[FilterChange]) -> None:
        for change in changes:
            try:
                self._on_change(change)
            except Exception:
                logger.exception("handling a change of %s/%s failed", change.namespace, change.name)


def _decode_filter(obj: Mapping[str, Any]) -> tuple[ObjectKey, str] | None:
    key = _key_of(obj)
    return None if key is None else (key, _version_of(obj))


def _filter_change(change: Change[ObjectKey, str]) -> FilterChange:
    namespace, name = change.key
    return FilterChange(namespace, name, change.value, change.kind == "DELETED")


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
        custom = client.CustomObjectsApi(api_client)
        scopes: tuple[str | None, ...] = namespaces or (None,)
        self._scopes = [_ScopeWatch(custom, resource, scope, settings, on_change) for scope in scopes]

    def start(self) -> None:
        if any(scope.informer.running for scope in self._scopes):
            raise RuntimeError("the EnvoyFilter watch is already running")
        for scope in self._scopes:
            scope.informer.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Interrupt every open watch and wait for the threads (bounded)."""
        for scope in self._scopes:
            scope.informer.request_stop()
        for scope in self._scopes:
            if not scope.informer.join(timeout):
                logger.warning("%s did not stop within %.1fs", scope.informer.name, timeout)


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
