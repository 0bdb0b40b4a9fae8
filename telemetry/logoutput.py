"""A cheap log output for the services: one line per event on stderr, written in batches.

The EPP logs a line per decision and per stream, the admission server one per review (its audit trail),
thousands of times a second under load.
`logging.StreamHandler` flushes (one write system call) per line and the default formatter builds a dict
and a `strftime` per record; this handler buffers, formats the date once a second, and is flushed every
100 ms by the server (and at once for warnings and errors), so lines stay in order and arrive within a
fraction of a second. Text that cannot be encoded is escaped, never an error.

`log_info` is `logger.info` for the per-request lines: when this handler is the only one the record would
reach (the services' own set-up), it writes the line without building a `LogRecord`, which is half the
cost of a line. Any other handler on the way (a test's log capture, a filter, a second output) sends the
record through `logging` as usual, so nothing that listens misses a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import select
import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

FLUSH_INTERVAL = 0.1
STDERR_BUFFER_BYTES = 1 << 16


class LineFormatter(logging.Formatter):
    """`2026-01-02T03:04:05.678Z INFO epp.processor message`; the date part is formatted once a second."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""
        self._msecs = [f".{ms:03d}Z " for ms in range(1000)]  # the millisecond part, formatted once

    def stamp(self, created: float) -> str:
        """`2026-01-02T03:04:05.678Z ` for the epoch time `created`."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        ms = int((created - second) * 1000)
        return self._stamp + (self._msecs[ms] if 0 <= ms < 1000 else f".{ms:03d}Z ")

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.stamp(record.created)}{record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class BatchedLineHandler(logging.Handler):
    """Writes formatted lines to a buffered text stream; flushes at once only for warnings and errors."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream if stream is not None else open_buffered_stderr()
        self._lines = LineFormatter()
        self.setFormatter(self._lines)

    def write_info(self, name: str, message: str) -> None:
        """The line an INFO record of logger `name` with `message` would give, without the record."""
        line = f"{self._lines.stamp(time.time())}INFO {name} {message}\n"
        with self.lock:  # type: ignore[union-attr]  # createLock() ran in Handler.__init__
            try:
                self._stream.write(line)
            except Exception:
                self.handleError(logging.makeLogRecord({"name": name, "msg": message}))

    def handle(self, record: logging.LogRecord) -> bool:
        """`Handler.handle` without the filter pass when there are no filters (one record per event)."""
        if self.filters:
            return super().handle(record)
        with self.lock:  # type: ignore[union-attr]  # createLock() ran in Handler.__init__
            self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._stream.write(self.format(record) + "\n")
            if record.levelno >= logging.WARNING:
                self._stream.flush()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


def sole_line_handler(logger: logging.Logger) -> BatchedLineHandler | None:
    """The batched handler if it is the only handler an INFO record of `logger` reaches, with nothing that
    filters or reformats it on the way; None otherwise."""
    if logger.filters:
        return None
    found: BatchedLineHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if (
                found is not None
                or type(handler) is not BatchedLineHandler
                or handler.filters
                or handler.level > logging.INFO
                or handler.formatter is not handler._lines
            ):
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


def log_info(logger: logging.Logger, message: str, *args: object) -> None:
    """`logger.info(message, *args)`, written straight to the batched handler when only it would see it."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = sole_line_handler(logger)
    if handler is not None:
        try:
            line = message % args if args else message
        except Exception:  # a bad format: logging reports it (handleError), the caller goes on
            pass
        else:
            handler.write_info(logger.name, line)
            return
    logger.info(message, *args, stacklevel=2)


def open_buffered_stderr() -> TextIO:
    """stderr's file descriptor behind a 64 KiB buffer (stderr itself if it has no descriptor)."""
    try:
        # Lives as long as the process; closing it would close stderr.
        return open(
            sys.stderr.fileno(),
            "w",
            buffering=STDERR_BUFFER_BYTES,
            closefd=False,
            encoding="utf-8",
            errors="backslashreplace",
        )
    except (OSError, ValueError, io.UnsupportedOperation):
        return sys.stderr


class LineChunkWriter(io.RawIOBase):
    """Writes to a file descriptor in pieces of at most PIPE_BUF bytes that end at a line's end.

    Several processes that share one stderr (`serve --workers`: the supervisor and its workers) then never
    interleave inside a line: a write of up to PIPE_BUF bytes to a pipe is atomic, and so is a write to a
    file they share. Only a single line longer than PIPE_BUF can still be split.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: ReadableBuffer, /) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if size > select.PIPE_BUF:
            end = bytes(view[: select.PIPE_BUF]).rfind(b"\n") + 1
            size = end or select.PIPE_BUF
        return os.write(self._fd, view[:size])


def open_line_atomic_stderr() -> TextIO:
    """stderr's file descriptor behind a 64 KiB buffer that writes whole lines (`LineChunkWriter`); stderr
    itself if it has no descriptor."""
    try:
        fd = sys.stderr.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return sys.stderr
    buffered = io.BufferedWriter(LineChunkWriter(fd), buffer_size=STDERR_BUFFER_BYTES)
    return io.TextIOWrapper(buffered, encoding="utf-8", errors="backslashreplace")


def install_log_output(
    level: int, *, stream: TextIO | None = None, logger_name: str = ""
) -> BatchedLineHandler:
    """Send the records of `logger_name` (default: every logger) to one batched stderr handler.

    Call once per process, at start.
    """
    # The Logging HOWTO's "Optimization" switches: these lines show no thread, process or caller
    # information, so none is looked up per record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    handler = BatchedLineHandler(stream)
    root = logging.getLogger(logger_name)
    root.setLevel(level)
    root.handlers[:] = [handler]
    if logger_name:
        root.propagate = False
    return handler


def install_epp_log_output(level: int) -> BatchedLineHandler:
    """Send the `epp` loggers' records to a batched stderr handler (call once per process, at start)."""
    return install_log_output(level, logger_name="epp")


async def flush_periodically(handler: logging.Handler) -> None:
    """Flush `handler` every FLUSH_INTERVAL until cancelled (then once more)."""
    try:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            handler.flush()
    finally:
        handler.flush()
