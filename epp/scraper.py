"""Scrape every endpoint's `/metrics` on an interval and report to the picker."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp

from epp.endpoints import Endpoint
from epp.exposition import parse_load_sample
from epp.picker import Picker

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScrapeSettings:
    interval: float = 0.5  # seconds; 0 turns scraping off (endpoints then take turns)
    timeout: float = 1.0


class Scraper:
    def __init__(self, picker: Picker, settings: ScrapeSettings) -> None:
        self._picker = picker
        self._settings = settings

    async def run(self) -> None:
        """Scrape until cancelled. The caller owns the task."""
        if self._settings.interval <= 0:
            return
        timeout = aiohttp.ClientTimeout(total=min(self._settings.timeout, max(self._settings.interval, 0.05)))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await self.scrape_all(session)
                await asyncio.sleep(self._settings.interval)

    async def scrape_all(self, session: aiohttp.ClientSession) -> None:
        endpoints = self._picker.endpoints
        await asyncio.gather(*(self._scrape(session, e) for e in endpoints))

    async def _scrape(self, session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
        try:
            async with session.get(endpoint.metrics_url) as response:
                if response.status == 404:
                    self._picker.record_sample(endpoint, None)
                    return
                if response.status != 200:
                    self._picker.record_failure(endpoint, f"metrics answered HTTP {response.status}")
                    return
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._picker.record_failure(endpoint, f"scrape failed: {type(exc).__name__}: {exc}".rstrip(": "))
            return
        self._picker.record_sample(endpoint, parse_load_sample(text))
