"""One list + watch loop for a Kubernetes collection, in a thread: the mechanism under the Service cache, the
EnvoyFilter watch and the EPP's EndpointSlice/Pod discovery.

An `Informer` lists the collection page by page, then watches from the list's resourceVersion with
bookmarks. A watch that ends (timeout, dropped connection) resumes from the last resourceVersion it saw; a
`410 Gone` (on the watch or on the list) lists again, and the relist is reported as the difference from
what was known. While the API is unreachable it backs off exponentially, bounded, with a little downward
jitter so replicas do not retry in step. `resync_seconds` (optional) lists again on a schedule.

What the objects mean is the caller's business: `decode` turns an object into `(key, value)` (None = not
one of ours), `on_listed(items, changes, version)` is called after every complete list with everything now
known and what differs from before, `on_event(change, version)` after every watch event. Both run on the
informer's thread, after its own bookkeeping; `items` is the informer's own map, to read, not to keep.

`decode` is also where cached objects are slimmed: the informer keeps only the values it returns. A cache
of whole objects can use `decode_object` (keyed by namespace/name, `managedFields` and the last-applied
annotation dropped) or its own transform. `items()` and `get(key)` read what is known from any thread.
The collection is any list method: `call` can be a `functools.partial` fixing a namespace or a label
selector, or `CustomObjectsApi.list_cluster_custom_object` with its group, version and plural.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

CONNECT_TIMEOUT_SECONDS = 10.0
LIST_READ_TIMEOUT_SECONDS = 60.0
READ_GRACE_SECONDS = 30.0

K = TypeVar("K", bound="SupportsRichComparison")
T = TypeVar("T")

ChangeKind = Literal["ADDED", "MODIFIED", "DELETED"]


class WatchExpiredError(Exception):
    """410 Gone: the resourceVersion is older than the apiserver keeps; list again."""


class WatchStreamError(Exception):
    """The stream carried something other than a watch event, or an ERROR event other than 410."""


@dataclass(frozen=True, slots=True)
class InformerSettings:
    watch_timeout_seconds: int
    backoff_initial_seconds: float
    backoff_max_seconds: float
    resync_seconds: float | None = None
    page_size: int = 500
    jitter: float = 0.2
    """Each back-off wait is shortened by up to this fraction, at random (never lengthened)."""


@dataclass(frozen=True, slots=True)
class InformerLog:
    """Where and how the loop reports itself: `retrying` takes (reason, seconds)."""

    logger: logging.Logger
    watch_expired: str
    list_expired: str
    retrying: str


@dataclass(frozen=True, slots=True)
class Change(Generic[K, T]):
    """One object that appeared, changed or went away. `old` is what was known before (None = nothing);
    `value` is the object now, or for a DELETED its last state."""

    kind: ChangeKind
    key: K
    old: T | None
    value: T


def resource_version_of(document: Mapping[str, Any]) -> str | None:
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


def interrupt_stream(response: Any) -> None:
    """Unblock a thread reading a watch: shut the socket down (closing alone does not wake a read)."""
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def describe_error(error: Exception) -> str:
    """One line for a failed request: the API's status, else the exception."""
    status = getattr(error, "status", None)
    if isinstance(status, int) and status:
        return f"the Kubernetes API answered {status} {getattr(error, 'reason', '')}".rstrip()
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__


ObjectKey = tuple[str, str]
"""(namespace, name); the namespace is "" for a cluster-scoped object."""

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def object_key(document: Mapping[str, Any]) -> ObjectKey | None:
    metadata = document.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    namespace, name = metadata.get("namespace") or "", metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not name:
        return None
    return namespace, name


