"""Scrape every endpoint's `/metrics` on an interval and report to the picker.

Each endpoint is followed by its own loop, so a model server that is slow to answer (or hangs until the
timeout) delays only its own next scrape, never the others'; the timeout is its own setting, not the
interval, so a short interval does not turn one slow answer, or one stall of this process, into every
endpoint failing at once. The loops follow the picker's endpoint set as discovery changes it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp

from epp.endpoints import Endpoint
from epp.engines import DEFAULT_ENGINE, ENGINES, EngineMetrics, engine_metrics
from epp.exposition import parse_load_sample
from epp.picker import Picker

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScrapeSettings:
    interval: float = 0.5  # seconds; 0 turns scraping off (endpoints then take turns)
    timeout: float = 1.0  # seconds one scrape may take, whatever the interval
    default_engine: str = DEFAULT_ENGINE  # metric names for endpoints without an engine-type label


class Scraper:
    def __init__(self, picker: Picker, settings: ScrapeSettings) -> None:
        self._picker = picker
        self._settings = settings
        self._default = engine_metrics(settings.default_engine)
        self._unknown: set[str] = set()  # engine labels already warned about

    def _engine(self, endpoint: Endpoint) -> EngineMetrics:
        label = self._picker.engine_of(endpoint)
        if not label:
            return self._default
        engine = ENGINES.get(label)
        if engine is None:
            if label not in self._unknown:
                self._unknown.add(label)
                logger.warning(
                    "unknown engine type engine=%r endpoint=%s using=%s known=%s",
                    label,
                    endpoint,
                    self._default.name,
                    ",".join(sorted(ENGINES)),
                )
            return self._default
        return engine

    async def run(self) -> None:
        """Scrape until cancelled. The caller owns the task."""
        interval = self._settings.interval
        if interval <= 0:
            return
        loops: dict[Endpoint, asyncio.Task[None]] = {}
        timeout = aiohttp.ClientTimeout(total=max(self._settings.timeout, 0.05))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                while True:
                    current = set(self._picker.endpoints)
                    for gone in loops.keys() - current:
                        loops.pop(gone).cancel()
                    for new in current - loops.keys():
                        loops[new] = asyncio.create_task(self._follow(session, new), name=f"epp-scrape-{new}")
                    await asyncio.sleep(min(interval, 1.0))  # how soon a new endpoint is first scraped
            finally:
                for task in loops.values():
                    task.cancel()
                await asyncio.gather(*loops.values(), return_exceptions=True)

    async def _follow(self, session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
        """Scrape one endpoint every interval (measured from the start of each scrape) until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self._scrape(session, endpoint)
            await asyncio.sleep(max(0.0, self._settings.interval - (loop.time() - started)))

    async def scrape_all(self, session: aiohttp.ClientSession) -> None:
        """Scrape every endpoint once, together (for callers that drive scraping themselves)."""
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
        self._picker.record_sample(endpoint, parse_load_sample(text, self._engine(endpoint)))
