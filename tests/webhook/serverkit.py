"""What the admission-server test modules share besides their fixtures (those are in conftest.py): a
static-answer server and a metric read."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp

from tests.webhook.webhookrig import STATIC_SERVICES, ServerThread, running_server
from webhook.settings import ServeSettings, TLSSettings


@contextmanager
def static_server(tls: TLSSettings, **settings: Any) -> Iterator[ServerThread]:
    """A server on a loopback port of its own that answers the seed's EPP Service from `--service`."""
    with running_server(
        ServeSettings(tls=tls, host="127.0.0.1", port=0, services=STATIC_SERVICES, **settings)
    ) as running:
        yield running


async def metric_value(session: aiohttp.ClientSession, server: ServerThread, sample: str) -> float:
    """The value of one sample (name and labels, as `/metrics` prints them), 0 when it is not there yet."""
    async with session.get(server.url + "/metrics") as response:
        text = await response.text()
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