def slim_object(document: Mapping[str, Any]) -> dict[str, Any]:
    """A copy without what a cache never reads and the apiserver repeats on every object: `managedFields`
    and the last-applied annotation (often as large as the object itself)."""
    slim = dict(document)
    metadata = slim.get("metadata")
    if isinstance(metadata, Mapping):
        metadata = {key: value for key, value in metadata.items() if key != "managedFields"}
        annotations = metadata.get("annotations")
        if isinstance(annotations, Mapping) and LAST_APPLIED in annotations:
            metadata["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
        slim["metadata"] = metadata
    return slim


def decode_object(document: Mapping[str, Any]) -> tuple[ObjectKey, dict[str, Any]] | None:
    """A ready-made `decode` for caches of whole objects: keyed by namespace/name, slimmed."""
    key = object_key(document)
    return None if key is None else (key, slim_object(document))


def diff_items(old: Mapping[K, T], new: Mapping[K, T]) -> list[Change[K, T]]:
    """What turns `old` into `new`, object by object, in key order."""
    return list(iter_changes(old, new))


def iter_changes(old: Mapping[K, T], new: Mapping[K, T]) -> Iterator[Change[K, T]]:
    """`diff_items`, one change at a time."""
    for key in sorted(old.keys() | new.keys()):
        if key not in new:
            yield Change("DELETED", key, old[key], old[key])
        elif key not in old:
            yield Change("ADDED", key, None, new[key])
        elif old[key] != new[key]:
            yield Change("MODIFIED", key, old[key], new[key])


class Changes(Sequence[Change[K, T]]):
    """The changes a list found, made one at a time as they are read: a first list of 20,000 Services is
    20,000 changes, which need not all exist at once. Indexing or `len` makes them all (once)."""

    def __init__(self, old: Mapping[K, T], new: Mapping[K, T]) -> None:
        self._old = old
        self._new = new
        self._made: list[Change[K, T]] | None = None

    def __iter__(self) -> Iterator[Change[K, T]]:
        return iter(self._made) if self._made is not None else iter_changes(self._old, self._new)

    def _all(self) -> list[Change[K, T]]:
        if self._made is None:
            self._made = diff_items(self._old, self._new)
        return self._made

    def __len__(self) -> int:
        return len(self._all())

    @overload
    def __getitem__(self, index: int) -> Change[K, T]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Change[K, T]]: ...

    def __getitem__(self, index: int | slice) -> Change[K, T] | Sequence[Change[K, T]]:
        return self._all()[index]


