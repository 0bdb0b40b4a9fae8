"""Pure scoring and picking: which endpoint is least loaded. No clocks, no I/O.

A score is a load: lower is better. It comes from the model server's own gauges (requests waiting and
running, KV-cache usage) plus the requests this EPP has sent it since those gauges were read, so a burst
between two scrapes spreads instead of piling onto the endpoint that looked idle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.endpoints import Endpoint


@dataclass(frozen=True, slots=True)
class LoadSample:
    """What one scrape of a model server's metrics said."""

    waiting: float
    running: float
    kv_cache_usage: float
    running_adapters: frozenset[str] = frozenset()  # LoRA adapters loaded and serving
    waiting_adapters: frozenset[str] = frozenset()  # LoRA adapters requests wait for
    max_lora: int | None = None

    def has_adapter(self, model: str) -> bool:
        return model in self.running_adapters or model in self.waiting_adapters


@dataclass(frozen=True, slots=True)
class ScoreWeights:
    waiting: float = 4.0
    running: float = 1.0
    kv_cache_usage: float = 8.0
    assigned: float = 1.0
    tie_tolerance: float = 1e-9


@dataclass(frozen=True, slots=True)
class Candidate:
    """An endpoint as the picker sees it at decision time."""

    endpoint: Endpoint
    healthy: bool
    sample: LoadSample | None
    assigned: int = 0


def score_load(sample: LoadSample, *, assigned: int, weights: ScoreWeights) -> float:
    return (
        weights.waiting * max(sample.waiting, 0.0)
        + weights.running * max(sample.running, 0.0)
        + weights.kv_cache_usage * min(max(sample.kv_cache_usage, 0.0), 1.0)
        + weights.assigned * assigned
    )


def pick_least_loaded(loads: Sequence[float | None], *, turn: int, tolerance: float = 1e-9) -> int | None:
    """Index of the least loaded of some healthy endpoints; ties, and loads without metrics, rotate by `turn`.

    `loads[i]` is endpoint i's score, or None when it has no load metrics. When any is None, loads cannot be
    compared fairly and all take turns. An empty sequence gives None.
    """
    count = len(loads)
    if not count:
        return None
    if None in loads:
        return turn % count
    best = min(loads)  # type: ignore[type-var]
    limit = best + tolerance  # type: ignore[operator]
    tied = [i for i, load in enumerate(loads) if load <= limit]  # type: ignore[operator]
    return tied[turn % len(tied)]


def pick_endpoint(candidates: Sequence[Candidate], *, turn: int, weights: ScoreWeights) -> Endpoint | None:
    """The least loaded healthy endpoint; ties (and endpoints without any metrics) rotate by `turn`.

    When any healthy endpoint has no load sample, loads cannot be compared fairly and the healthy
    endpoints take turns. No healthy endpoint: None.
    """
    healthy = [c for c in candidates if c.healthy]
    loads = [
        None if c.sample is None else score_load(c.sample, assigned=c.assigned, weights=weights)
        for c in healthy
    ]
    index = pick_least_loaded(loads, turn=turn, tolerance=weights.tie_tolerance)
    return None if index is None else healthy[index].endpoint
