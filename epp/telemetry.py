"""The EPP's own Prometheus metrics, in a registry the caller owns (no process-global state)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter as Counter_
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from telemetry.tally import LatencyTally

DECISION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)

DECISION_OUTCOMES = ("picked", "no_endpoint", "shed")
SERVED_OUTCOMES = ("primary", "fallback", "other")
MESSAGE_KINDS = (
    "request_headers",
    "response_headers",
    "request_body",
    "response_body",
    "request_trailers",
    "response_trailers",
)


class StreamTally(Collector):
    """The per-message and per-stream numbers as plain ints, turned into metric families only when scraped.

    Streams are counted on the EPP's event loop, which also serves `/metrics`, so a message costs a dict
    update instead of a locked `inc()` per label set. The families, label sets and values are those of the
    `Counter`/`Gauge`/`Histogram` they replace: decision outcomes and message kinds are exported from the
    start, stream outcomes once they have happened.
    """

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.created = time.time()
        self.decisions: dict[str, int] = dict.fromkeys(DECISION_OUTCOMES, 0)
        self.messages: dict[str, int] = dict.fromkeys(MESSAGE_KINDS, 0)
        self.streams: Counter_[str] = Counter_()
        self.served: dict[str, int] = dict.fromkeys(SERVED_OUTCOMES, 0)
        self.open = 0
        self.latency = LatencyTally(buckets)

    def collect(self) -> Iterator[Metric]:
        yield self._counter(
            "epp_decisions",
            "Routing decisions by outcome (picked, no_endpoint, shed).",
            "outcome",
            self.decisions.items(),
        )
        latency = HistogramMetricFamily(
            "epp_decision_duration_seconds",
            "Time from the deciding message's arrival to the answer being built.",
        )
        latency.add_metric([], self.latency.cumulative(), sum_value=self.latency.sum)
        latency.samples.append(Sample("epp_decision_duration_seconds_created", {}, self.created))
        yield latency
        yield self._counter(
            "epp_streams",
            "ext_proc streams by how they ended (completed, cancelled, error).",
            "outcome",
            self.streams.items(),
        )
        yield GaugeMetricFamily("epp_streams_open", "ext_proc streams in progress.", value=self.open)
        yield self._counter(
            "epp_messages", "ext_proc messages received by kind.", "kind", self.messages.items()
        )
        yield self._counter(
            "epp_served",
            "Responses whose served endpoint the proxy reported (envoy.lb"
            " x-gateway-destination-endpoint-served): the picked primary, a listed fallback, or another.",
            "outcome",
            self.served.items(),
        )

    def _counter(
        self, name: str, documentation: str, label: str, values: Iterable[tuple[str, int]]
    ) -> CounterMetricFamily:
        family = CounterMetricFamily(name, documentation, labels=[label])
        for value, count in list(values):
            family.add_metric([value], count, created=self.created)
        return family


class EppMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.tally = StreamTally(DECISION_BUCKETS)
        self.registry.register(self.tally)
        self.unexpected = Counter(
            "epp_unexpected_messages",
            "Messages the configured processing mode should not send (a sign of a mis-set mode).",
            ["kind"],
            registry=self.registry,
        )
        self.endpoint_score = Gauge(
            "epp_endpoint_score",
            "The endpoint's load score from its last scrape (lower is less loaded).",
            ["endpoint"],
            registry=self.registry,
        )
        self.endpoint_healthy = Gauge(
            "epp_endpoint_healthy",
            "1 when the endpoint may be picked, 0 when its scrapes fail or are stale.",
            ["endpoint"],
            registry=self.registry,
        )

    def forget_endpoint(self, name: str) -> None:
        for gauge in (self.endpoint_score, self.endpoint_healthy):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
