"""The EPP's log output: one line per event on stderr, written in batches.

A decision and a stream end each log a line at info, thousands of times a second. `logging.StreamHandler`
flushes (one write system call) per line; this handler buffers and the server flushes it every 100 ms,
and at once for warnings and errors, so lines stay in order and arrive within a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
import time
from typing import TextIO

FLUSH_INTERVAL = 0.1


class _LineFormatter(logging.Formatter):
    """`2026-01-02T03:04:05.678Z INFO epp.processor message`; the date part is formatted once a second."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = (
            f"{self._stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name} {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class BatchedLineHandler(logging.Handler):
    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream if stream is not None else _buffered_stderr()
        self.setFormatter(_LineFormatter())

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


def _buffered_stderr() -> TextIO:
    try:
        return open(sys.stderr.fileno(), "w", buffering=1 << 16, closefd=False, encoding="utf-8")
    except (OSError, ValueError, io.UnsupportedOperation):
        return sys.stderr


def install_epp_log_output(level: int) -> BatchedLineHandler:
    """Send the `epp` loggers' records to a batched stderr handler (call once per process, at start)."""
    # The Logging HOWTO's "Optimization" switches: these lines show no thread, process or caller
    # information, so none is looked up per record (the caller walk alone is a third of a record's cost).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    handler = BatchedLineHandler()
    root = logging.getLogger("epp")
    root.setLevel(level)
    root.handlers[:] = [handler]
    root.propagate = False
    return handler


async def flush_periodically(handler: logging.Handler) -> None:
    """Flush `handler` every FLUSH_INTERVAL until cancelled (then once more)."""
    try:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            handler.flush()
    finally:
        handler.flush()
