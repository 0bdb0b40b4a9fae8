"""An informer-style cache of Services: list, then watch, in a thread; answers the engine's ServiceResolver.

Reviews never wait on the Kubernetes API: `lookup` reads the cache. One thread lists every Service, watches
from the list's resourceVersion, relists on `410 Gone` and every `resync_seconds`, and backs off
exponentially while the API is unreachable. Meanwhile the cache keeps answering with what it has and
`age()` says how long it has been out of touch.

`subscribe(callback)` tells a caller when an answer changes: the cache thread calls it with
`(ref, old_address, new_address)` (None = no usable address) for every watch event and every difference a
relist finds. Callbacks run on the cache thread, after the cache is updated, so they must be quick (hand the
change over, e.g. with `loop.call_soon_threadsafe`); one that raises is logged and the watch goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from policies.resolver import ServiceAddress, ServiceLookupError, ServiceNotFound, ServiceRef, ServiceUnknown
from webhook.settings import KubeSettings

logger = logging.getLogger(__name__)

LIST_PAGE_SIZE = 500
CONNECT_TIMEOUT_SECONDS = 10.0
READ_GRACE_SECONDS = 30.0


Entry = ServiceAddress | ServiceLookupError
ChangeCallback = Callable[[ServiceRef, ServiceAddress | None, ServiceAddress | None], None]
"""Called as `(ref, old_address, new_address)`; None = the Service has no usable address (absent,
headless, ExternalName)."""


class KubeConfigError(Exception):
    """The kubeconfig or in-cluster configuration cannot be used; one plain line."""


class WatchExpiredError(Exception):
    """The apiserver answered 410 Gone: the resourceVersion is too old, list again."""


class WatchEventError(Exception):
    """The watch stream carried an ERROR event other than 410."""


def build_core_api(*, kubeconfig: Path | None, context: str | None) -> Any:
    """A `CoreV1Api` on its own client (kubeconfig None = the pod's in-cluster service account)."""
    try:
        if kubeconfig is None:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            api_client = client.ApiClient(configuration)
        else:
            if not kubeconfig.is_file():
                raise KubeConfigError(f"{kubeconfig}: kubeconfig file not found")
            api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), context=context, persist_config=False
            )
    except (ConfigException, OSError, ValueError, TypeError) as error:
        where = str(kubeconfig) if kubeconfig is not None else "in-cluster config"
        raise KubeConfigError(f"{where}: cannot use it: {' '.join(str(error).split())}") from None
    return client.CoreV1Api(api_client)


def address_from_service(ref: ServiceRef, service: Mapping[str, Any]) -> ServiceAddress | ServiceLookupError:
    """A Service object (plain JSON) -> its ClusterIP and ports, or why a STATIC cluster cannot use it."""
    spec = service.get("spec")
    if not isinstance(spec, Mapping):
        return ServiceNotFound(ref, "has no spec")
    if spec.get("type") == "ExternalName":
        return ServiceNotFound(ref, "is an ExternalName Service (no ClusterIP to pin)")
    cluster_ip = spec.get("clusterIP")
    if not cluster_ip or cluster_ip == "None":
        return ServiceNotFound(ref, "is headless (no ClusterIP), so no STATIC address can point at it")
    ports = tuple(
        int(port["port"])
        for port in spec.get("ports") or ()
        if isinstance(port, Mapping) and isinstance(port.get("port"), int)
    )
    return ServiceAddress(cluster_ip=str(cluster_ip), ports=ports)


def ref_of(service: Mapping[str, Any]) -> ServiceRef | None:
    metadata = service.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str):
        return None
    return ServiceRef(namespace, name)


def _resource_version(document: Mapping[str, Any]) -> str | None:
    metadata = document.get("metadata")
    if isinstance(metadata, Mapping):
        version = metadata.get("resourceVersion")
        if isinstance(version, str) and version:
            return version
    return None


