"""An informer-style cache of Services: list, then watch, in a thread; answers the engine's ServiceResolver.

Reviews never wait on the Kubernetes API: `lookup` reads the cache. One thread (a `kube.informer.Informer`)
lists every Service, watches
from the list's resourceVersion, relists on `410 Gone` and every `resync_seconds`, and backs off
exponentially while the API is unreachable. Meanwhile the cache keeps answering with what it has and
`age()` says how long it has been out of touch.

`subscribe(callback)` tells a caller when an answer changes: the cache thread calls it with
`(ref, old_address, new_address)` (None = no usable address) for every watch event and every difference a
relist finds. Callbacks run on the cache thread, after the cache is updated, so they must be quick (hand the
change over, e.g. with `loop.call_soon_threadsafe`); one that raises is logged and the watch goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client

from kube.addresses import address_of, ref_of
from kube.client import KubeConfigError as KubeConfigError
from kube.client import build_api_client
from kube.informer import Change, Informer, InformerLog, InformerSettings
from kube.settings import KubeSettings
from policies import ServiceAddress, ServiceLookupError, ServiceNotFound, ServiceRef, ServiceUnknown

logger = logging.getLogger(__name__)

LIST_PAGE_SIZE = 500


Entry = ServiceAddress | ServiceLookupError
ChangeCallback = Callable[[ServiceRef, ServiceAddress | None, ServiceAddress | None], None]
"""Called as `(ref, old_address, new_address)`; None = the Service has no usable address (absent,
headless, ExternalName)."""


def build_core_api(*, kubeconfig: Path | None, context: str | None) -> Any:
    """A `CoreV1Api` on a client from `kube.client.build_api_client` (kubeconfig None = the rest of its
    order: in-cluster, `KUBECONFIG`, `~/.kube/config`)."""
    return client.CoreV1Api(build_api_client(kubeconfig=kubeconfig, context=context))


class ServiceCache:
    """Every Service's ClusterIP, kept current by list + watch; implements `ServiceResolver`.

    `lookup` raises `ServiceUnknown` before the first list completes and `ServiceNotFound` for a Service
    that a synced cache does not hold, or that is headless / ExternalName.
    """

    def __init__(
        self, api: Any, settings: KubeSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._services: dict[ServiceRef, Entry] = {}
        self._synced = threading.Event()
        self._generation = 0
        self._subscribers: dict[int, ChangeCallback] = {}
        self._next_subscriber = 0
        self._informer: Informer[ServiceRef, Entry] = Informer(
            name="service-cache",
            call=api.list_service_for_all_namespaces,
            decode=_decode_service,
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

    def _notify(self, changes: list[tuple[ServiceRef, ServiceAddress | None, ServiceAddress | None]]) -> None:
        if not changes:
            return
        with self._lock:
            callbacks = list(self._subscribers.values())
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
        with self._lock:
            entry = self._services.get(ref)
        if entry is None:
            raise ServiceNotFound(ref, "does not exist in the cluster")
        if isinstance(entry, ServiceLookupError):
            raise entry
        return entry

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @property
    def generation(self) -> int:
        """Moves whenever an answer may have changed (a list, an event), so callers can memoize lookups."""
        return self._generation

    def size(self) -> int:
        with self._lock:
            return len(self._services)

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
            self._services = dict(services)
            self._generation += 1
        self._synced.set()
        logger.info("service cache listed services=%d resource_version=%s", len(services), version)
        self._notify([moved for change in changes if (moved := _address_change(change)) is not None])

    def _apply(self, change: Change[ServiceRef, Entry], version: str) -> None:
        with self._lock:
            if change.kind == "DELETED":
                self._services.pop(change.key, None)
            else:
                self._services[change.key] = change.value
            self._generation += 1
        logger.debug("service %s %s resource_version=%s", change.kind, change.key, version)
        moved = _address_change(change)
        if moved is not None:
            self._notify([moved])


def _decode_service(service: Mapping[str, Any]) -> tuple[ServiceRef, Entry] | None:
    ref = ref_of(service)
    return None if ref is None else (ref, address_of(ref, service))


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
