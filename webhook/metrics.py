"""Prometheus metrics of the admission server, in a registry owned by one app (no global state)."""

from __future__ import annotations

from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from webhook.admission import Outcome, Webhook

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ReviewTally(Collector):
    """The per-review counters as plain integers, turned into metric families only when scraped.

    Reviews are counted on the server's event loop, which also serves `/metrics`, so no lock is needed and
    a review costs a few dict updates instead of a locked `Counter.inc()` per label set and rule.
    """

    def __init__(self) -> None:
        self.reviews: Counter_[tuple[str, str, str]] = Counter_()
        self.rules: Counter_[tuple[str, str]] = Counter_()
        self.patches = 0

    def count(
        self, *, webhook: Webhook, operation: str, outcome: Outcome, rules: Iterable[str], patched: bool
    ) -> None:
        self.reviews[(webhook.value, operation, outcome.value)] += 1
        for rule in rules:
            self.rules[(webhook.value, rule)] += 1
        if patched:
            self.patches += 1

    def collect(self) -> Iterator[Metric]:
        reviews = CounterMetricFamily(
            "extproc_guard_reviews",
            "Admission reviews answered, by webhook, admission operation and result.",
            labels=["webhook", "operation", "result"],
        )
        for review_labels, value in list(self.reviews.items()):
            reviews.add_metric(list(review_labels), value)
        yield reviews
        rules = CounterMetricFamily(
            "extproc_guard_review_rules",
            "Rules that decided a review (fixed at mutate, denied or warned at validate).",
            labels=["webhook", "rule"],
        )
        for rule_labels, value in list(self.rules.items()):
            rules.add_metric(list(rule_labels), value)
        yield rules
        yield CounterMetricFamily(
            "extproc_guard_patches_applied",
            "Mutations returned with a JSON Patch (dry runs are not counted).",
            value=self.patches,
        )


class Metrics:
    """Reviews by webhook/operation/result, findings by rule, latency, patches, cache and TLS state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tally = ReviewTally()
        self.registry.register(self.tally)
        self.malformed = Counter(
            "extproc_guard_malformed_requests",
            "Requests refused with HTTP 4xx before a review (not JSON, wrong kind, too large, ...).",
            ["path"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "extproc_guard_review_duration_seconds",
            "Time from reading the body to the response being built.",
            ["webhook"],
            buckets=LATENCY_BUCKETS,
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

        self._latency_children: dict[Webhook, Histogram] = {}

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
        self.tally.count(webhook=webhook, operation=operation, outcome=outcome, rules=rules, patched=patched)
        latency = self._latency_children.get(webhook)
        if latency is None:
            latency = self._latency_children[webhook] = self.latency.labels(webhook.value)
        latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _age_or_minus_one(age: float | None) -> float:
    return -1.0 if age is None else age
