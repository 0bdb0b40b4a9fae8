"""`extproc-guard sim-model`: a model-server simulator (OpenAI-style API, vLLM-style metrics)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from epp.simulator import SimulatorSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sim-model",
        help="run a model-server simulator for local runs",
        description="Serve OpenAI-style completions and vLLM-style /metrics that follow the queue.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--name", default="", help="name in the x-served-by header (default HOST:PORT)")
    parser.add_argument("--model", default="sim-model", help="model name in metrics labels")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="time each request holds a slot")
    parser.add_argument("--concurrency", type=int, default=8, help="requests served at once; others wait")
    parser.add_argument(
        "--engine", choices=["vllm", "sglang"], default="vllm", help="engine whose metric names to serve"
    )
    parser.add_argument(
        "--lora-adapters", default="", help="LoRA adapters to report as running (vllm), comma-separated"
    )
    parser.set_defaults(handler=run_sim_model)


def run_sim_model(args: argparse.Namespace) -> int:
    # asyncio and aiohttp load here, not when the CLI lists its commands.
    import asyncio

    from epp.simulator import SimulatorSettings

    if args.concurrency < 1 or args.latency_ms < 0 or not 0 <= args.port < 65536:
        print(
            "extproc-guard sim-model: error: need --concurrency >= 1, --latency-ms >= 0, a valid --port",
            file=sys.stderr,
        )
        return 2
    logging.getLogger("epp").setLevel(logging.INFO)
    settings = SimulatorSettings(
        host=args.host,
        port=args.port,
        name=args.name,
        model=args.model,
        latency=args.latency_ms / 1000,
        concurrency=args.concurrency,
        engine=args.engine,
        lora_adapters=tuple(a.strip() for a in args.lora_adapters.split(",") if a.strip()),
    )
    try:
        asyncio.run(_serve_until_signal(settings))
    except OSError as exc:
        print(f"extproc-guard sim-model: error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_signal(settings: SimulatorSettings) -> None:
    import asyncio
    import contextlib
    import signal

    from epp.simulator import serve_simulator

    task = asyncio.create_task(serve_simulator(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
