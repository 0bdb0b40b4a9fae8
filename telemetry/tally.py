"""Latency histograms kept as plain numbers, turned into metric families only when scraped."""

from __future__ import annotations

from bisect import bisect_left


class LatencyTally:
    """One histogram's bucket counts and sum as plain numbers (buckets are upper bounds, `le`)."""

    __slots__ = ("bounds", "counts", "labels", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self.labels = [*(repr(float(bound)) for bound in buckets), "+Inf"]
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        total = 0
        for label, count in zip(self.labels, self.counts, strict=True):
            total += count
            buckets.append((label, float(total)))
        return buckets
