"""A local gateway for the Envoy tests: simulators and the EPP as real child processes, Envoy via the rig."""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cli.demo.gateway import EXT_PROC_STATS, INFERENCE_PATH, build_local_gateway
from epp.children import Child, free_port, start_child, stop_child, wait_for_port
from tests.envoy_rig import EnvoyRig, run_envoy

CLI = (sys.executable, "-m", "cli.main")
HTTP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Answer:
    status: int
    served_by: str
    body: str


@dataclass
class Stack:
    envoy: EnvoyRig
    epp: Child
    epp_port: int
    epp_metrics_port: int
    sims: dict[str, Child] = field(default_factory=dict)
    sim_ports: dict[str, int] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.envoy.listener_port()}"

    def send(
        self, path: str = INFERENCE_PATH, *, prompt: str = "hi", headers: dict[str, str] | None = None
    ) -> Answer:
        return post(self.gateway_url + path, {"model": "sim-model", "prompt": prompt}, headers=headers)

    def ext_proc(self, counter: str) -> int:
        return self.envoy.stats().get(EXT_PROC_STATS + counter, 0)

    def epp_metric(self, sample: str) -> float:
        text = get_text(f"http://127.0.0.1:{self.epp_metrics_port}/metrics")
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def sim_metric(self, metric: str, sim: str) -> float:
        """An EPP metric labelled with a simulator's endpoint (epp_endpoint_score, epp_endpoint_healthy)."""
        return self.epp_metric(f'{metric}{{endpoint="127.0.0.1:{self.sim_ports[sim]}"}}')

    def decision_lines(self) -> list[str]:
        return [line for line in self.epp.log_text().splitlines() if " decision request_id=" in line]


def post(url: str, payload: object, *, headers: dict[str, str] | None = None) -> Answer:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"content-type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return Answer(response.status, response.headers.get("x-served-by", ""), response.read().decode())
    except urllib.error.HTTPError as error:
        return Answer(
            error.code, error.headers.get("x-served-by", ""), error.read().decode("utf-8", "replace")
        )


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
        body: bytes = response.read()
    return body.decode()


@contextlib.contextmanager
def run_stack(
    tmp: Path,
    sims: Sequence[tuple[str, float, int]],
    *,
    http2: bool = True,
    scrape_interval: float = 0.2,
    epp_args: Sequence[str] = (),
) -> Iterator[Stack]:
    """Start simulators (name, latency_ms, concurrency), the EPP and Envoy; stop them all on exit."""
    children: list[Child] = []
    try:
        sim_children: dict[str, Child] = {}
        sim_ports: dict[str, int] = {}
        for name, latency, concurrency in sims:  # all start at once; readiness is awaited below
            port = free_port()
            argv = [*CLI, "sim-model", "--port", str(port), "--name", name, "--latency-ms", str(latency)]
            child = start_child(name, [*argv, "--concurrency", str(concurrency)], log_dir=tmp)
            children.append(child)
            sim_children[name], sim_ports[name] = child, port
        epp_port, metrics_port = free_port(), free_port()
        endpoints = ",".join(f"127.0.0.1:{p}" for p in sim_ports.values())
        argv = [*CLI, "epp", "--host", "127.0.0.1", "--port", str(epp_port), "--endpoints", endpoints]
        argv += ["--scrape-interval", str(scrape_interval), "--metrics-port", str(metrics_port), *epp_args]
        epp = start_child("epp", argv, log_dir=tmp)
        children.append(epp)
        for name, child in sim_children.items():
            wait_for_port(child, sim_ports[name])
        wait_for_port(epp, epp_port)
        wait_for_port(epp, metrics_port)
        bootstrap = build_local_gateway(epp_port=epp_port, http2=http2).bootstrap
        with run_envoy(bootstrap, workdir=tmp) as envoy:
            yield Stack(envoy, epp, epp_port, metrics_port, sim_children, sim_ports)
    finally:
        for child in reversed(children):
            stop_child(child)
