"""Prometheus metrics of the admission server, in a registry owned by one app (no global state)."""

from __future__ import annotations

import gc
import time
from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from telemetry.tally import LatencyTally
from webhook.admission import Outcome, Webhook

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
GC_GENERATIONS = 3


class GcPauses(Collector):
    """Every garbage collection's pause, by generation, from `gc.callbacks` (the interpreter calls them
    around each collection, on whichever thread triggered it, with the GIL held: nothing else runs, so
    plain numbers need no lock). `install()` / `uninstall()` add and remove the callback; the server's
    lifecycle owns them. A pause is everything the process stood still for, requests included."""

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        self.pauses = [LatencyTally(GC_BUCKETS) for _ in range(GC_GENERATIONS)]
        self.collected = [0] * GC_GENERATIONS
        self.longest = 0.0

    def install(self) -> None:
        if self._observe not in gc.callbacks:
            gc.callbacks.append(self._observe)

    def uninstall(self) -> None:
        if self._observe in gc.callbacks:
            gc.callbacks.remove(self._observe)

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        generation = min(int(info.get("generation", 0)), GC_GENERATIONS - 1)
        seconds = self._clock() - self._started
        self.pauses[generation].observe(seconds)
        self.collected[generation] += int(info.get("collected", 0))
        self.longest = max(self.longest, seconds)

    def collect(self) -> Iterator[Metric]:
        pauses = HistogramMetricFamily(
            "extproc_guard_gc_pause_seconds",
            "Garbage collection pauses of the server process, by generation (2 = a full collection).",
            labels=["generation"],
        )
        collected = CounterMetricFamily(
            "extproc_guard_gc_collected_objects",
            "Objects the garbage collector freed (unreachable cycles), by generation.",
            labels=["generation"],
        )
        for generation, tally in enumerate(self.pauses):
            pauses.add_metric([str(generation)], tally.cumulative(), sum_value=tally.sum)
            collected.add_metric([str(generation)], self.collected[generation])
        yield pauses
        yield collected
        yield GaugeMetricFamily(
            "extproc_guard_gc_frozen_objects",
            "Objects moved out of the collector's way (gc.freeze) after the caches' lists.",
            value=gc.get_freeze_count(),
        )


class ReviewTally(Collector):
    """The per-review counters and latencies as plain numbers, turned into metric families only when scraped.

    Reviews are counted on the server's event loop, which also serves `/metrics`, so no lock is needed and
    a review costs a few dict updates instead of a locked `inc()`/`observe()` per label set and rule. The
    webhook and result labels are `StrEnum` members: they hash and print as their values.
    """

    def __init__(self, buckets: tuple[float, ...] = ()) -> None:
        self.reviews: Counter_[tuple[str, str, str]] = Counter_()
        self.rules: Counter_[tuple[str, str]] = Counter_()
        self.patches = 0
        self.buckets = buckets or LATENCY_BUCKETS
        self.latency: dict[str, LatencyTally] = {}

    def count(
        self,
        *,
        webhook: Webhook,
        operation: str,
        outcome: Outcome,
        rules: Iterable[str],
        patched: bool,
        seconds: float,
    ) -> None:
        self.reviews[(webhook, operation, outcome)] += 1
        for rule in rules:
            self.rules[(webhook, rule)] += 1
        if patched:
            self.patches += 1
        latency = self.latency.get(webhook)
        if latency is None:
            latency = self.latency[webhook] = LatencyTally(self.buckets)
        latency.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        reviews = CounterMetricFamily(
            "extproc_guard_reviews",
            "Admission reviews answered, by webhook, admission operation and result.",
            labels=["webhook", "operation", "result"],
        )
        for review_labels, value in list(self.reviews.items()):
            reviews.add_metric([str(label) for label in review_labels], value)
        yield reviews
        rules = CounterMetricFamily(
            "extproc_guard_review_rules",
            "Rules that decided a review (fixed at mutate, denied or warned at validate).",
            labels=["webhook", "rule"],
        )
        for rule_labels, value in list(self.rules.items()):
            rules.add_metric([str(label) for label in rule_labels], value)
        yield rules
        yield CounterMetricFamily(
            "extproc_guard_patches_applied",
            "Mutations returned with a JSON Patch (dry runs are not counted).",
            value=self.patches,
        )
        latency = HistogramMetricFamily(
            "extproc_guard_review_duration_seconds",
            "Time from reading the body to the response being built.",
            labels=["webhook"],
        )
        for webhook, tally in list(self.latency.items()):
            latency.add_metric([str(webhook)], tally.cumulative(), sum_value=tally.sum)
        yield latency


class Metrics:
    """Reviews by webhook/operation/result, findings by rule, latency, patches, cache and TLS state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tally = ReviewTally()
        self.registry.register(self.tally)
        self.gc = GcPauses()
        self.registry.register(self.gc)
        self.malformed = Counter(
            "extproc_guard_malformed_requests",
            "Requests refused with HTTP 4xx before a review (not JSON, wrong kind, too large, ...).",
            ["path"],
            registry=self.registry,
        )
        self.cert_reloads = Counter(
            "extproc_guard_tls_reloads",
            "Serving certificate reloads after the files changed, by result.",
            ["result"],
            registry=self.registry,
        )
        self.cache_age = Gauge(
            "extproc_guard_service_cache_age_seconds",
            "Seconds since the Service cache last heard from the Kubernetes API (-1 before the first sync).",
            registry=self.registry,
        )
        self.cache_synced = Gauge(
            "extproc_guard_service_cache_synced",
            "1 when the Service cache has completed a list, else 0.",
            registry=self.registry,
        )
        self.cache_services = Gauge(
            "extproc_guard_service_cache_services",
            "Services held by the cache.",
            registry=self.registry,
        )
        self._malformed_children: dict[str, Counter] = {}

    def bind_cache(
        self, *, age: Callable[[], float | None], synced: Callable[[], bool], size: Callable[[], int]
    ) -> None:
        """Read the cache's state at scrape time."""
        self.cache_age.set_function(lambda: _age_or_minus_one(age()))
        self.cache_synced.set_function(lambda: 1.0 if synced() else 0.0)
        self.cache_services.set_function(lambda: float(size()))

    def record_review(
        self,
        *,
        webhook: Webhook,
        operation: str,
        outcome: Outcome,
        rules: Iterable[str],
        seconds: float,
        patched: bool,
    ) -> None:
        self.tally.count(
            webhook=webhook,
            operation=operation,
            outcome=outcome,
            rules=rules,
            patched=patched,
            seconds=seconds,
        )

    def count_malformed(self, path: str) -> None:
        """One refused request on `path` (only the review routes refuse, so the label set stays small)."""
        child = self._malformed_children.get(path)
        if child is None:
            child = self._malformed_children[path] = self.malformed.labels(path)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _age_or_minus_one(age: float | None) -> float:
    return -1.0 if age is None else age
