"""What the admission-server test modules share: their fixtures, a static-answer server, a bounded wait and
a metric read.

A module takes a fixture by importing its function (`pki_fixture`, with `# noqa: F401`): pytest knows it by
the name a test asks for (`pki`), and the function's own name differs so that a test's `pki` parameter does
not shadow the import. A module-scoped fixture is still one per test module that imports it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest

from tests.webhook.webhookrig import STATIC_SERVICES, Pki, ServerThread, client_context, running_server
from webhook.settings import ServeSettings, TLSSettings

WAIT_SECONDS = 10.0


@contextmanager
def static_server(tls: TLSSettings, **settings: Any) -> Iterator[ServerThread]:
    """A server on a loopback port of its own that answers the seed's EPP Service from `--service`."""
    with running_server(
        ServeSettings(tls=tls, host="127.0.0.1", port=0, services=STATIC_SERVICES, **settings)
    ) as running:
        yield running


@pytest.fixture(scope="module", name="pki")
def pki_fixture() -> Pki:
    return Pki()


@pytest.fixture(scope="module", name="server")
def static_server_fixture(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with static_server(pki.write_serving(tmp_path_factory.mktemp("tls"))) as running:
        yield running


@pytest.fixture(name="session")
async def session_fixture(pki: Pki) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_context(pki))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as client:
        yield client


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait, bounded, for something another thread (the server's cache or certificate poller) makes true."""
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            while not await check():  # noqa: ASYNC110 - the state changes in the server's threads
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {WAIT_SECONDS}s: {what}")


async def metric_value(session: aiohttp.ClientSession, server: ServerThread, sample: str) -> float:
    """The value of one sample (name and labels, as `/metrics` prints them), 0 when it is not there yet."""
    async with session.get(server.url + "/metrics") as response:
        text = await response.text()
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
