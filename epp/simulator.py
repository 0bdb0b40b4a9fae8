"""A model-server simulator: OpenAI-style completions and vLLM-style gauges that follow its own queue.

Each request waits for one of `concurrency` slots (counted as waiting), holds it for `latency` seconds
(counted as running), then answers. KV-cache usage is the share of slots in use. Every answer names the
server in `x-served-by`, so a caller can see where the gateway sent it. The gauges carry the metric names
of the simulated engine (`vllm`, or `sglang`); with LoRA adapters set, vLLM's `lora_requests_info` lists
them as running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import time
from dataclasses import dataclass

from aiohttp import web

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    name: str = ""  # shown in x-served-by; defaults to HOST:PORT
    model: str = "sim-model"
    latency: float = 0.005  # seconds each request holds a slot
    concurrency: int = 8
    engine: str = "vllm"  # whose metric names /metrics uses: "vllm" or "sglang"
    lora_adapters: tuple[str, ...] = ()  # reported as running LoRA adapters (vllm only)


class _Queue:
    """The simulator's load: slots in use and requests waiting for one."""

    def __init__(self, concurrency: int) -> None:
        self.slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.waiting = 0
        self.running = 0
        self.served = 0
        self.rejected = 0


class Simulator:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self._queue: _Queue | None = None
        self._ids = itertools.count(1)
        self.name = settings.name

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=4 << 20)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.on_startup.append(self._on_startup)
        return app

    async def _on_startup(self, _: web.Application) -> None:
        self._queue = _Queue(max(self.settings.concurrency, 1))

    @property
    def queue(self) -> _Queue:
        if self._queue is None:
            raise RuntimeError("the simulator app has not started")
        return self._queue

    async def _completions(self, request: web.Request) -> web.Response:
        return await self._serve(request, chat=False)

    async def _chat(self, request: web.Request) -> web.Response:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, *, chat: bool) -> web.Response:
        try:
            body = await request.json(loads=json.loads)
        except ValueError:
            return self._error(400, "the request body is not JSON")
        if not isinstance(body, dict):
            return self._error(400, "the request body must be a JSON object")
        model = body.get("model", self.settings.model)
        if not isinstance(model, str):
            return self._error(400, "`model` must be a string")
        if chat and not isinstance(body.get("messages"), list):
            return self._error(400, "`messages` must be a list")
        queue = self.queue
        queue.waiting += 1
        try:
            await queue.slots.acquire()
        finally:
            queue.waiting -= 1
        queue.running += 1
        try:
            if self.settings.latency > 0:
                await asyncio.sleep(self.settings.latency)
        finally:
            queue.running -= 1
            queue.slots.release()
        queue.served += 1
        text = f"served by {self.name}"
        choice: dict[str, object] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": text, "finish_reason": "stop"}
        )
        answer = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{next(self._ids)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        }
        return web.json_response(answer, headers={"x-served-by": self.name})

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.settings.model, "object": "model"}]})

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        queue = self.queue
        label = f'{{model_name="{self.settings.model}"}}'
        usage = queue.running / queue.concurrency
        if self.settings.engine == "sglang":
            lines = [
                "# HELP sglang:num_running_reqs The number of running requests.",
                "# TYPE sglang:num_running_reqs gauge",
                f"sglang:num_running_reqs{label} {queue.running}",
                "# HELP sglang:num_queue_reqs The number of requests in the waiting queue.",
                "# TYPE sglang:num_queue_reqs gauge",
                f"sglang:num_queue_reqs{label} {queue.waiting}",
                "# HELP sglang:token_usage The token usage.",
                "# TYPE sglang:token_usage gauge",
                f"sglang:token_usage{label} {usage}",
                "",
            ]
            return web.Response(text="\n".join(lines), content_type="text/plain", charset="utf-8")
        lines = [
            "# HELP vllm:num_requests_running Number of requests currently running.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{label} {queue.running}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{label} {queue.waiting}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{label} {usage}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
            f"vllm:request_success_total{label} {queue.served}",
        ]
        if self.settings.lora_adapters:
            adapters = ",".join(self.settings.lora_adapters)
            lines += [
                "# HELP vllm:lora_requests_info Running stats on lora requests.",
                "# TYPE vllm:lora_requests_info gauge",
                f'vllm:lora_requests_info{{max_lora="{len(self.settings.lora_adapters)}",'
                f'running_lora_adapters="{adapters}",waiting_lora_adapters=""}} {time.time()}',
            ]
        lines.append("")
        return web.Response(text="\n".join(lines), content_type="text/plain", charset="utf-8")

    def _error(self, status: int, message: str) -> web.Response:
        error = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
        return web.json_response(error, status=status)


async def serve_simulator(settings: SimulatorSettings, *, ready: asyncio.Event | None = None) -> None:
    """Run a simulator until cancelled (SIGINT/SIGTERM end the process through the CLI)."""
    from epp.server import bind_listener

    sock = bind_listener(settings.host, settings.port)
    port = sock.getsockname()[1]
    simulator = Simulator(settings if settings.name else _named(settings, f"{settings.host}:{port}"))
    runner = web.AppRunner(simulator.make_app(), access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        logger.info(
            "simulator listening address=%s:%d latency_ms=%g concurrency=%d",
            settings.host,
            port,
            settings.latency * 1000,
            settings.concurrency,
        )
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _named(settings: SimulatorSettings, name: str) -> SimulatorSettings:
    return dataclasses.replace(settings, name=name)
