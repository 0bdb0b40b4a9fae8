"""The server's log output: one formatted line per record, batched, flushed at once for warnings."""

from __future__ import annotations

import io
import logging
import re

import pytest

from epp.logoutput import BatchedLineHandler


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
