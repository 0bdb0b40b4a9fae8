"""The server's log output: one formatted line per record, batched, flushed at once for warnings."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import select
import socket
from collections.abc import Iterator

import pytest

from telemetry.logoutput import BatchedLineHandler, LineChunkWriter, log_info, sole_line_handler


class CountingStream(io.StringIO):
    """A text stream that counts flushes (the real one is stderr behind a buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


@pytest.fixture
def logged() -> tuple[logging.Logger, CountingStream]:
    stream = CountingStream()
    logger = logging.getLogger("webhook.test_logoutput")
    logger.handlers[:] = [BatchedLineHandler(stream)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_a_record_is_one_line_with_utc_time_level_logger_and_message(
    logged: tuple[logging.Logger, CountingStream],
) -> None:
    logger, stream = logged
    logger.info("review webhook=%s uid=%s", "mutate", "u-1")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO webhook\.test_logoutput "
        r"review webhook=mutate uid=u-1\n",
        stream.getvalue(),
    )


def test_info_lines_wait_for_the_flush_and_warnings_flush_at_once(
    logged: tuple[logging.Logger, CountingStream],
) -> None:
    logger, stream = logged
    logger.info("one")
    logger.info("two")
    assert stream.flushes == 0
    logger.warning("three")
    assert stream.flushes == 1
    assert [line.rsplit(" ", 1)[1] for line in stream.getvalue().splitlines()] == ["one", "two", "three"]


def test_a_message_with_percent_signs_and_no_arguments_is_written_as_is(
    logged: tuple[logging.Logger, CountingStream],
) -> None:
    logger, stream = logged
    logger.info("review uid=100%s")
    assert stream.getvalue().endswith(" review uid=100%s\n")


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def two_level() -> Iterator[tuple[logging.Logger, logging.Logger, CountingStream]]:
    """`parent` holds the batched handler and does not propagate; `child` logs through it.

    pytest attaches its log capture to non-propagating loggers too, which would (rightly) send every
    line through `logging`; the handler list is set again inside each test, where that has happened."""
    stream = CountingStream()
    parent = logging.getLogger("webhook.test_logoutput_fast")
    parent.setLevel(logging.INFO)
    parent.propagate = False
    child = logging.getLogger("webhook.test_logoutput_fast.child")
    child.handlers[:] = []
    child.filters[:] = []
    saved = list(parent.handlers)
    parent.handlers[:] = [BatchedLineHandler(stream)]
    yield parent, child, stream
    parent.handlers[:] = saved


def only_the_batched_handler(parent: logging.Logger) -> None:
    parent.handlers[:] = [h for h in parent.handlers if isinstance(h, BatchedLineHandler)]


def test_the_direct_line_is_the_line_a_record_gives(
    two_level: tuple[logging.Logger, logging.Logger, CountingStream],
) -> None:
    parent, child, stream = two_level
    only_the_batched_handler(parent)
    assert sole_line_handler(child) is parent.handlers[0]
    log_info(child, "decision request_id=%s decision_us=%d", "r-1", 12)
    child.info("decision request_id=%s decision_us=%d", "r-1", 12)
    direct, through_logging = stream.getvalue().splitlines()
    assert (
        direct[25:]
        == through_logging[25:]
        == ("INFO webhook.test_logoutput_fast.child decision request_id=r-1 decision_us=12")
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", direct[:25])
    assert stream.flushes == 0  # info lines wait for the periodic flush on both paths


def test_a_second_handler_on_the_way_gets_the_record_and_the_line_is_still_written(
    two_level: tuple[logging.Logger, logging.Logger, CountingStream],
) -> None:
    parent, child, stream = two_level
    only_the_batched_handler(parent)
    listener = ListHandler()
    child.addHandler(listener)
    try:
        assert sole_line_handler(child) is None
        log_info(child, "stream request_id=%s", "r-2")
    finally:
        child.removeHandler(listener)
    assert [r.getMessage() for r in listener.records] == ["stream request_id=r-2"]
    assert listener.records[0].funcName == (
        "test_a_second_handler_on_the_way_gets_the_record_and_the_line_is_still_written"
    )  # the caller, not log_info
    assert stream.getvalue().endswith(" stream request_id=r-2\n")


def test_a_filter_on_the_logger_or_the_handler_is_honoured(
    two_level: tuple[logging.Logger, logging.Logger, CountingStream],
) -> None:
    parent, child, stream = two_level
    only_the_batched_handler(parent)
    drop_all = logging.Filter("nothing.matches.this")
    parent.handlers[0].addFilter(drop_all)
    try:
        assert sole_line_handler(child) is None
        log_info(child, "filtered out")
    finally:
        parent.handlers[0].removeFilter(drop_all)
    child.addFilter(drop_all)
    try:
        log_info(child, "filtered out too")
    finally:
        child.removeFilter(drop_all)
    assert stream.getvalue() == ""


def test_below_the_level_nothing_is_formatted_or_written(
    two_level: tuple[logging.Logger, logging.Logger, CountingStream],
) -> None:
    parent, child, stream = two_level
    parent.setLevel(logging.WARNING)

    class Loud:
        def __str__(self) -> str:
            raise AssertionError("formatted below the level")

    log_info(child, "quiet %s", Loud())
    assert stream.getvalue() == ""


def test_a_stream_that_fails_to_write_does_not_raise(
    two_level: tuple[logging.Logger, logging.Logger, CountingStream],
    capsys: pytest.CaptureFixture[str],
) -> None:
    parent, child, stream = two_level
    only_the_batched_handler(parent)
    stream.close()
    log_info(child, "into a closed stream")  # logging's own error report, never an exception
    assert "into a closed stream" in capsys.readouterr().err


def test_a_bad_format_is_reported_by_logging_and_never_raises_into_the_caller(
    two_level: tuple[logging.Logger, logging.Logger, CountingStream],
    capsys: pytest.CaptureFixture[str],
) -> None:
    parent, child, stream = two_level
    only_the_batched_handler(parent)
    log_info(child, "decision request_id=%s decision_us=%d", "r-3", "not a number")
    log_info(child, "next line")
    assert "--- Logging error ---" in capsys.readouterr().err
    assert stream.getvalue().endswith(" next line\n")


def writes_through_line_chunks(lines: list[str]) -> list[bytes]:
    """Each write system call the line-chunked stderr stack makes for `lines`, one message per write."""
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sender, receiver:
        stream = io.TextIOWrapper(
            io.BufferedWriter(LineChunkWriter(sender.fileno()), buffer_size=1 << 16), encoding="utf-8"
        )
        for line in lines:
            stream.write(line + "\n")
        stream.flush()
        receiver.setblocking(False)
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(receiver.recv(1 << 17))
        return messages


def test_line_chunked_writes_are_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    lines = [f"line {number} " + "x" * (number % 300) for number in range(400)]

    writes = writes_through_line_chunks(lines)

    assert len(writes) > 1
    assert all(len(write) <= select.PIPE_BUF and write.endswith(b"\n") for write in writes)
    assert b"".join(writes).decode().splitlines() == lines


def test_a_line_longer_than_pipe_buf_is_still_written_whole() -> None:
    lines = ["short", "y" * (select.PIPE_BUF * 2 + 10), "after"]

    writes = writes_through_line_chunks(lines)

    assert b"".join(writes).decode().splitlines() == lines
    assert all(len(write) <= select.PIPE_BUF for write in writes)
