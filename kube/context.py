"""The live context of a filter: informer caches of EnvoyFilters, DestinationRules and InferencePools.

The webhook and the reconciler judge an EnvoyFilter against the other EnvoyFilters of its workload (its
namespace and Istio's root namespace), the DestinationRules and the InferencePools of the cluster. One
`kube.informer.Informer` per collection keeps them current (list, then watch; relist on 410 and on a
schedule); `context_for(namespace)` answers from memory and never waits on the API.

Cached objects keep only what the rules read: an EnvoyFilter as its name, namespace, extproc-guard
annotations and the patches that can matter to an ext_proc path (none at all for the many that cannot),
packed (compressed compact JSON, about a fiftieth of the decoded size) and unpacked only into a
namespace's context; a DestinationRule as its host and TLS modes; an InferencePool as its picker Service.
Objects are indexed by namespace, and a namespace's context is memoized until that namespace (or the root
namespace, or a rule or pool) changes, so a write elsewhere in the cluster costs it nothing. A collection
whose CRD is not served (no GIE installed, an Istio without v1 InferencePools) is skipped with one log line
and counts as synced and empty. `after_list` (optional) is called on a cache thread after every complete
list, e.g. to settle the heap (`kube.heap`).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from kube.informer import Change, Informer, InformerLog, InformerSettings, ObjectKey, object_key
from kube.settings import KubeSettings
from policies import Context, ServiceAddress, ServiceRef
from policies.context import DestinationTls, InferencePool, read_destination_rule, read_inference_pool
from policies.workload import context_view

logger = logging.getLogger(__name__)

PAGE_SIZE: Final = 100
PROBE_TIMEOUT_SECONDS: Final = 10.0
CONTEXT_MEMO_SIZE: Final = 16
PACK_LEVEL: Final = 6

Stamp = tuple[int, int, int, tuple[int, ...]]


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


# What context views are made of: the patch structure, ext_proc, cluster and route vocabulary. Compressing
# with it as zlib's preset dictionary packs a view to about a quarter of what zlib alone makes of it
# (views are small: zlib has little of their own text to refer back to).
PACK_DICTIONARY: Final = "".join(
    (
        '{"apiVersion":"networking.istio.io/v1alpha3","kind":"EnvoyFilter","metadata":{"name":"","namespace":"",',
        '"annotations":{"extproc-guard.io/role":"epp","extproc-guard.io/epp-service":""}},"spec":{"configPatches":[',
        '{"applyTo":"HTTP_FILTER","match":{"context":"GATEWAY","listener":{"filterChain":{"filter":{"name":',
        '"envoy.filters.network.http_connection_manager","subFilter":{"name":"envoy.filters.http.router"}}}}},',
        '"patch":{"operation":"INSERT_BEFORE","value":{"name":"envoy.filters.http.ext_proc","typed_config":{',
        '"@type":"type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",',
        '"grpc_service":{"envoy_grpc":{"cluster_name":"outbound|9002||"},"timeout":"10s"},',
        '"failure_mode_allow":false,"message_timeout":"5s","allow_mode_override":true,"processing_mode":{',
        '"request_header_mode":"SEND","request_body_mode":"FULL_DUPLEX_STREAMED","response_header_mode":"SKIP",',
        '"response_body_mode":"NONE","request_trailer_mode":"SKIP","response_trailer_mode":"SEND"}}}}},',
        '{"applyTo":"CLUSTER","match":{"context":"GATEWAY"},"patch":{"operation":"ADD","value":{"name":"",',
        '"type":"STATIC","connect_timeout":"5s","lb_policy":"ROUND_ROBIN","typed_extension_protocol_options":{',
        '"envoy.extensions.upstreams.http.v3.HttpProtocolOptions":{',
        '"@type":"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",',
        '"explicit_http_config":{"http2_protocol_options":{}}}},"transport_socket":{"name":"envoy.transport_sockets.tls",',
        '"typed_config":{"@type":"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}},',
        '"load_assignment":{"cluster_name":"","endpoints":[{"lb_endpoints":[{"endpoint":{"address":{',
        '"socket_address":{"address":".svc.cluster.local","port_value":9002}}}}]}]}}}},',
        '{"applyTo":"HTTP_ROUTE","match":{"context":"GATEWAY"},"patch":{"operation":"MERGE","value":{',
        '"typed_per_filter_config":{"envoy.filters.http.ext_proc":{',
        '"@type":"type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",',
        '"overrides":{"processing_mode":{"request_header_mode":"SEND","request_body_mode":"NONE"}}}}}}}]}}',
    )
).encode()
PACK_WINDOW_BITS: Final = 12
"""4 KiB: a view and the dictionary fit, and each packing costs kilobytes of zlib state, not 256."""


@dataclass(frozen=True, slots=True)
class PackedView:
    """An EnvoyFilter's context view (`policies.workload.context_view`) as compressed compact JSON.

    A decoded view of an EPP filter takes about 7 KB of dicts and strings; packed it takes about 150 bytes.
    Views are unpacked only when a namespace's context is built, which is memoized per namespace."""

    namespace: str
    name: str
    data: bytes

    def unpack(self) -> dict[str, Any]:
        inflate = zlib.decompressobj(PACK_WINDOW_BITS, zdict=PACK_DICTIONARY)
        view: dict[str, Any] = json.loads(inflate.decompress(self.data) + inflate.flush())
        return view


