"""Scraping real simulators: load reaches the picker, a stopped simulator turns unhealthy."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from epp.endpoints import Endpoint
from epp.picker import Health, Picker, PickerSettings
from epp.scraper import Scraper, ScrapeSettings
from epp.server import bind_listener
from epp.simulator import Simulator, SimulatorSettings


async def start_app(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    sock = bind_listener("127.0.0.1", 0)
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


async def test_scrapes_set_health_and_load_and_a_stopped_server_turns_unhealthy() -> None:
    sim_runner, sim_port = await start_app(Simulator(SimulatorSettings(name="s")).make_app())
    bare = web.Application()  # answers 404 on /metrics: up, but no load metrics
    bare_runner, bare_port = await start_app(bare)
    sim, plain = Endpoint("127.0.0.1", sim_port), Endpoint("127.0.0.1", bare_port)
    picker = Picker(PickerSettings(stale_after=0))
    picker.set_endpoints([sim, plain])
    scraper = Scraper(picker, ScrapeSettings(interval=0.1, timeout=1.0))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            await scraper.scrape_all(session)
            statuses = {s.endpoint: s for s in picker.statuses()}
            assert statuses[sim].health is Health.HEALTHY
            assert statuses[sim].score == 0
            assert statuses[plain].health is Health.HEALTHY
            assert statuses[plain].sample is None
            await sim_runner.cleanup()
            await scraper.scrape_all(session)
            statuses = {s.endpoint: s for s in picker.statuses()}
            assert statuses[sim].health is Health.UNHEALTHY
            assert "scrape failed" in statuses[sim].reason
            assert {picker.pick() for _ in range(3)} == {plain}
    finally:
        await sim_runner.cleanup()
        await bare_runner.cleanup()


async def test_the_scrape_loop_runs_until_cancelled() -> None:
    runner, port = await start_app(Simulator(SimulatorSettings(name="s")).make_app())
    picker = Picker(PickerSettings(stale_after=0))
    endpoint = Endpoint("127.0.0.1", port)
    picker.set_endpoints([endpoint])
    task = asyncio.create_task(Scraper(picker, ScrapeSettings(interval=0.05)).run())
    try:
        for _ in range(100):
            if picker.statuses()[0].health is Health.HEALTHY:
                break
            await asyncio.sleep(0.02)
        assert picker.statuses()[0].health is Health.HEALTHY
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
    assert task.cancelled()
