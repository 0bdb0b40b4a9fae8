"""Scraping real simulators: load reaches the picker, a stopped simulator turns unhealthy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from epp.endpoints import Endpoint
from epp.picker import Health, Picker, PickerSettings
from epp.scraper import Scraper, ScrapeSettings
from epp.server import bind_listener
from epp.simulator import Simulator, SimulatorSettings
from tests.polling import wait_until_async


async def start_app(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    sock = bind_listener("127.0.0.1", 0)
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """`app` on a loopback port for the block; yields the port."""
    runner, port = await start_app(app)
    try:
        yield port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def scraping(picker: Picker, settings: ScrapeSettings) -> AsyncIterator[asyncio.Task[None]]:
    """The scrape loop running for the block, cancelled and awaited on leaving it."""
    task = asyncio.create_task(Scraper(picker, settings).run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


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
    async with serving(Simulator(SimulatorSettings(name="s")).make_app()) as port:
        picker = Picker(PickerSettings(stale_after=0))
        endpoint = Endpoint("127.0.0.1", port)
        picker.set_endpoints([endpoint])
        async with scraping(picker, ScrapeSettings(interval=0.05)) as task:
            await wait_until_async(
                lambda: picker.statuses()[0].health is Health.HEALTHY, "a healthy endpoint"
            )
            assert picker.statuses()[0].health is Health.HEALTHY
    assert task.cancelled()


class CountingMetrics:
    """A real HTTP server whose /metrics answers after `delay` seconds and counts the scrapes it saw."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.hits = 0
        self.app = web.Application()
        self.app.router.add_get("/metrics", self.metrics)

    async def metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        await asyncio.sleep(self.delay)
        return web.Response(text="vllm:num_requests_waiting 0\nvllm:num_requests_running 1\n")


def health(picker: Picker, endpoint: Endpoint) -> Health:
    return {s.endpoint: s.health for s in picker.statuses()}[endpoint]


async def test_a_hanging_endpoint_holds_back_only_its_own_scrapes() -> None:
    quick, hanging = CountingMetrics(delay=0.0), CountingMetrics(delay=3.0)
    async with serving(quick.app) as quick_port, serving(hanging.app) as hanging_port:
        fast, stuck = Endpoint("127.0.0.1", quick_port), Endpoint("127.0.0.1", hanging_port)
        picker = Picker(PickerSettings(stale_after=0))
        picker.set_endpoints([fast, stuck])
        async with scraping(picker, ScrapeSettings(interval=0.05, timeout=0.8)):
            await wait_until_async(lambda: hanging.hits == 1, "the first scrape of the hanging endpoint")
            # while the hanging endpoint's first scrape is still waiting, the quick one is scraped again
            # and again
            await wait_until_async(lambda: quick.hits >= 5, "five scrapes of the quick endpoint", timeout=0.6)
            assert hanging.hits == 1
            assert health(picker, fast) is Health.HEALTHY
            assert health(picker, stuck) is Health.UNKNOWN
            # the timeout then fails the hanging one alone
            await wait_until_async(lambda: health(picker, stuck) is Health.UNHEALTHY, "the scrape timeout")
            assert "TimeoutError" in {s.endpoint: s.reason for s in picker.statuses()}[stuck]
            assert health(picker, fast) is Health.HEALTHY


async def test_an_answer_slower_than_the_interval_but_within_the_timeout_is_healthy() -> None:
    slow = CountingMetrics(delay=0.3)
    async with serving(slow.app) as port:
        endpoint = Endpoint("127.0.0.1", port)
        picker = Picker(PickerSettings(stale_after=0))
        picker.set_endpoints([endpoint])
        async with scraping(picker, ScrapeSettings(interval=0.05, timeout=2.0)):
            await wait_until_async(lambda: health(picker, endpoint) is Health.HEALTHY, "a healthy endpoint")
            await wait_until_async(lambda: slow.hits >= 3, "three slow scrapes")
            assert health(picker, endpoint) is Health.HEALTHY


async def test_the_scrape_loops_follow_the_endpoint_set() -> None:
    first, second = CountingMetrics(delay=0.0), CountingMetrics(delay=0.0)
    async with serving(first.app) as first_port, serving(second.app) as second_port:
        one, two = Endpoint("127.0.0.1", first_port), Endpoint("127.0.0.1", second_port)
        picker = Picker(PickerSettings(stale_after=0))
        picker.set_endpoints([one])
        async with scraping(picker, ScrapeSettings(interval=0.05)):
            await wait_until_async(lambda: first.hits >= 2, "two scrapes of the first endpoint")
            assert second.hits == 0
            picker.set_endpoints([two])  # discovery replaced the first endpoint with the second
            await wait_until_async(lambda: second.hits >= 2, "two scrapes of the second endpoint")
            await asyncio.sleep(0.1)  # a scrape of the first one may have been under way
            settled = first.hits
            await asyncio.sleep(0.3)
            assert first.hits == settled
            assert health(picker, two) is Health.HEALTHY


async def test_each_endpoint_is_read_with_its_engine_metric_names_and_unknown_labels_use_the_default() -> (
    None
):
    vllm_app = Simulator(SimulatorSettings(name="v", lora_adapters=("sql-lora",))).make_app()
    sglang_app = Simulator(SimulatorSettings(name="s", engine="sglang")).make_app()
    async with serving(vllm_app) as vllm_port, serving(sglang_app) as sglang_port:
        vllm, sglang = Endpoint("127.0.0.1", vllm_port), Endpoint("127.0.0.1", sglang_port)
        picker = Picker(PickerSettings(stale_after=0))
        scraper = Scraper(picker, ScrapeSettings(interval=0.1, timeout=1.0))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            picker.set_endpoints([vllm, sglang], engines={sglang: "sglang"})
            await scraper.scrape_all(session)
            read = {s.endpoint: s.sample for s in picker.statuses()}
            picker.set_endpoints([vllm, sglang], engines={vllm: "tgi", sglang: ""})
            await scraper.scrape_all(session)
            default = {s.endpoint: s.sample for s in picker.statuses()}
    assert read[vllm] is not None
    assert read[vllm].running_adapters == {"sql-lora"}
    assert read[sglang] is not None  # SGLang's names, read because of the label
    assert default[vllm] is not None  # an unknown label falls back to the default engine (vLLM)
    assert default[sglang] is None  # without the label, vLLM names: nothing to read
