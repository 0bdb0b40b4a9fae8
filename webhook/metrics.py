"""Prometheus metrics of the admission server, in a registry owned by one app (no global state).

With `serve --workers N` each worker process has its own `Metrics`; `WorkerMetrics` publishes them to the
worker's slot of a shared `MetricBoard` and answers `/metrics` for the whole server: its own live values,
the counts of earlier workers of its slot (a worker that died and was replaced), and what every other
worker last published, counters and histograms summed and gauges labelled `worker`.
"""

from __future__ import annotations

import gc
import os
import time
from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from telemetry.board import (
    Family,
    MetricBoard,
    Sample,
    Snapshot,
    decode_snapshot,
    encode_snapshot,
    merge_families,
    summed_only,
)
from telemetry.tally import LatencyTally
from webhook.admission import Outcome, Webhook

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
GC_GENERATIONS = 3
PUBLISH_SECONDS = 1.0
"""How often a worker publishes its values for the others' `/metrics` (how far behind they may be)."""
WORKER_LABEL = "worker"


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


# -- several worker processes --------------------------------------------------------------------------
def families_of(collector: Collector) -> tuple[Family, ...]:
    """What `collector` yields now, as plain families (label order kept)."""
    return tuple(
        Family(
            name=metric.name,
            kind=metric.type,
            help=metric.documentation,
            unit=metric.unit,
            samples=tuple(Sample(s.name, tuple(s.labels.items()), float(s.value)) for s in metric.samples),
        )
        for metric in collector.collect()
    )


class FamiliesCollector(Collector):
    """Plain families back as Prometheus metric families (for `generate_latest`)."""

    def __init__(self, families: Iterable[Family]) -> None:
        self._families = tuple(families)

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            metric = Metric(family.name, family.help, family.kind, family.unit)
            for sample in family.samples:
                metric.add_sample(sample.name, dict(sample.labels), sample.value)
            yield metric


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists (a worker that has exited but was not yet reaped counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # the number was reused by someone else's process: ours is gone
    return True


@dataclass(frozen=True, slots=True)
class MetricShare:
    """Where one worker process publishes its metrics: slot `index` of `board` (one slot per worker)."""

    board: MetricBoard
    index: int


class WorkerMetrics:
    """One worker's `Metrics` published to its slot, and `/metrics` for every worker of the server.

    A worker that replaces a dead one carries on its slot's counts (read from the slot at start), so the
    server's counters only go up; what the dead worker counted after its last publication is lost.
    Gauges of a worker whose process is gone are left out.
    """

    def __init__(
        self,
        metrics: Metrics,
        share: MetricShare,
        *,
        pid: int,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        self.metrics = metrics
        self.share = share
        self.pid = pid
        self._alive = alive
        self._worker = str(share.index)
        self.carried = self._read_carried()

    def _read(self, slot: int) -> Snapshot | None:
        payload = self.share.board.read(slot)
        if payload is None:
            return None
        try:
            return decode_snapshot(payload)
        except ValueError:
            return None

    def _read_carried(self) -> tuple[Family, ...]:
        earlier = self._read(self.share.index)
        return () if earlier is None else summed_only(earlier.families)

    def own(self) -> list[Family]:
        """This worker's values, with the counts its slot carries from earlier workers."""
        return merge_families(
            [(self._worker, families_of(self.metrics.registry)), (self._worker, self.carried)],
            worker_label=WORKER_LABEL,
        )

    def publish(self) -> bool:
        """Write this worker's values to its slot; False when they do not fit (the slot keeps the last)."""
        payload = encode_snapshot(Snapshot(pid=self.pid, families=tuple(self.own())))
        return self.share.board.write(self.share.index, payload)

    def server_families(self) -> list[Family]:
        """The whole server's families: this worker's live values and what the others last published."""
        parts: list[tuple[str, Sequence[Family]]] = [(self._worker, self.own())]
        for slot in range(self.share.board.slots):
            if slot == self.share.index:
                continue
            snapshot = self._read(slot)
            if snapshot is None:
                continue
            families = snapshot.families if self._alive(snapshot.pid) else summed_only(snapshot.families)
            parts.append((str(slot), families))
        return merge_families(parts, worker_label=WORKER_LABEL)

    def render(self) -> bytes:
        return generate_latest(FamiliesCollector(self.server_families()))
