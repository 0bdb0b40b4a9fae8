"""The tests' one bounded wait: check a condition until it holds, or fail saying what was awaited.

`wait_until` polls from plain (thread) code, `wait_until_async` from a coroutine; there the condition may
also be a coroutine function (one that asks a server, or runs a blocking read in a thread). Both give up
at once when `alive` reports that whatever should make the condition true has stopped (a process exited,
a task ended), and name the reason.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

TIMEOUT = 10.0  # seconds; a generous bound on a loaded two-core machine for in-process state
INTERVAL = 0.02  # seconds between checks (of cheap, in-process state; pass more for a subprocess)


class WaitFailed(AssertionError):
    """What a bounded wait awaited did not happen: the bound ran out, or its source stopped."""


def wait_until(
    check: Callable[[], bool],
    what: str,
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    alive: Callable[[], str | None] | None = None,
) -> None:
    """Call `check` every `interval` seconds until it is true; raise `WaitFailed` after `timeout` seconds,
    or as soon as `alive` returns a reason (it returns None while the source of the change still runs)."""
    deadline = time.monotonic() + timeout
    while not check():
        _give_up_if_stopped(what, alive)
        if time.monotonic() >= deadline:
            raise WaitFailed(_timed_out(what, timeout))
        time.sleep(interval)


async def wait_until_async(
    check: Callable[[], bool | Awaitable[bool]],
    what: str,
    *,
    timeout: float = TIMEOUT,  # noqa: ASYNC109 - the bound is the point: its error names what was awaited
    interval: float = INTERVAL,
    alive: Callable[[], str | None] | None = None,
) -> None:
    """`wait_until` for a coroutine: the bound also covers a check that awaits and does not return."""
    bound = asyncio.timeout(timeout)
    try:
        async with bound:
            while not await _holds(check):
                _give_up_if_stopped(what, alive)
                await asyncio.sleep(interval)
    except TimeoutError:
        if not bound.expired():
            raise  # the check's own timeout, not the wait's
        raise WaitFailed(_timed_out(what, timeout)) from None


async def _holds(check: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = check()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


def _give_up_if_stopped(what: str, alive: Callable[[], str | None] | None) -> None:
    if alive is not None and (reason := alive()) is not None:
        raise WaitFailed(f"stopped waiting for {what}: {reason}")


def _timed_out(what: str, timeout: float) -> str:
    return f"timed out after {timeout:g}s waiting for {what}"
