"""Fixtures for the admission-server tests: a test PKI, a server that answers the seed's EPP Service from
`--service`, and an HTTPS client session that trusts the PKI.

`pki` and `server` are module-scoped: one per test module that asks for them. A module that needs a server
set up otherwise defines its own `server` fixture, which takes precedence over this one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.webhook.serverkit import static_server
from tests.webhook.webhookrig import Pki, ServerThread, client_context


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with static_server(pki.write_serving(tmp_path_factory.mktemp("tls"))) as running:
        yield running


@pytest.fixture
async def session(pki: Pki) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_context(pki))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as client:
        yield client
