"""Keep CPython's full garbage collections off the request path of a process that holds informer caches.

Once the Kubernetes client and the caches are loaded, the heap holds hundreds of thousands of long-lived
objects (the client's generated models, every cached Service and filter). A full collection walks all of
them: tens of milliseconds during which no request moves, however little garbage there is. `Heap` moves
the long-lived objects out of the collector's way:

- `settle()` collects once and then `gc.freeze()`s: every object alive at that moment moves to the
  permanent generation, which later collections never walk (reference counting still frees a frozen
  object that is no longer used). The first settle, after the caches' first list, walks everything once;
  a later one (after a relist or resync) walks only what was created since the last one.
- `settle_soon()` is what the caches call after each complete list, on their own threads: it hands the
  settle to the event loop (`start(loop)`), where no handler is half way through a request, so only the
  caches, the modules and open connections are frozen, not a request's short-lived objects. Without a loop
  it settles at once. Requests that arrive meanwhile are coalesced into one settle.
- `start()` also sets generation thresholds for a long-lived server (young collections a little less
  often; full collections only after many promotions, and cheap ones since the long-lived objects are
  frozen); `stop()` restores the previous thresholds and unfreezes, so the process's collector is as it was.
- With glibc, `start()` fixes two of malloc's settings (`mallopt`): blocks from 128 KiB up always get their
  own mapping, returned to the system when freed (by default glibc raises that threshold after the first
  such block is freed, so every later list page, a megabyte or more, is carved out of the heap, which the
  small objects the caches keep then pin), and at most two malloc arenas for the process's threads (each
  informer thread would otherwise get an arena of its own, each holding its own high-water mark). Together
  they take about ten megabytes off a process that lists thousands of objects; they last for the process.
  A settle also gives free heap memory back (`malloc_trim`).

Pause times are observed elsewhere (`gc.callbacks`, e.g. the webhook's metrics); `Heap` counts its own
settles and their duration.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GcThresholds:
    """`gc.set_threshold` values: young collections every `young` net allocations, a middle one every
    `middle` young ones, a full one every `full` middle ones (and only when enough objects were promoted)."""

    young: int = 5_000
    middle: int = 20
    full: int = 100


SERVER_THRESHOLDS = GcThresholds()

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENA_MAX = 2


def _glibc() -> Any:
    """The C library's `mallopt` and `malloc_trim`, or None when it is not glibc (musl, macOS)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


class Heap:
    """The process's garbage collector, tuned for a long-lived server with informer caches."""

    def __init__(
        self,
        *,
        thresholds: GcThresholds | None = SERVER_THRESHOLDS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._thresholds = thresholds
        self._clock = clock
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = False
        self._saved: tuple[int, int, int] | None = None
        self._libc: Any = None
        self.settles = 0
        self.settle_seconds = 0.0
        self.last_settle_seconds = 0.0

    @property
    def frozen(self) -> int:
        """Objects in the permanent generation (never walked by a collection)."""
        return gc.get_freeze_count()

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Set the server's thresholds; `loop` is where `settle_soon` runs settles (None = at once)."""
        with self._lock:
            self._loop = loop
            if self._thresholds is not None and self._saved is None:
                self._saved = gc.get_threshold()
                gc.set_threshold(self._thresholds.young, self._thresholds.middle, self._thresholds.full)
            if self._libc is None:
                self._libc = _glibc()
                if self._libc is not None:
                    self._libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                    self._libc.mallopt(M_ARENA_MAX, ARENA_MAX)

    def stop(self) -> None:
        """Restore the thresholds (unless someone changed them since) and unfreeze: the process's collector
        is left as `start` found it."""
        with self._lock:
            self._loop = None
            if self._saved is not None and self._thresholds is not None:
                mine = (self._thresholds.young, self._thresholds.middle, self._thresholds.full)
                if gc.get_threshold() == mine:
                    gc.set_threshold(*self._saved)
                self._saved = None
            gc.unfreeze()

    def settle_soon(self) -> None:
        """Any thread: settle on the event loop (coalesced), or at once when there is none."""
        with self._lock:
            loop = self._loop
            if loop is not None:
                if self._pending:
                    return
                self._pending = True
        if loop is None:
            self.settle()
            return
        try:
            loop.call_soon_threadsafe(self.settle)
        except RuntimeError:  # the loop is closed: nothing is left to serve
            with self._lock:
                self._pending = False

    def settle(self) -> None:
        """Collect once, then freeze what is alive, so later collections never walk it."""
        with self._lock:
            self._pending = False
            started = self._clock()
            gc.collect()
            gc.freeze()
            if self._libc is not None:
                self._libc.malloc_trim(0)
            seconds = self._clock() - started
            self.settles += 1
            self.settle_seconds += seconds
            self.last_settle_seconds = seconds
        logger.debug("heap settled in %.1f ms; %d objects frozen", seconds * 1000, gc.get_freeze_count())
