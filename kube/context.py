"""The live context of a filter: informer caches of EnvoyFilters, DestinationRules and InferencePools.

The webhook and the reconciler judge an EnvoyFilter against the other EnvoyFilters of its workload (its
namespace and Istio's root namespace), the DestinationRules and the InferencePools of the cluster. One
`kube.informer.Informer` per collection keeps them current (list, then watch; relist on 410 and on a
schedule); `context_for(namespace)` answers from memory and never waits on the API.

Cached objects keep only what the rules read: an EnvoyFilter as its name, namespace, extproc-guard
annotations and the patches that can matter to an ext_proc path (none at all for the many that cannot);
a DestinationRule as its host and TLS modes; an InferencePool as its picker Service. A collection whose
CRD is not served (no GIE installed, an Istio without v1 InferencePools) is skipped with one log line and
counts as synced and empty.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kube.informer import Change, Informer, InformerLog, InformerSettings, ObjectKey, object_key
from kube.settings import KubeSettings
from policies import Context, ServiceAddress, ServiceRef
from policies.context import DestinationTls, InferencePool, read_destination_rule, read_inference_pool
from policies.workload import context_view

logger = logging.getLogger(__name__)

PAGE_SIZE: Final = 500
PROBE_TIMEOUT_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class Collection:
    """One custom resource collection the context reads."""

    group: str
    version: str
    plural: str

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}/{self.version}"


ENVOY_FILTERS: Final = Collection("networking.istio.io", "v1alpha3", "envoyfilters")
DESTINATION_RULES: Final = Collection("networking.istio.io", "v1alpha3", "destinationrules")
INFERENCE_POOLS: Final = (
    Collection("inference.networking.k8s.io", "v1", "inferencepools"),
    Collection("inference.networking.x-k8s.io", "v1alpha2", "inferencepools"),
)


def _decode_filter(filter_name: str, document: Mapping[str, Any]) -> tuple[ObjectKey, dict[str, Any]] | None:
    """An EnvoyFilter as the context keeps it (`policies.workload.context_view`); None (not cached) for one
    that cannot matter to an ext_proc path."""
    key = object_key(document)
    view = context_view(document, filter_name) if key is not None else None
    return None if key is None or view is None else (key, view)


def _decode_rule(document: Mapping[str, Any]) -> tuple[ObjectKey, DestinationTls] | None:
    key = object_key(document)
    typed = {
        "apiVersion": f"{DESTINATION_RULES.group}/{DESTINATION_RULES.version}",
        "kind": "DestinationRule",
    }
    rule = read_destination_rule({**typed, **document})
    return None if key is None or rule is None else (key, rule)


def _decode_pool(api_version: str, document: Mapping[str, Any]) -> tuple[ObjectKey, InferencePool] | None:
    key = object_key(document)
    pool = read_inference_pool({"apiVersion": api_version, "kind": "InferencePool", **document})
    return None if key is None or pool is None else (key, pool)


class _Store:
    """One collection's objects, replaced on a list and updated per watch event (any thread)."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.items: dict[ObjectKey, Any] = {}
        self.synced = threading.Event()
        self._on_change = on_change
        self._lock = threading.Lock()

    def replace(
        self, items: Mapping[ObjectKey, Any], changes: Sequence[Change[ObjectKey, Any]], version: str
    ) -> None:
        with self._lock:
            self.items = dict(items)
        self.synced.set()
        self._on_change()

    def apply(self, change: Change[ObjectKey, Any], version: str) -> None:
        with self._lock:
            items = dict(self.items)
            if change.kind == "DELETED":
                items.pop(change.key, None)
            else:
                items[change.key] = change.value
            self.items = items
        self._on_change()


def custom_objects_api(core_api: Any) -> Any:
    """A `CustomObjectsApi` on the same API client (and so the same connection pool) as `core_api`."""
    from kubernetes import client

    return client.CustomObjectsApi(core_api.api_client)