class Informer(Generic[K, T]):
    """List + watch of one collection in its own thread. `call(**kwargs)` is the collection's list
    method on a `kubernetes` API object (it gets `watch`, `resource_version`, `limit`, `_continue`,
    `_preload_content=False` and `_request_timeout` as keywords)."""

    def __init__(
        self,
        *,
        name: str,
        call: Callable[..., Any],
        decode: Callable[[Mapping[str, Any]], tuple[K, T] | None],
        on_listed: Callable[[Mapping[K, T], Sequence[Change[K, T]], str], None],
        on_event: Callable[[Change[K, T], str], None],
        settings: InformerSettings,
        log: InformerLog,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self._call = call
        self._decode = decode
        self._on_listed = on_listed
        self._on_event = on_event
        self._settings = settings
        self._log = log
        self._clock = clock
        self._draw = draw
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._known: dict[K, T] = {}
        self._version: str | None = None
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self._watching = False
        self._last_contact: float | None = None
        self._last_error = ""

    # -- state (any thread) --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def version(self) -> str | None:
        """The resourceVersion a watch would resume from (None = the next step is a list)."""
        return self._version

    def age(self) -> float | None:
        """Seconds out of touch with the API: 0 while a watch is open, None before any contact."""
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

    def items(self) -> dict[K, T]:
        """A copy of everything known now (empty before the first list)."""
        with self._lock:
            return dict(self._known)

    def get(self, key: K) -> T | None:
        with self._lock:
            return self._known.get(key)

    def size(self) -> int:
        with self._lock:
            return len(self._known)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end and interrupt an open watch; does not wait."""
        self._stopping.set()
        interrupt_stream(self._response)

    def join(self, timeout: float) -> bool:
        """Wait (bounded) for the thread; True when it has ended (or never ran)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def stop(self, timeout: float = 5.0) -> bool:
        self.request_stop()
        return self.join(timeout)

    # -- the loop (its own thread) -------------------------------------------------------------------
    def backoff_delay(self, backoff: float) -> float:
        """The wait for one back-off step: `backoff`, shortened by up to `jitter` of it."""
        return backoff * (1.0 - self._settings.jitter * self._draw())

    def _run(self) -> None:
        settings, log = self._settings, self._log
        backoff = settings.backoff_initial_seconds
        resync_at = 0.0
        self._version = None
        while not self._stopping.is_set():
            try:
                resync_due = settings.resync_seconds is not None and self._clock() >= resync_at
                if self._version is None or resync_due:
                    self._version = self._list()
                    resync_at = self._clock() + (settings.resync_seconds or 0.0)
                    backoff = settings.backoff_initial_seconds
                timeout = settings.watch_timeout_seconds
                if settings.resync_seconds is not None:
                    timeout = min(timeout, max(1, int(resync_at - self._clock())))
                self._watch(self._version, timeout_seconds=timeout)
                backoff = settings.backoff_initial_seconds
            except WatchExpiredError:
                log.logger.info(log.watch_expired)
                self._version = None
            except Exception as error:
                if self._stopping.is_set():
                    break
                if getattr(error, "status", None) == 410:
                    log.logger.info(log.list_expired)
                    self._version = None
                    continue
                reason = describe_error(error)
                with self._lock:
                    self._watching = False
                    self._last_error = reason
                delay = self.backoff_delay(backoff)
                log.logger.warning(log.retrying, reason, delay)
                self._stopping.wait(delay)
                backoff = min(backoff * 2, settings.backoff_max_seconds)
        with self._lock:
            self._watching = False

    def _list(self) -> str:
        found: dict[K, T] = {}
        token: str | None = None
        version: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self._settings.page_size, "_preload_content": False}
            if token:
                kwargs["_continue"] = token
            response = self._call(
                _request_timeout=(CONNECT_TIMEOUT_SECONDS, LIST_READ_TIMEOUT_SECONDS), **kwargs
            )
            try:
                page = json.loads(response.data)
            finally:
                response.release_conn()
            if not isinstance(page, Mapping):
                raise WatchStreamError("the list is not a JSON object")
            if version is None:
                version = resource_version_of(page)
            for item in page.get("items") or ():
                if isinstance(item, Mapping) and (decoded := self._decode(item)) is not None:
                    found[decoded[0]] = decoded[1]
            metadata = page.get("metadata")
            token = metadata.get("continue") if isinstance(metadata, Mapping) else None
            if not token:
                break
        if version is None:
            raise WatchStreamError("the list carried no resourceVersion")
        with self._lock:
            previous, self._known = self._known, found
            self._last_contact = self._clock()
            self._last_error = ""
        self._on_listed(found, Changes(previous, found), version)
        return version

    def _watch(self, version: str, *, timeout_seconds: int) -> None:
        """Watch from `version` until the stream ends; `self._version` follows every event, so a watch
        that breaks resumes from the last event seen."""
        response = self._call(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            _preload_content=False,
            _request_timeout=(CONNECT_TIMEOUT_SECONDS, timeout_seconds + READ_GRACE_SECONDS),
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
            raise WatchStreamError("a watch line is not a JSON object")
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            raise WatchStreamError(f"a {kind} watch event has no object")
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchExpiredError(str(obj.get("message", "")))
            raise WatchStreamError(f"watch error {obj.get('code')}: {obj.get('message', '')}")
        new_version = resource_version_of(obj) or version
        if kind == "BOOKMARK":
            return new_version
        decoded = self._decode(obj)
        if decoded is None or kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise WatchStreamError(f"a {kind} watch event names no object of {self.name}")
        key, value = decoded
        with self._lock:
            if kind == "DELETED":
                change = Change("DELETED", key, self._known.pop(key, None), value)
            else:
                old = self._known.get(key)
                self._known[key] = value
                change = Change("ADDED" if kind == "ADDED" else "MODIFIED", key, old, value)
            self._last_contact = self._clock()
        self._on_event(change, new_version)
        return new_version
