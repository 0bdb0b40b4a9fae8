"""The EPP's own Prometheus metrics, in a registry the caller owns (no process-global state)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DECISION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class EppMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.decisions = Counter(
            "epp_decisions",
            "Routing decisions by outcome (picked, no_endpoint).",
            ["outcome"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "epp_decision_duration_seconds",
            "Time from the deciding message's arrival to the answer being built.",
            buckets=DECISION_BUCKETS,
            registry=self.registry,
        )
        self.streams = Counter(
            "epp_streams",
            "ext_proc streams by how they ended (completed, cancelled, error).",
            ["outcome"],
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "epp_streams_open",
            "ext_proc streams in progress.",
            registry=self.registry,
        )
        self.messages = Counter(
            "epp_messages",
            "ext_proc messages received by kind.",
            ["kind"],
            registry=self.registry,
        )
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