class ContextCache:
    """Informer caches that answer the engine's `ContextSource`: `context_for(namespace)` and `generation`.

    `declared` are Services given explicitly (`serve --service`); `settled` False at admission (a cluster may
    arrive with the next object of the same apply), True for the reconciler.
    """

    def __init__(
        self,
        custom_api: Any,
        settings: KubeSettings,
        *,
        root_namespace: str,
        cluster_domain: str,
        declared: Mapping[ServiceRef, ServiceAddress] | None = None,
        settled: bool,
        filter_name: str = "envoy.filters.http.ext_proc",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = custom_api
        self._filter_name = filter_name
        self._settings = settings
        self._root = root_namespace
        self._domain = cluster_domain
        self._declared = dict(declared or {})
        self._settled = settled
        self._clock = clock
        self._generation = 0
        self._lock = threading.Lock()
        self._contexts: dict[str, tuple[int, Context]] = {}
        self._filters = _Store(self._changed)
        self._rules = _Store(self._changed)
        self._pools: list[_Store] = []
        self._informers: list[Informer[ObjectKey, Any]] = []
        self._skipped: list[str] = []

    # -- the engine's side (any thread) -------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self._generation

    @property
    def synced(self) -> bool:
        stores = [self._filters, self._rules, *self._pools]
        return all(store.synced.is_set() for store in stores)

    def wait_synced(self, timeout: float) -> bool:
        deadline = self._clock() + timeout
        for store in [self._filters, self._rules, *self._pools]:
            if not store.synced.wait(max(0.0, deadline - self._clock())):
                return False
        return True

    def size(self) -> int:
        return len(self._filters.items) + len(self._rules.items) + sum(len(p.items) for p in self._pools)

    @property
    def skipped(self) -> tuple[str, ...]:
        """Collections not served by this cluster (their CRD is not installed)."""
        return tuple(self._skipped)

    def context_for(self, namespace: str) -> Context:
        """The context of a filter in `namespace`; one snapshot per namespace and generation, so the
        engine's indexes are built once between changes."""
        generation = self._generation
        with self._lock:
            cached = self._contexts.get(namespace)
            if cached is not None and cached[0] == generation:
                return cached[1]
        filters = self._filters.items
        wanted = {namespace, self._root}
        context = Context(
            envoy_filters=tuple(doc for (ns, _), doc in sorted(filters.items()) if ns in wanted),
            inference_pools=tuple(pool for store in self._pools for pool in store.items.values()),
            destination_rules=tuple(self._rules.items.values()),
            declared=self._declared,
            root_namespace=self._root,
            cluster_domain=self._domain,
            settled=self._settled,
        )
        with self._lock:
            if len(self._contexts) > 4096:
                self._contexts.clear()
            self._contexts[namespace] = (generation, context)
        return context

    def envoy_filters(self) -> dict[ObjectKey, dict[str, Any]]:
        """The cached EnvoyFilters (slimmed), by namespace/name."""
        return dict(self._filters.items)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start one informer per collection; collections whose CRD is not served are skipped (probed with
        one bounded request each)."""
        if self._informers:
            raise RuntimeError("the context cache is already running")
        self._start(ENVOY_FILTERS, functools.partial(_decode_filter, self._filter_name), self._filters)
        self._start(DESTINATION_RULES, _decode_rule, self._rules)
        for collection in INFERENCE_POOLS:
            store = _Store(self._changed)
            decode = functools.partial(_decode_pool, f"{collection.group}/{collection.version}")
            if self._start(collection, decode, store):
                self._pools.append(store)

    def stop(self, timeout: float = 5.0) -> None:
        deadline = self._clock() + timeout
        for informer in self._informers:
            if not informer.stop(max(0.1, deadline - self._clock())):
                logger.warning("context cache thread did not stop within %.1fs", timeout)

    def _start(
        self, collection: Collection, decode: Callable[[Mapping[str, Any]], Any], store: _Store
    ) -> bool:
        call = functools.partial(
            self._api.list_cluster_custom_object, collection.group, collection.version, collection.plural
        )
        if not self._served(collection, call):
            store.synced.set()
            self._skipped.append(str(collection))
            return False
        informer: Informer[ObjectKey, Any] = Informer(
            name=f"context-{collection.plural}-{collection.version}",
            call=call,
            decode=decode,
            on_listed=store.replace,
            on_event=store.apply,
            settings=InformerSettings(
                watch_timeout_seconds=self._settings.watch_timeout_seconds,
                backoff_initial_seconds=self._settings.backoff_initial_seconds,
                backoff_max_seconds=self._settings.backoff_max_seconds,
                resync_seconds=self._settings.resync_seconds,
                page_size=PAGE_SIZE,
            ),
            log=InformerLog(
                logger=logger,
                watch_expired=f"{collection} watch expired (410 Gone), listing again",
                list_expired=f"{collection} list expired (410 Gone), listing again",
                retrying=f"context cache ({collection}): %s; retrying in %.1fs",
            ),
            clock=self._clock,
        )
        informer.start()
        self._informers.append(informer)
        return True

    @staticmethod
    def _served(collection: Collection, call: Callable[..., Any]) -> bool:
        """False only when the API says the collection does not exist (404); anything else is left to the
        informer, which retries."""
        try:
            call(limit=1, _request_timeout=PROBE_TIMEOUT_SECONDS)
        except Exception as error:
            if getattr(error, "status", None) == 404:
                logger.info("context cache: %s is not served by this cluster; skipping it", collection)
                return False
        return True

    def _changed(self) -> None:
        with self._lock:
            self._generation += 1
