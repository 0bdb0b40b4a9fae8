"""Metric values that the worker processes of one server share: a board in shared memory, and the merge.

Prometheus scrapes one connection at a time, so whichever worker process answers `/metrics` must report
the whole server. Each worker publishes its metric families (plain numbers, `Family`) to its own slot of a
`MetricBoard` every second or so; the answering worker merges its own live values with what the others
last published (`merge_families`): counters and histograms are summed, gauges are kept apart under a
`worker` label. A board is an anonymous shared mapping made before the workers are forked, so it needs no
file system (the server's root file system may be read-only) and goes away with the last process.

One writer per slot (the worker that owns it, one at a time); any process may read. A slot is a sequence
number, the payload's length and CRC, and the payload. The writer makes the sequence odd, writes, and makes
it even again; a reader takes a payload only when the sequence was even and unchanged around its read and
the CRC matches. Nothing guarantees that a number is copied in one store, so a reader can see one half
written: the CRC is what makes a read that raced a write retried, never half-taken, on any memory model.
After some attempts a reader falls back to the last good payload it read from that slot.

Standard library only.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

SLOT_BYTES = 1 << 20
"""Room for one worker's families (a few tens of KiB in practice); pages are only used once written."""
READ_ATTEMPTS = 1000
_HEADER = struct.Struct("<QII")  # sequence, payload length, payload CRC-32
_SEQUENCE = struct.Struct("<Q")
SUMMED_KINDS = frozenset({"counter", "histogram", "summary"})
"""Families whose samples add up across processes; every other kind is per process (a `worker` label)."""


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family as plain values: what a Prometheus collector yields, without the library."""

    name: str
    kind: str
    help: str
    unit: str
    samples: tuple[Sample, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a worker published: its process id (so readers can tell a live worker from a gone one)."""

    pid: int
    families: tuple[Family, ...]


class MetricBoard:
    """`slots` slots of `slot_bytes` in one shared anonymous mapping; make it before forking."""

    def __init__(self, slots: int, *, slot_bytes: int = SLOT_BYTES) -> None:
        if slots < 1:
            raise ValueError("a board needs at least one slot")
        self.slots = slots
        self.slot_bytes = slot_bytes
        self._memory = mmap.mmap(-1, slots * slot_bytes, flags=mmap.MAP_SHARED)
        self._last_good: dict[int, bytes] = {}

    @property
    def capacity(self) -> int:
        """The largest payload a slot holds."""
        return self.slot_bytes - _HEADER.size

    def _offset(self, slot: int) -> int:
        if not 0 <= slot < self.slots:
            raise IndexError(f"slot {slot} is not in 0..{self.slots - 1}")
        return slot * self.slot_bytes

    def write(self, slot: int, payload: bytes) -> bool:
        """Publish `payload` in `slot` (the caller owns the slot); False when it does not fit."""
        if len(payload) > self.capacity:
            return False
        offset = self._offset(slot)
        crc = zlib.crc32(payload)
        sequence = _HEADER.unpack_from(self._memory, offset)[0]
        writing = sequence + 1 if sequence % 2 == 0 else sequence + 2  # odd: a write is under way
        # Each number is packed apart and copied in (`pack_into` would zero the field before writing it).
        self._memory[offset : offset + _SEQUENCE.size] = _SEQUENCE.pack(writing)
        start = offset + _HEADER.size
        self._memory[start : start + len(payload)] = payload
        self._memory[offset : offset + _HEADER.size] = _HEADER.pack(writing, len(payload), crc)
        self._memory[offset : offset + _SEQUENCE.size] = _SEQUENCE.pack(writing + 1)
        return True

    def read(self, slot: int) -> bytes | None:
        """The slot's payload (None when nothing was ever written); the last good one if every attempt
        raced a write."""
        offset = self._offset(slot)
        start = offset + _HEADER.size
        for _ in range(READ_ATTEMPTS):
            sequence, length, crc = _HEADER.unpack_from(self._memory, offset)
            if sequence == length == crc == 0:
                return None  # never written (a write sets a length and a CRC, never all three back to 0)
            if sequence % 2 == 0 and length <= self.capacity:
                payload = self._memory[start : start + length]
                if _HEADER.unpack_from(self._memory, offset)[0] == sequence and zlib.crc32(payload) == crc:
                    self._last_good[slot] = payload
                    return payload
            os.sched_yield()  # let the writer finish (it copies at most a slot)
        return self._last_good.get(slot)

    def close(self) -> None:
        self._memory.close()


# -- the payload -------------------------------------------------------------------------------------
def encode_snapshot(snapshot: Snapshot) -> bytes:
    families = [
        [f.name, f.kind, f.help, f.unit, [[s.name, [list(p) for p in s.labels], s.value] for s in f.samples]]
        for f in snapshot.families
    ]
    return json.dumps({"pid": snapshot.pid, "families": families}, separators=(",", ":")).encode()


def decode_snapshot(payload: bytes) -> Snapshot:
    """The snapshot in `payload`; raises ValueError for anything that is not one."""
    try:
        data: Any = json.loads(payload)
        families = tuple(
            Family(
                name=str(name),
                kind=str(kind),
                help=str(help_),
                unit=str(unit),
                samples=tuple(
                    Sample(str(sample), tuple((str(k), str(v)) for k, v in labels), float(value))
                    for sample, labels, value in samples
                ),
            )
            for name, kind, help_, unit, samples in data["families"]
        )
        return Snapshot(pid=int(data["pid"]), families=families)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"not a metrics snapshot: {error}") from None


# -- the merge ---------------------------------------------------------------------------------------
def summed_only(families: Iterable[Family]) -> tuple[Family, ...]:
    """The families that add up across processes (what outlives a process: its counts)."""
    return tuple(f for f in families if f.kind in SUMMED_KINDS)


def merge_families(
    parts: Sequence[tuple[str, Sequence[Family]]], *, worker_label: str = "worker"
) -> list[Family]:
    """One set of families from several processes' (`worker` name, families) parts.

    Counter, histogram and summary samples with the same name and labels are summed (a `_created`
    timestamp takes the earliest); every other family's samples get the `worker_label` label of their part.
    A family keeps the help text and kind of its first appearance; families and samples keep the order of
    their first appearance.
    """
    kinds: dict[str, Family] = {}
    summed: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    apart: dict[str, list[Sample]] = {}
    for worker, families in parts:
        for family in families:
            first = kinds.setdefault(family.name, family)
            if first.kind != family.kind:
                continue  # the same name with another kind cannot be merged: the first one wins
            if family.kind in SUMMED_KINDS:
                values = summed.setdefault(family.name, {})
                for sample in family.samples:
                    key = (sample.name, sample.labels)
                    if key not in values:
                        values[key] = sample.value
                    elif sample.name.endswith("_created"):
                        values[key] = min(values[key], sample.value)
                    else:
                        values[key] += sample.value
            else:
                labelled = apart.setdefault(family.name, [])
                for sample in family.samples:
                    labels = tuple(pair for pair in sample.labels if pair[0] != worker_label)
                    labelled.append(Sample(sample.name, (*labels, (worker_label, worker)), sample.value))
    merged = []
    for name, first in kinds.items():
        if first.kind in SUMMED_KINDS:
            samples = tuple(
                Sample(sample, labels, value) for (sample, labels), value in summed.get(name, {}).items()
            )
        else:
            samples = tuple(apart.get(name, ()))
        merged.append(Family(first.name, first.kind, first.help, first.unit, samples))
    return merged
