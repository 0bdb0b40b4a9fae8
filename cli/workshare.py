"""Chunks of work done by this process and forked workers at once, pulled from one queue until none is left.

The chunks are numbered into a pipe before forking; every process takes the next number with one read of
its 4-byte record (a pipe read is atomic, so each number is taken by one process) and does that chunk, until
the pipe is empty. Whatever each chunk costs, the processes finish within about one chunk of each other.

A worker sends each chunk's result back as soon as it has it: one frame (length, then the pickled chunk
number and result) on its own pipe. This process reads what has arrived between its own chunks, so the
unpickling happens while the workers still work and a worker never waits on a full pipe for long. Results
come back in chunk order; a chunk whose result never arrives (a worker that died or sent garbage) is done
here. Results must pickle; a worker may do its chunks differently (`in_worker`), to make them cheaper to send.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

RECORD_BYTES: Final = 4
MAX_CHUNKS: Final = 1024
"""At most this many chunks: their numbers (4 KiB) fit any pipe's buffer, so writing them never blocks."""
_LENGTH_BYTES: Final = 8
_READ_BYTES: Final = 1 << 20


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
class SharedRun(Generic[Result]):
    """The result of every chunk (in chunk order), and where the CPU time went: this process's CPU seconds
    from the first chunk until the queue was empty (the part that ran beside the workers), and each
    worker's CPU seconds."""

    results: list[Result]
    own_cpu: float = 0.0
    worker_cpu: list[float] = field(default_factory=list)


def run_shared(
    count: int,
    work: Callable[[int], Result],
    *,
    workers: int,
    in_worker: Callable[[int], Result] | None = None,
) -> SharedRun[Result]:
    """`work(number)` for every chunk number below `count`, in this process and `workers - 1` forked ones.

    `work` must give the same result in any process (a worker sees this process's memory as it was at the
    fork); `in_worker`, when given, is what a worker does instead (the same results, cheaper to send). A
    chunk that raises here raises to the caller; in a worker it ends the worker, and the chunk is done
    again here."""
    queue = ChunkQueue(count)
    running: list[_Worker[Result]] = []
    try:
        running = [_fork(queue, in_worker or work) for _ in range(workers - 1)]
        results: dict[int, Result] = {}
        started = time.process_time()
        while (number := queue.take()) is not None:
            results[number] = work(number)
            for worker in running:
                results.update(worker.receive())
        own_cpu = time.process_time() - started
        worker_cpu = []
        while running:
            results.update(running[0].finish())
            worker_cpu.append(running.pop(0).cpu)
    finally:
        queue.close()
        for worker in running:  # an exception here: do not leave the workers behind
            worker.stop()
    missing = [number for number in range(count) if number not in results]
    if missing:
        logger.info("workers left %d chunks undone; doing them here", len(missing))
        for number in missing:
            results[number] = work(number)
    return SharedRun([results[number] for number in range(count)], own_cpu, worker_cpu)


@dataclass(slots=True)
class _Worker(Generic[Result]):
    """A forked worker: its pid, the reading end of its results pipe, and the bytes read but not yet used."""

    pid: int
    reader: int
    buffer: bytearray = field(default_factory=bytearray)
    used: int = 0
    broken: bool = False
    cpu: float = 0.0

    def receive(self) -> Iterator[tuple[int, Result]]:
        """The chunks whose frames have fully arrived, without waiting for more."""
        while True:
            try:
                data = os.read(self.reader, _READ_BYTES)
            except BlockingIOError:
                break
            if not data:
                break
            self.buffer += data
        return self._frames()

    def finish(self) -> Iterator[tuple[int, Result]]:
        """Every frame left (waiting for the worker to end), and the worker's CPU seconds in `cpu`."""
        os.set_blocking(self.reader, True)
        with os.fdopen(self.reader, "rb", buffering=0) as pipe:
            while data := pipe.read(_READ_BYTES):
                self.buffer += data
        _, status, usage = os.wait4(self.pid, 0)
        self.cpu = usage.ru_utime + usage.ru_stime
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            logger.info("a worker ended with status %d", status)
        return self._frames()

    def stop(self) -> None:
        """End the worker now (this process is giving up) and reap it."""
        with contextlib.suppress(OSError):  # already closed
            os.close(self.reader)
        with contextlib.suppress(OSError):  # already gone
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # already reaped
            os.waitpid(self.pid, 0)

    def _frames(self) -> Iterator[tuple[int, Result]]:
        found: list[tuple[int, Result]] = []
        buffer, used = self.buffer, self.used
        while not self.broken and len(buffer) - used >= _LENGTH_BYTES:
            size = int.from_bytes(buffer[used : used + _LENGTH_BYTES], "little")
            end = used + _LENGTH_BYTES + size
            if len(buffer) < end:
                break
            try:
                number, result = pickle.loads(buffer[used + _LENGTH_BYTES : end])
            except Exception:
                logger.info("a worker's results could not be read; doing its chunks here", exc_info=True)
                self.broken = True
                break
            found.append((number, result))
            used = end
        if used == len(buffer):
            buffer.clear()
            used = 0
        self.used = used
        return iter(found)


def _fork(queue: ChunkQueue, work: Callable[[int], Result]) -> _Worker[Result]:
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: take chunks until none is left, and leave without the parent's cleanup
        code = 1
        try:
            os.close(reader)
            while (number := queue.take()) is not None:
                frame = pickle.dumps((number, work(number)), protocol=pickle.HIGHEST_PROTOCOL)
                _write_all(writer, len(frame).to_bytes(_LENGTH_BYTES, "little") + frame)
            os.close(writer)
            code = 0
        finally:
            os._exit(code)
    os.close(writer)
    os.set_blocking(reader, False)
    return _Worker(pid, reader)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