def iter_lines(response: Any) -> Iterator[bytes]:
    """Split a streamed watch response into JSON lines."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        while True:
            line, newline, rest = buffer.partition(b"\n")
            if not newline:
                break
            buffer = rest
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


class ServiceCache:
    """Every Service's ClusterIP, kept current by list + watch; implements `ServiceResolver`.

    `lookup` raises `ServiceUnknown` before the first list completes and `ServiceNotFound` for a Service
    that a synced cache does not hold, or that is headless / ExternalName.
    """

    def __init__(
        self, api: Any, settings: KubeSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._api = api
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._services: dict[ServiceRef, Entry] = {}
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._last_contact: float | None = None
        self._watching = False
        self._last_error = ""
        self._response: Any = None
        self._version: str | None = None
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._subscribers: dict[int, ChangeCallback] = {}
        self._next_subscriber = 0

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
        with self._lock:
            if self._last_contact is None:
                return None
            if self._watching:
                return 0.0
            return max(0.0, self._clock() - self._last_contact)

    @property
    def last_error(self) -> str:
        with self._lock:
            return self._last_error

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the Service cache is already running")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="service-cache", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread: interrupt an open watch and wait for it (bounded)."""
        self._stopping.set()
        interrupt_stream(self._response)
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("service cache thread did not stop within %.1fs", timeout)

    # -- the informer loop (its own thread) ----------------------------------------------------------
    def _run(self) -> None:
        settings = self._settings
        backoff = settings.backoff_initial_seconds
        resync_at = 0.0
        self._version = None
        while not self._stopping.is_set():
            try:
                if self._version is None or self._clock() >= resync_at:
                    self._version = self._list()
                    resync_at = self._clock() + settings.resync_seconds
                    backoff = settings.backoff_initial_seconds
                remaining = max(1, int(resync_at - self._clock()))
                self._watch(self._version, timeout_seconds=min(settings.watch_timeout_seconds, remaining))
                backoff = settings.backoff_initial_seconds
            except WatchExpiredError:
                logger.info("service watch expired (410 Gone), listing again")
                self._version = None
            except Exception as error:
                if self._stopping.is_set():
                    break
                if getattr(error, "status", None) == 410:
                    logger.info("service list expired (410 Gone), listing again")
                    self._version = None
                    continue
                reason = _describe(error)
                with self._lock:
                    self._watching = False
                    self._last_error = reason
                logger.warning("service cache: %s; retrying in %.1fs", reason, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, settings.backoff_max_seconds)
        with self._lock:
            self._watching = False

    def _request_timeout(self, seconds: float) -> tuple[float, float]:
        return (CONNECT_TIMEOUT_SECONDS, seconds)

    def _list(self) -> str:
        services: dict[ServiceRef, Entry] = {}
        token: str | None = None
        version: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE_SIZE, "_preload_content": False}
            if token:
                kwargs["_continue"] = token
            response = self._api.list_service_for_all_namespaces(
                _request_timeout=self._request_timeout(60.0), **kwargs
            )
            try:
                page = json.loads(response.data)
            finally:
                response.release_conn()
            if version is None:
                version = _resource_version(page)
            for item in page.get("items") or ():
                if isinstance(item, Mapping) and (ref := ref_of(item)) is not None:
                    services[ref] = address_from_service(ref, item)
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") if isinstance(metadata, Mapping) else None
            if not token:
                break
        if version is None:
            raise WatchEventError("the Service list carried no resourceVersion")
        with self._lock:
            previous, self._services = self._services, services
            self._generation += 1
            self._last_contact = self._clock()
            self._last_error = ""
        self._synced.set()
        logger.info("service cache listed services=%d resource_version=%s", len(services), version)
        self._notify(_differences(previous, services))
        return version

    def _watch(self, version: str, *, timeout_seconds: int) -> None:
        """Watch from `version` until the stream ends; `self._version` follows every event, so a watch
        that breaks resumes from the last event seen."""
        response = self._api.list_service_for_all_namespaces(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            _preload_content=False,
            _request_timeout=self._request_timeout(timeout_seconds + READ_GRACE_SECONDS),
        )
        self._response = response
        with self._lock:
            self._watching = True
            self._last_contact = self._clock()
            self._last_error = ""
        try:
            if self._stopping.is_set():
                return
            for line in iter_lines(response):
                self._version = self._apply(json.loads(line), self._version or version)
                if self._stopping.is_set():
                    break
        finally:
            self._response = None
            with self._lock:
                self._watching = False
                self._last_contact = self._clock()
            response.release_conn()

    def _apply(self, event: Any, version: str) -> str:
        if not isinstance(event, Mapping):
            raise WatchEventError("a watch line is not a JSON object")
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            raise WatchEventError(f"a {kind} watch event has no object")
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchExpiredError(str(obj.get("message", "")))
            raise WatchEventError(f"watch error {obj.get('code')}: {obj.get('message', '')}")
        new_version = _resource_version(obj) or version
        if kind == "BOOKMARK":
            return new_version
        ref = ref_of(obj)
        if ref is None:
            raise WatchEventError(f"a {kind} watch event names no Service")
        with self._lock:
            old = _usable(self._services.get(ref))
            if kind == "DELETED":
                self._services.pop(ref, None)
            elif kind in ("ADDED", "MODIFIED"):
                self._services[ref] = address_from_service(ref, obj)
            new = _usable(self._services.get(ref))
            self._generation += 1
            self._last_contact = self._clock()
        logger.debug("service %s %s resource_version=%s", kind, ref, new_version)
        if old != new:
            self._notify([(ref, old, new)])
        return new_version


def _usable(entry: Entry | None) -> ServiceAddress | None:
    return entry if isinstance(entry, ServiceAddress) else None


def _differences(
    old: Mapping[ServiceRef, Entry], new: Mapping[ServiceRef, Entry]
) -> list[tuple[ServiceRef, ServiceAddress | None, ServiceAddress | None]]:
    """What a relist changed, Service by Service (in a stable order)."""
    changes = []
    for ref in sorted(set(old) | set(new)):
        before, after = _usable(old.get(ref)), _usable(new.get(ref))
        if before != after:
            changes.append((ref, before, after))
    return changes


def _describe(error: Exception) -> str:
    status = getattr(error, "status", None)
    if isinstance(status, int) and status:
        return f"the Kubernetes API answered {status} {getattr(error, 'reason', '')}".rstrip()
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__


def interrupt_stream(response: Any) -> None:
    """Unblock a thread reading a watch: shut the socket down (closing alone does not wake a read)."""
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
