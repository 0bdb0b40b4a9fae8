"""An informer-style cache of Services: list, then watch, in a thread; answers the engine's ServiceResolver.

Reviews never wait on the Kubernetes API: `lookup` reads the cache. One thread (a `kube.informer.Informer`)
lists every Service, watches
from the list's resourceVersion, relists on `410 Gone` and every `resync_seconds`, and backs off
exponentially while the API is unreachable. Meanwhile the cache keeps answering with what it has and
`age()` says how long it has been out of touch.

The cache keeps per Service only what an answer needs: its ClusterIP and ports (a Service object's other
fields, its labels, selector and metadata, are dropped as it is read), with namespace names interned and
identical port lists shared, about 250 bytes a Service; a Service without a usable address keeps only why.
`after_list` (optional) is called on the cache thread after every complete list, e.g. to settle the heap
(`kube.heap`).

`subscribe(callback)` tells a caller when an answer changes: the cache thread calls it with
`(ref, old_address, new_address)` (None = no usable address) for every watch event and every difference a
relist finds. Callbacks run on the cache thread, after the cache is updated, so they must be quick (hand the
change over, e.g. with `loop.call_soon_threadsafe`); one that raises is logged and the watch goes on.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kubernetes import client

from kube.addresses import address_of, ref_of
from kube.client import KubeConfigError as KubeConfigError
from kube.client import build_api_client
from kube.informer import Change, Informer, InformerLog, InformerSettings
from kube.settings import KubeSettings
from policies import ServiceAddress, ServiceLookupError, ServiceNotFound, ServiceRef, ServiceUnknown
from policies.resolver import ServicePort

logger = logging.getLogger(__name__)

LIST_PAGE_SIZE = 500
SHAPES_LIMIT: Final = 4096
"""Distinct port lists shared at most; beyond that the table starts again (sharing is only a saving)."""


@dataclass(frozen=True, slots=True)
class NoAddress:
    """A Service the cache holds that has no usable address (headless, ExternalName): why, and the error
    a lookup raises (a new one each time)."""

    error: type[ServiceLookupError]
    reason: str


Entry = ServiceAddress | NoAddress
ChangeCallback = Callable[[ServiceRef, ServiceAddress | None, ServiceAddress | None], None]
"""Called as `(ref, old_address, new_address)`; None = the Service has no usable address (absent,
headless, ExternalName)."""


def build_core_api(*, kubeconfig: Path | None, context: str | None) -> Any:
    """A `CoreV1Api` on a client from `kube.client.build_api_client` (kubeconfig None = the rest of its
    order: in-cluster, `KUBECONFIG`, `~/.kube/config`)."""
    return client.CoreV1Api(build_api_client(kubeconfig=kubeconfig, context=context))


class ServiceDecoder:
    """A Service object (plain JSON) -> `(ref, entry)` as the cache keeps it: the ClusterIP and ports, or
    why there is no usable address. Namespace names are interned and identical port lists shared between
    Services (up to `SHAPES_LIMIT` distinct ones), since most Services of a cluster have the same few.
    Called on the cache's thread only."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[ServicePort, ...], tuple[tuple[int, ...], tuple[ServicePort, ...]]] = {}

    def __call__(self, service: Mapping[str, Any]) -> tuple[ServiceRef, Entry] | None:
        ref = ref_of(service)
        if ref is None:
            return None
        ref = ServiceRef(sys.intern(ref.namespace), ref.name)
        address = address_of(ref, service)
        if isinstance(address, ServiceLookupError):
            return ref, NoAddress(type(address), address.reason)
        shape = self._shapes.get(address.port_specs)
        if shape is None:
            if len(self._shapes) >= SHAPES_LIMIT:
                self._shapes.clear()
            specs = tuple(
                ServicePort(p.port, sys.intern(p.name), sys.intern(p.app_protocol))
                for p in address.port_specs
            )
            shape = self._shapes[specs] = (tuple(p.port for p in specs), specs)
        return ref, ServiceAddress(address.cluster_ip, shape[0], shape[1])


