"""The metric board the worker processes of one server share, and the merge of their families."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest

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


@pytest.fixture
def board() -> Iterator[MetricBoard]:
    shared = MetricBoard(3, slot_bytes=4096)
    try:
        yield shared
    finally:
        shared.close()


def counter(name: str, *samples: tuple[dict[str, str], float]) -> Family:
    return Family(
        name,
        "counter",
        f"{name} help",
        "",
        tuple(Sample(f"{name}_total", tuple(labels.items()), value) for labels, value in samples),
    )


def gauge(name: str, value: float, **labels: str) -> Family:
    return Family(name, "gauge", f"{name} help", "", (Sample(name, tuple(labels.items()), value),))


def values(families: list[Family]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, s.labels): s.value for f in families for s in f.samples}


# -- the board ---------------------------------------------------------------------------------------------
def test_a_slot_reads_back_what_was_written_and_an_unwritten_slot_reads_none(board: MetricBoard) -> None:
    for _ in range(300):  # the sequence number's low byte wraps around: a slot written is never empty
        assert board.write(1, b"one")
    assert board.write(1, b"one again, longer")

    assert board.read(1) == b"one again, longer"
    assert board.read(0) is None


def test_a_payload_larger_than_a_slot_is_refused_and_the_last_one_stays(board: MetricBoard) -> None:
    board.write(0, b"kept")

    assert not board.write(0, b"x" * (board.capacity + 1))
    assert board.read(0) == b"kept"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda memory: struct.pack_into("<Q", memory, 0, 3), id="write-under-way"),
        pytest.param(lambda memory: memory.__setitem__(slice(16, 17), b"X"), id="payload-not-matching-crc"),
    ],
)
def test_a_read_that_meets_a_write_in_progress_gives_the_last_good_payload(
    board: MetricBoard, damage: object
) -> None:
    board.write(0, b"good")
    assert board.read(0) == b"good"
    board.write(0, b"next")
    damage(board._memory)  # type: ignore[operator]  # as a writer caught half way would leave it

    assert board.read(0) == b"good"


def test_a_slot_written_by_a_forked_process_is_read_by_its_parent(board: MetricBoard) -> None:
    pid = os.fork()
    if pid == 0:
        code = 0 if board.write(2, b"from the child") else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert board.read(2) == b"from the child"


def test_reads_racing_a_writer_in_another_process_are_never_torn() -> None:
    board = MetricBoard(1, slot_bytes=1 << 18)
    payloads = (b"a" * 200_000, b"b" * 150_000 + b"c" * 50_000, b"d" * 1_000)
    writes = 3_000
    try:
        board.write(0, payloads[0])
        assert board.read(0) == payloads[0]  # what a reader falls back to if every attempt meets a write
        pid = os.fork()
        if pid == 0:
            for index in range(writes):
                board.write(0, payloads[index % len(payloads)])
            os._exit(0)
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            assert board.read(0) in payloads, "a read mixed two writes"
        assert board.read(0) == payloads[(writes - 1) % len(payloads)]
    finally:
        board.close()


def test_a_board_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        MetricBoard(0)


# -- snapshots ---------------------------------------------------------------------------------------------
def test_a_snapshot_survives_its_encoding() -> None:
    snapshot = Snapshot(
        pid=42,
        families=(counter("reviews", ({"webhook": "mutate"}, 3.0)), gauge("synced", 1.0)),
    )

    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b'{"pid": 1}', b'{"pid": 1, "families": [[1]]}'],
    ids=["empty", "not-json", "no-families", "short-family"],
)
def test_what_is_not_a_snapshot_is_refused_with_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not a metrics snapshot"):
        decode_snapshot(payload)


# -- the merge ---------------------------------------------------------------------------------------------
def test_counters_are_summed_by_name_and_labels_across_workers() -> None:
    merged = merge_families(
        [
            ("0", [counter("reviews", ({"webhook": "mutate"}, 3.0), ({"webhook": "validate"}, 1.0))]),
            ("1", [counter("reviews", ({"webhook": "mutate"}, 2.0))]),
        ]
    )

    assert values(merged) == {
        ("reviews_total", (("webhook", "mutate"),)): 5.0,
        ("reviews_total", (("webhook", "validate"),)): 1.0,
    }


def test_histograms_are_summed_bucket_by_bucket() -> None:
    def histogram(counts: tuple[float, float], total: float) -> Family:
        buckets = (
            Sample("latency_bucket", (("le", "0.01"),), counts[0]),
            Sample("latency_bucket", (("le", "+Inf"),), counts[1]),
            Sample("latency_count", (), counts[1]),
            Sample("latency_sum", (), total),
        )
        return Family("latency", "histogram", "", "", buckets)

    merged = merge_families([("0", [histogram((1, 2), 0.5)]), ("1", [histogram((3, 3), 0.25)])])

    assert values(merged) == {
        ("latency_bucket", (("le", "0.01"),)): 4.0,
        ("latency_bucket", (("le", "+Inf"),)): 5.0,
        ("latency_count", ()): 5.0,
        ("latency_sum", ()): 0.75,
    }


def test_a_created_timestamp_is_the_earliest_not_a_sum() -> None:
    def reloads(created: float) -> Family:
        samples = (Sample("reloads_total", (), 1.0), Sample("reloads_created", (), created))
        return Family("reloads", "counter", "", "", samples)

    merged = merge_families([("0", [reloads(200.0)]), ("1", [reloads(100.0)])])

    assert values(merged) == {("reloads_total", ()): 2.0, ("reloads_created", ()): 100.0}


def test_gauges_are_kept_apart_under_the_worker_label() -> None:
    merged = merge_families(
        [("0", [gauge("synced", 1.0)]), ("1", [gauge("synced", 0.0, worker="stale", zone="a")])]
    )

    assert values(merged) == {
        ("synced", (("worker", "0"),)): 1.0,
        ("synced", (("zone", "a"), ("worker", "1"))): 0.0,
    }


def test_a_family_keeps_its_first_kind_when_another_worker_disagrees() -> None:
    merged = merge_families([("0", [counter("thing", ({}, 1.0))]), ("1", [gauge("thing", 7.0)])])

    assert [(f.name, f.kind) for f in merged] == [("thing", "counter")]
    assert values(merged) == {("thing_total", ()): 1.0}


def test_only_what_adds_up_outlives_a_worker() -> None:
    families = [counter("reviews", ({}, 1.0)), gauge("synced", 1.0)]

    assert [f.name for f in summed_only(families)] == ["reviews"]