def pack_view(namespace: str, name: str, view: Mapping[str, Any]) -> PackedView:
    text = json.dumps(view, separators=(",", ":"), ensure_ascii=False).encode()
    deflate = zlib.compressobj(PACK_LEVEL, zlib.DEFLATED, PACK_WINDOW_BITS, 5, zdict=PACK_DICTIONARY)
    return PackedView(sys.intern(namespace), name, deflate.compress(text) + deflate.flush())


def decode_envoy_filter(filter_name: str, document: Mapping[str, Any]) -> tuple[ObjectKey, PackedView] | None:
    """An EnvoyFilter as the context keeps it: its context view, packed; None (not cached) for one that
    cannot matter to an ext_proc path."""
    key = object_key(document)
    view = context_view(document, filter_name) if key is not None else None
    if key is None or view is None:
        return None
    namespace = sys.intern(key[0])
    return (namespace, key[1]), pack_view(namespace, key[1], view)


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
    """One collection's objects, indexed by namespace; replaced on a list and updated per watch event.

    Writers are the collection's informer thread; readers (any thread) take `values()` or `namespace()`,
    which are never modified after they are handed out (an update replaces the namespace's map).
    `stamp(namespace)` moves whenever that namespace's objects change, `generation` on every change."""

    def __init__(self, on_change: Callable[[], None], after_list: Callable[[], None] | None = None) -> None:
        self.synced = threading.Event()
        self.generation = 0
        self._on_change = on_change
        self._after_list = after_list
        self._lock = threading.Lock()
        self._by_namespace: dict[str, dict[str, Any]] = {}
        self._stamps: dict[str, int] = {}
        self._values: tuple[Any, ...] | None = ()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(items) for items in self._by_namespace.values())

    def namespace(self, namespace: str) -> Mapping[str, Any]:
        """The objects of one namespace, by name (do not modify)."""
        with self._lock:
            return self._by_namespace.get(namespace, _EMPTY)

    def stamp(self, namespace: str) -> int:
        with self._lock:
            return self._stamps.get(namespace, 0)

    def values(self) -> tuple[Any, ...]:
        """Every object, in namespace/name order (built once per change)."""
        with self._lock:
            values = self._values
            if values is None:
                values = self._values = tuple(
                    value
                    for namespace in sorted(self._by_namespace)
                    for _, value in sorted(self._by_namespace[namespace].items())
                )
            return values

    def replace(
        self, items: Mapping[ObjectKey, Any], changes: Sequence[Change[ObjectKey, Any]], version: str
    ) -> None:
        grouped: dict[str, dict[str, Any]] = {}
        for (namespace, name), value in items.items():
            grouped.setdefault(sys.intern(namespace), {})[name] = value
        with self._lock:
            self._by_namespace = grouped
            for namespace in {change.key[0] for change in changes}:
                self._stamps[namespace] = self._stamps.get(namespace, 0) + 1
            self._values = None
            self.generation += 1
        if self._after_list is not None:
            self._after_list()
        self.synced.set()
        self._on_change()

    def apply(self, change: Change[ObjectKey, Any], version: str) -> None:
        namespace, name = change.key
        with self._lock:
            items = dict(self._by_namespace.get(namespace, _EMPTY))
            if change.kind == "DELETED":
                items.pop(name, None)
            else:
                items[name] = change.value
            if items:
                self._by_namespace[sys.intern(namespace)] = items
            else:
                self._by_namespace.pop(namespace, None)
            self._stamps[namespace] = self._stamps.get(namespace, 0) + 1
            self._values = None
            self.generation += 1
        self._on_change()


