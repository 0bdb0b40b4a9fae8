"""The tests' bounded wait: it returns once the condition holds, else fails naming what it awaited."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.polling import WaitFailed, wait_until, wait_until_async


def test_wait_until_returns_once_the_condition_holds() -> None:
    calls = itertools.count(1)
    wait_until(lambda: next(calls) >= 3, "the third call", interval=0)
    assert next(calls) == 4


def test_wait_until_fails_after_its_bound_naming_what_it_awaited() -> None:
    with pytest.raises(WaitFailed, match=r"^timed out after 0\.05s waiting for the answer$"):
        wait_until(lambda: False, "the answer", timeout=0.05, interval=0.01)


def test_wait_until_gives_up_at_once_when_the_source_has_stopped() -> None:
    checks = []

    def never() -> bool:
        checks.append(1)
        return False

    with pytest.raises(WaitFailed, match=r"^stopped waiting for the answer: the server exited with 1$"):
        wait_until(never, "the answer", timeout=60, alive=lambda: "the server exited with 1")
    assert len(checks) == 1


def test_wait_failed_is_an_assertion_error() -> None:
    assert issubclass(WaitFailed, AssertionError)


async def test_wait_until_async_takes_a_plain_or_a_coroutine_condition() -> None:
    calls = itertools.count(1)

    async def asked() -> bool:
        return next(calls) >= 3

    await wait_until_async(asked, "the third call", interval=0)
    await wait_until_async(lambda: next(calls) >= 5, "the fifth call", interval=0)
    assert next(calls) == 6


async def test_wait_until_async_bounds_a_check_that_never_returns() -> None:
    async def hangs() -> bool:
        await asyncio.Event().wait()
        return True

    with pytest.raises(WaitFailed, match=r"^timed out after 0\.05s waiting for a hanging check$"):
        await wait_until_async(hangs, "a hanging check", timeout=0.05)


async def test_wait_until_async_gives_up_at_once_when_the_source_has_stopped() -> None:
    with pytest.raises(WaitFailed, match=r"^stopped waiting for the fix: the task ended$"):
        await wait_until_async(lambda: False, "the fix", timeout=60, alive=lambda: "the task ended")


async def test_a_timeout_inside_the_check_is_the_checks_own_error() -> None:
    async def times_out() -> bool:
        raise TimeoutError("the server did not answer")

    with pytest.raises(TimeoutError, match="the server did not answer"):
        await wait_until_async(times_out, "an answer", timeout=60)
