"""Chunks of work done by this process and forked workers at once, pulled from one queue until none is left.

The chunks are numbered into a pipe before forking; every process takes the next number with one read of
its 4-byte record (a pipe read is atomic, so each number is taken by one process) and does that chunk, until
the pipe is empty. Whatever each chunk costs, the processes finish within about one chunk of each other.

A worker sends each chunk's result back as soon as it has it: one frame (length, then the pickled chunk
number and result) appended to its own anonymous file, so it never waits for this process (as it would
on a full pipe). This process reads the frames written whole between its own chunks, so the unpickling
happens while the workers still work. Results
come back in chunk order; a chunk whose result never arrives (a worker that died or sent garbage) is done
here. What a worker sends must pickle; a worker may do its chunks differently, to send something cheaper,
which this process turns into the result when it arrives (`Sending`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

logger = logging.getLogger(__name__)

Result = TypeVar("Result")
Sent = TypeVar("Sent")

RECORD_BYTES: Final = 4
MAX_CHUNKS: Final = 1024
"""At most this many chunks: their numbers (4 KiB) fit any pipe's buffer, so writing them never blocks."""
_LENGTH_BYTES: Final = 8


class ChunkQueue:
    """The numbers 0..count-1 in a pipe whose writing end is closed: `take` returns each number once across
    every process that shares the reading end, then None."""

    def __init__(self, count: int) -> None:
        if not 0 <= count <= MAX_CHUNKS:
            raise ValueError(f"{count} chunks: at most {MAX_CHUNKS}")
        self._reader, writer = os.pipe()
        try:
            _write_all(writer, b"".join(n.to_bytes(RECORD_BYTES, "little") for n in range(count)))
        finally:
            os.close(writer)

    def take(self) -> int | None:
        record = os.read(self._reader, RECORD_BYTES)
        if len(record) != RECORD_BYTES:
            return None
        return int.from_bytes(record, "little")

    def close(self) -> None:
        os.close(self._reader)


@dataclass(slots=True)
class CpuSplit:
    """Where the CPU time of work shared with workers went: this process's CPU seconds from its first chunk
    until the queue was empty (the part that ran beside the workers), and each worker's CPU seconds."""

    own: float = 0.0
    workers: list[float] = field(default_factory=list)


@dataclass(slots=True)
class SharedRun(Generic[Result]):
    """The result of every chunk, in chunk order, and where the CPU time went."""

    results: list[Result]
    cpu: CpuSplit


@dataclass(frozen=True, slots=True)
class Sending(Generic[Sent, Result]):
    """How a worker does a chunk (`work`, giving what it sends) and what this process makes of that when it
    arrives (`receive`, given the chunk number too): the same result `run_shared`'s own `work` gives."""

    work: Callable[[int], Sent]
    receive: Callable[[int, Sent], Result]


def run_shared(
    count: int,
    work: Callable[[int], Result],
    *,
    workers: int,
    sending: Sending[Any, Result] | None = None,
) -> SharedRun[Result]:
    """`work(number)` for every chunk number below `count`, in this process and `workers - 1` forked ones.

    `work` must give the same result in any process (a worker sees this process's memory as it was at the
    fork); `sending`, when given, is how workers do it instead. A chunk that raises here raises to the
    caller; in a worker it ends the worker, and the chunk is done again here."""
    queue = ChunkQueue(count)
    running: list[_Worker] = []
    try:
        running = [_fork(queue, sending.work if sending else work) for _ in range(workers - 1)]
        results: dict[int, Result] = {}

        def keep(frames: list[tuple[int, Any]]) -> None:
            for number, sent in frames:
                results[number] = sending.receive(number, sent) if sending else sent

        started = time.process_time()
        while (number := queue.take()) is not None:
            results[number] = work(number)
            for worker in running:
                keep(worker.receive())
        cpu = CpuSplit(time.process_time() - started)
        while running:
            keep(running[0].finish())
            cpu.workers.append(running.pop(0).cpu)
    finally:
        queue.close()
        for worker in running:  # an exception here: do not leave the workers behind
            worker.stop()
    missing = [number for number in range(count) if number not in results]
    if missing:
        logger.info("workers left %d chunks undone; doing them here", len(missing))
        for number in missing:
            results[number] = work(number)
    return SharedRun([results[number] for number in range(count)], cpu)


@dataclass(slots=True)
class _Worker:
    """A forked worker: its pid, the file it appends its frames to, and where the next frame begins."""

    pid: int
    results: int
    offset: int = 0
    broken: bool = False
    cpu: float = 0.0

    def receive(self) -> list[tuple[int, Any]]:
        """The chunks whose frames the worker has written whole so far, without waiting for more."""
        found: list[tuple[int, Any]] = []
        while not self.broken:
            written = os.fstat(self.results).st_size
            head = os.pread(self.results, _LENGTH_BYTES, self.offset)
            if len(head) < _LENGTH_BYTES:
                break
            end = self.offset + _LENGTH_BYTES + int.from_bytes(head, "little")
            if end > written:
                break
            start = self.offset + _LENGTH_BYTES
            try:
                found.append(pickle.loads(os.pread(self.results, end - start, start)))
            except Exception:
                logger.info("a worker's results could not be read; doing its chunks here", exc_info=True)
                self.broken = True
                break
            self.offset = end
        return found

    def finish(self) -> list[tuple[int, Any]]:
        """Every frame left, once the worker has ended; its CPU seconds in `cpu`."""
        _, status, usage = os.wait4(self.pid, 0)
        self.cpu = usage.ru_utime + usage.ru_stime
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            logger.info("a worker ended with status %d", status)
        try:
            return self.receive()
        finally:
            os.close(self.results)

    def stop(self) -> None:
        """End the worker now (this process is giving up) and reap it."""
        with contextlib.suppress(OSError):  # already gone
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # already reaped
            os.waitpid(self.pid, 0)
        with contextlib.suppress(OSError):  # already closed
            os.close(self.results)


def _fork(queue: ChunkQueue, work: Callable[[int], object]) -> _Worker:
    results = _scratch_file()
    pid = os.fork()
    if pid == 0:  # the worker: take chunks until none is left, and leave without the parent's cleanup
        code = 1
        try:
            while (number := queue.take()) is not None:
                frame = pickle.dumps((number, work(number)), protocol=pickle.HIGHEST_PROTOCOL)
                _write_all(results, len(frame).to_bytes(_LENGTH_BYTES, "little") + frame)
            code = 0
        finally:
            os._exit(code)
    return _Worker(pid, results)


def _scratch_file() -> int:
    """An anonymous file (in memory where the system has them): a worker appends to it and never waits for
    this process to read, as it would on a full pipe."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("extproc-guard-results", os.MFD_CLOEXEC)
    import tempfile  # only where there is no memfd (tempfile costs a check FILE run milliseconds to import)

    descriptor, path = tempfile.mkstemp(prefix="extproc-guard-results-")
    os.unlink(path)
    return descriptor


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