def custom_objects_api(core_api: Any) -> Any:
    """A `CustomObjectsApi` on the same API client (and so the same connection pool) as `core_api`."""
    from kubernetes import client

    return client.CustomObjectsApi(core_api.api_client)


_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


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
        after_list: Callable[[], None] | None = None,
        memo_size: int = CONTEXT_MEMO_SIZE,
    ) -> None:
        self._api = custom_api
        self._filter_name = filter_name
        self._settings = settings
        self._root = root_namespace
        self._domain = cluster_domain
        self._declared = dict(declared or {})
        self._settled = settled
        self._clock = clock
        self._after_list = after_list
        self._memo_size = memo_size
        self._generation = 0
        self._lock = threading.Lock()
        self._contexts: OrderedDict[str, tuple[Stamp, Context]] = OrderedDict()
        self._filters = _Store(self._changed, after_list)
        self._rules = _Store(self._changed, after_list)
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
        return len(self._filters) + len(self._rules) + sum(len(p) for p in self._pools)

    @property
    def skipped(self) -> tuple[str, ...]:
        """Collections not served by this cluster (their CRD is not installed)."""
        return tuple(self._skipped)

    def context_for(self, namespace: str) -> Context:
        """The context of a filter in `namespace`: the EnvoyFilters of that namespace and the root namespace
        (unpacked), every DestinationRule and InferencePool. One snapshot per namespace, rebuilt only when
        one of those changed, so the engine's indexes are built once between changes; the most recently
        used `memo_size` namespaces are remembered."""
        stamp = self._stamp(namespace)
        with self._lock:
            cached = self._contexts.get(namespace)
            if cached is not None and cached[0] == stamp:
                self._contexts.move_to_end(namespace)
                return cached[1]
        views = dict(self._filters.namespace(namespace))
        root = {} if namespace == self._root else self._filters.namespace(self._root)
        packed = sorted(
            [*((namespace, name, view) for name, view in views.items()),
             *((self._root, name, view) for name, view in root.items())],
            key=lambda item: (item[0], item[1]),
        )  # fmt: skip
        context = Context(
            envoy_filters=tuple(view.unpack() for _, _, view in packed),
            inference_pools=tuple(pool for store in self._pools for pool in store.values()),
            destination_rules=self._rules.values(),
            declared=self._declared,
            root_namespace=self._root,
            cluster_domain=self._domain,
            settled=self._settled,
        )
        with self._lock:
            self._contexts[namespace] = (stamp, context)
            self._contexts.move_to_end(namespace)
            while len(self._contexts) > self._memo_size:
                self._contexts.popitem(last=False)
        return context

    def envoy_filters(self) -> dict[ObjectKey, dict[str, Any]]:
        """The cached EnvoyFilters (their context views, unpacked), by namespace/name."""
        return {(view.namespace, view.name): view.unpack() for view in self._filters.values()}

    def _stamp(self, namespace: str) -> Stamp:
        """What a namespace's context depends on: its filters, the root namespace's, the rules and pools."""
        return (
            self._filters.stamp(namespace),
            self._filters.stamp(self._root),
            self._rules.generation,
            tuple(store.generation for store in self._pools),
        )

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start one informer per collection; collections whose CRD is not served are skipped (probed with
        one bounded request each)."""
        if self._informers:
            raise RuntimeError("the context cache is already running")
        self._start(ENVOY_FILTERS, functools.partial(decode_envoy_filter, self._filter_name), self._filters)
        self._start(DESTINATION_RULES, _decode_rule, self._rules)
        for collection in INFERENCE_POOLS:
            store = _Store(self._changed, self._after_list)
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