class ServiceCache:
    """Every Service's ClusterIP, kept current by list + watch; implements `ServiceResolver`.

    `lookup` raises `ServiceUnknown` before the first list completes and `ServiceNotFound` for a Service
    that a synced cache does not hold, or that is headless / ExternalName.
    """

    def __init__(
        self,
        api: Any,
        settings: KubeSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        after_list: Callable[[], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._after_list = after_list
        self._synced = threading.Event()
        self._generation = 0
        self._subscribers: dict[int, ChangeCallback] = {}
        self._next_subscriber = 0
        self._informer: Informer[ServiceRef, Entry] = Informer(
            name="service-cache",
            call=api.list_service_for_all_namespaces,
            decode=ServiceDecoder(),
            on_listed=self._replace,
            on_event=self._apply,
            settings=InformerSettings(
                watch_timeout_seconds=settings.watch_timeout_seconds,
                backoff_initial_seconds=settings.backoff_initial_seconds,
                backoff_max_seconds=settings.backoff_max_seconds,
                resync_seconds=settings.resync_seconds,
                page_size=LIST_PAGE_SIZE,
            ),
            log=InformerLog(
                logger=logger,
                watch_expired="service watch expired (410 Gone), listing again",
                list_expired="service list expired (410 Gone), listing again",
                retrying="service cache: %s; retrying in %.1fs",
            ),
            clock=clock,
        )

    # -- change notifications (any thread) -----------------------------------------------------------
    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback(ref, old, new)` whenever a Service's usable address changes; returns a function
        that unsubscribes (idempotent). Callbacks run on the cache thread."""
        with self._lock:
            token = self._next_subscriber
            self._next_subscriber += 1
            self._subscribers[token] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(token, None)

        return unsubscribe

    def _notify(
        self, changes: Iterable[tuple[ServiceRef, ServiceAddress | None, ServiceAddress | None]]
    ) -> None:
        with self._lock:
            callbacks = list(self._subscribers.values())
        if not callbacks:
            return
        for ref, old, new in changes:
            for callback in callbacks:
                try:
                    callback(ref, old, new)
                except Exception:
                    logger.exception("service cache subscriber failed on a change of %s", ref)

    # -- the resolver side (any thread) --------------------------------------------------------------
    def lookup(self, ref: ServiceRef) -> ServiceAddress:
        if not self._synced.is_set():
            raise ServiceUnknown(ref, "the Service cache has not synced with the Kubernetes API yet")
        entry = self._informer.get(ref)
        if entry is None:
            raise ServiceNotFound(ref, "does not exist in the cluster")
        if isinstance(entry, NoAddress):
            raise entry.error(ref, entry.reason)
        return entry

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @property
    def generation(self) -> int:
        """Moves whenever an answer may have changed (a list, an event), so callers can memoize lookups."""
        return self._generation

    def size(self) -> int:
        return self._informer.size()

    def age(self) -> float | None:
        """Seconds out of touch with the API: 0 while a watch is open, None before the first list."""
        return self._informer.age()

    @property
    def last_error(self) -> str:
        return self._informer.last_error

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._informer.running:
            raise RuntimeError("the Service cache is already running")
        self._informer.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread: interrupt an open watch and wait for it (bounded)."""
        if not self._informer.stop(timeout):
            logger.warning("service cache thread did not stop within %.1fs", timeout)

    # -- what the informer reports (its thread) ------------------------------------------------------
    def _replace(
        self, services: Mapping[ServiceRef, Entry], changes: Sequence[Change[ServiceRef, Entry]], version: str
    ) -> None:
        with self._lock:
            self._generation += 1
        if self._after_list is not None:
            self._after_list()
        self._synced.set()
        logger.info("service cache listed services=%d resource_version=%s", len(services), version)
        self._notify(moved for change in changes if (moved := _address_change(change)) is not None)

    def _apply(self, change: Change[ServiceRef, Entry], version: str) -> None:
        with self._lock:
            self._generation += 1
        logger.debug("service %s %s resource_version=%s", change.kind, change.key, version)
        moved = _address_change(change)
        if moved is not None:
            self._notify([moved])


def _address_change(
    change: Change[ServiceRef, Entry],
) -> tuple[ServiceRef, ServiceAddress | None, ServiceAddress | None] | None:
    """A relist's or a watch event's change as `(ref, old, new)` usable addresses, or None when the answer
    stays the same. `change.old` is what the cache held: the informer's map and the cache's move together."""
    before = _usable(change.old)
    after = None if change.kind == "DELETED" else _usable(change.value)
    return None if before == after else (change.key, before, after)


def _usable(entry: Entry | None) -> ServiceAddress | None:
    return entry if isinstance(entry, ServiceAddress) else None
