"""`/metrics` of a server with several worker processes: each worker's `Metrics` on a shared board, and any
worker's answer is the whole server's (counters and histograms summed, gauges labelled `worker`).

The workers here are `WorkerMetrics` in one process over a real shared board (the board is the same memory
in forked processes: tests/telemetry/test_board.py); tests/webhook/test_server_workers.py runs them as
processes behind `serve --workers`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from telemetry.board import MetricBoard
from webhook.admission import Outcome, Webhook
from webhook.metrics import FamiliesCollector, Metrics, MetricShare, WorkerMetrics, families_of


@pytest.fixture
def board() -> Iterator[MetricBoard]:
    shared = MetricBoard(2)
    try:
        yield shared
    finally:
        shared.close()


def review(metrics: Metrics, count: int, *, webhook: Webhook = Webhook.MUTATE) -> None:
    for _ in range(count):
        metrics.record_review(
            webhook=webhook,
            operation="CREATE",
            outcome=Outcome.PATCHED,
            rules=("EPX002",),
            seconds=0.002,
            patched=True,
        )


def sample(text: bytes, line: str) -> float | None:
    """The value of the sample `line` (name and labels as printed), None when it is not there."""
    found = re.search(rf"^{re.escape(line)} (\S+)$", text.decode(), re.MULTILINE)
    return float(found.group(1)) if found else None


def worker(board: MetricBoard, index: int, *, pid: int, gone: frozenset[int] = frozenset()) -> WorkerMetrics:
    return WorkerMetrics(Metrics(), MetricShare(board, index), pid=pid, alive=lambda p: p not in gone)


MUTATIONS = 'extproc_guard_reviews_total{operation="CREATE",result="patched",webhook="mutate"}'


def test_plain_families_render_exactly_as_the_registry_does() -> None:
    metrics = Metrics()
    review(metrics, 3)
    review(metrics, 1, webhook=Webhook.VALIDATE)
    metrics.count_malformed("/mutate")
    metrics.cert_reloads.labels("ok").inc()

    assert generate_latest(FamiliesCollector(families_of(metrics.registry))) == metrics.render()


def test_each_worker_answers_for_every_worker(board: MetricBoard) -> None:
    first, second = worker(board, 0, pid=100), worker(board, 1, pid=101)
    review(first.metrics, 3)
    review(second.metrics, 2)
    second.metrics.count_malformed("/validate")
    first.publish()
    second.publish()

    for answering in (first, second):
        text = answering.render()
        assert sample(text, MUTATIONS) == 5
        assert sample(text, 'extproc_guard_review_duration_seconds_count{webhook="mutate"}') == 5
        assert sample(text, 'extproc_guard_review_rules_total{rule="EPX002",webhook="mutate"}') == 5
        assert sample(text, 'extproc_guard_malformed_requests_total{path="/validate"}') == 1
        assert sample(text, "extproc_guard_patches_applied_total") == 5


def test_the_answering_worker_counts_its_own_reviews_before_it_publishes_them(board: MetricBoard) -> None:
    first, second = worker(board, 0, pid=100), worker(board, 1, pid=101)
    second.publish()
    review(first.metrics, 4)

    assert sample(first.render(), MUTATIONS) == 4
    assert sample(second.render(), MUTATIONS) is None, "the other worker has not published them yet"


def test_gauges_are_per_worker_under_the_worker_label(board: MetricBoard) -> None:
    first, second = worker(board, 0, pid=100), worker(board, 1, pid=101)
    first.publish()
    second.publish()

    text = first.render()

    assert sample(text, 'extproc_guard_gc_frozen_objects{worker="0"}') is not None
    assert sample(text, 'extproc_guard_gc_frozen_objects{worker="1"}') is not None
    assert sample(text, "extproc_guard_gc_frozen_objects") is None


def test_a_replacement_worker_carries_on_the_counts_of_its_slot(board: MetricBoard) -> None:
    first, dead = worker(board, 0, pid=100), worker(board, 1, pid=101)
    review(dead.metrics, 2)
    dead.publish()
    replacement = worker(board, 1, pid=102, gone=frozenset({101}))
    review(replacement.metrics, 1)
    replacement.publish()

    assert sample(first.render(), MUTATIONS) == 3
    assert sample(replacement.render(), MUTATIONS) == 3


def test_a_gone_worker_keeps_its_counts_but_not_its_gauges(board: MetricBoard) -> None:
    dead = worker(board, 1, pid=101)
    review(dead.metrics, 2)
    dead.publish()
    first = worker(board, 0, pid=100, gone=frozenset({101}))

    text = first.render()

    assert sample(text, MUTATIONS) == 2
    assert sample(text, 'extproc_guard_gc_frozen_objects{worker="1"}') is None
    assert sample(text, 'extproc_guard_gc_frozen_objects{worker="0"}') is not None


def test_a_slot_that_does_not_hold_a_snapshot_is_left_out(board: MetricBoard) -> None:
    board.write(1, b"not a snapshot")
    first = worker(board, 0, pid=100)
    review(first.metrics, 1)

    assert sample(first.render(), MUTATIONS) == 1
    assert worker(board, 1, pid=101).carried == ()
