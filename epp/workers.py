"""Run the EPP as one process, or as several worker processes sharing the gRPC port (SO_REUSEPORT).

gRPC servers in Python spend most of each call in per-message machinery that holds the GIL, so one process
is bounded by one core. Workers let a many-core node, or a gateway with several connections, use more.
Each worker is a whole EPP (its own scraper and picker); worker i serves /metrics on metrics_port + i.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import signal

from epp.server import serve_epp
from epp.settings import EppSettings
from telemetry.logoutput import install_epp_log_output

logger = logging.getLogger(__name__)


def run_epp_processes(settings: EppSettings, *, log_level: int = logging.INFO) -> int:
    if settings.workers <= 1:
        asyncio.run(serve_epp(settings, log_handler=install_epp_log_output(log_level)))
        return 0
    context = multiprocessing.get_context("spawn")
    handler = install_epp_log_output(log_level)
    workers = []
    for index in range(settings.workers):
        metrics_port = settings.metrics_port + index if settings.metrics_port else settings.metrics_port
        worker_settings = dataclasses.replace(settings, metrics_port=metrics_port)
        process = context.Process(
            target=_run_worker,
            args=(worker_settings, index, log_level),
            name=f"epp-worker-{index}",
            daemon=True,
        )
        process.start()
        workers.append(process)
    logger.info("epp workers started count=%d pids=%s", len(workers), ",".join(str(w.pid) for w in workers))
    handler.flush()
    watched = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        while all(w.is_alive() for w in workers):
            if signal.sigtimedwait(watched, 1.0) is not None:
                break
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
        for process in workers:
            if process.is_alive() and process.pid:
                process.terminate()
        for process in workers:
            process.join(settings.grace + 3)
            if process.is_alive():
                process.kill()
                process.join(1)
    handler.flush()
    failed = [w for w in workers if w.exitcode not in (0, -signal.SIGTERM)]
    return 1 if failed else 0


def _run_worker(settings: EppSettings, index: int, level: int) -> None:
    handler = install_epp_log_output(level)
    logging.getLogger("epp").info("epp worker started index=%d", index)
    asyncio.run(serve_epp(settings, log_handler=handler))
