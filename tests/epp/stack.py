"""A local gateway for the Envoy tests: simulators and the EPP as real child processes, Envoy via the rig.

`run_stack` boots the incident's fixed EnvoyFilter (ORIGINAL_DST pool, plaintext h2c EPP);
`run_istio_stack` boots the gateway istiod generates for an InferencePool (`tests.istio_gateway`: per-route
override, FULL_DUPLEX_STREAMED, TLS to the EPP, override_host pool cluster).
"""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from certs.pki import generate_ca, issue_serving_cert
from cli.demo.gateway import EXT_PROC_STATS, INFERENCE_PATH, build_local_gateway
from epp.children import Child, free_port, start_child, stop_child, wait_for_port
from tests.envoy_rig import EnvoyRig, run_envoy
from tests.istio_gateway import EPP_FQDN, IstioGatewayOptions, build_istio_gateway

CLI = (sys.executable, "-m", "cli.main")
HTTP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Answer:
    status: int
    served_by: str
    body: str


@dataclass(frozen=True)
class Sim:
    """A simulator to start: its name (x-served-by), latency, slots, the engine whose metrics it serves."""

    name: str
    latency_ms: float
    concurrency: int
    engine: str = "vllm"


@dataclass
class Stack:
    envoy: EnvoyRig
    epp: Child
    epp_port: int
    epp_metrics_port: int
    sims: dict[str, Child] = field(default_factory=dict)
    sim_ports: dict[str, int] = field(default_factory=dict)
    epp_health_port: int = 0

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

    def stream_lines(self) -> list[str]:
        return [line for line in self.epp.log_text().splitlines() if " stream request_id=" in line]

    def sim_endpoint(self, sim: str) -> str:
        return f"127.0.0.1:{self.sim_ports[sim]}"


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
    with _children(tmp, [Sim(*spec) for spec in sims], scrape_interval, epp_args) as started:
        bootstrap = build_local_gateway(epp_port=started.epp_port, http2=http2).bootstrap
        with run_envoy(bootstrap, workdir=tmp) as envoy:
            yield started.with_envoy(envoy)


@dataclass(frozen=True)
class EppTls:
    """Files of a serving certificate for the EPP Service's name (and 127.0.0.1), from `certs.pki`."""

    cert: Path
    key: Path
    ca: Path


def write_epp_tls(directory: Path) -> EppTls:
    now = datetime.now(UTC)
    ca = generate_ca(common_name="test EPP CA", now=now, valid_for=timedelta(days=1))
    pair = issue_serving_cert(
        ca, dns_names=[EPP_FQDN], ip_addresses=["127.0.0.1"], now=now, valid_for=timedelta(hours=6)
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = EppTls(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
    files.cert.write_bytes(pair.cert_pem)
    files.key.write_bytes(pair.key_pem)
    files.ca.write_bytes(ca.cert_pem)
    return files


@contextlib.contextmanager
def run_istio_stack(
    tmp: Path,
    sims: Sequence[Sim],
    *,
    scrape_interval: float = 0.2,
    epp_args: Sequence[str] = (),
    tls: bool = True,
    **gateway: Any,
) -> Iterator[Stack]:
    """Simulators, a TLS EPP (grpcio transport, health port) and an Istio-shaped Envoy in front of them.

    `gateway` takes the other fields of `IstioGatewayOptions` (fail_open, subset_hint_header, ...).
    """
    files = write_epp_tls(tmp / "epp-tls") if tls else None
    health_port = free_port()
    args = [*epp_args, "--health-port", str(health_port)]
    if files is not None:
        args += ["--tls-cert", str(files.cert), "--tls-key", str(files.key)]
    for sim in sims:
        if sim.engine != "vllm":
            args += ["--endpoint-engine", f"127.0.0.1:{{port:{sim.name}}}={sim.engine}"]
    with _children(tmp, sims, scrape_interval, args) as started:
        options = IstioGatewayOptions(
            epp=("127.0.0.1", started.epp_port),
            pool=[("127.0.0.1", port) for port in started.sim_ports.values()],
            ca_file=files.ca if files else None,
            **gateway,
        )
        with run_envoy(build_istio_gateway(options), workdir=tmp) as envoy:
            yield started.with_envoy(envoy)


@dataclass(frozen=True)
class _Started:
    """The simulators and the EPP, listening; Envoy comes next."""

    epp: Child
    epp_port: int
    metrics_port: int
    health_port: int
    sims: dict[str, Child]
    sim_ports: dict[str, int]

    def with_envoy(self, envoy: EnvoyRig) -> Stack:
        return Stack(
            envoy, self.epp, self.epp_port, self.metrics_port, self.sims, self.sim_ports, self.health_port
        )


@contextlib.contextmanager
def _children(
    tmp: Path, sims: Sequence[Sim], scrape_interval: float, epp_args: Sequence[str]
) -> Iterator[_Started]:
    """Start the simulators and the EPP at once, wait (bounded) until they listen; stop them on exit."""
    children: list[Child] = []
    try:
        sim_children: dict[str, Child] = {}
        sim_ports: dict[str, int] = {}
        for sim in sims:  # all start at once; readiness is awaited below
            port = free_port()
            argv = [*CLI, "sim-model", "--port", str(port), "--name", sim.name, "--engine", sim.engine]
            argv += ["--latency-ms", str(sim.latency_ms), "--concurrency", str(sim.concurrency)]
            child = start_child(sim.name, argv, log_dir=tmp)
            children.append(child)
            sim_children[sim.name], sim_ports[sim.name] = child, port
        epp_port, metrics_port = free_port(), free_port()
        endpoints = ",".join(f"127.0.0.1:{p}" for p in sim_ports.values())
        resolved = [_fill_ports(arg, sim_ports) for arg in epp_args]
        argv = [*CLI, "epp", "--host", "127.0.0.1", "--port", str(epp_port)]
        if "--service" not in epp_args and "--selector" not in epp_args:
            argv += ["--endpoints", endpoints]
        argv += ["--scrape-interval", str(scrape_interval), "--metrics-port", str(metrics_port), *resolved]
        epp = start_child("epp", argv, log_dir=tmp)
        children.append(epp)
        health_port = int(resolved[resolved.index("--health-port") + 1]) if "--health-port" in resolved else 0
        for name, child in sim_children.items():
            wait_for_port(child, sim_ports[name])
        wait_for_port(epp, epp_port)
        wait_for_port(epp, metrics_port)
        yield _Started(epp, epp_port, metrics_port, health_port, sim_children, sim_ports)
    finally:
        for child in reversed(children):
            stop_child(child)


def _fill_ports(arg: str, ports: dict[str, int]) -> str:
    """`{port:NAME}` in an EPP argument becomes the port of simulator NAME."""
    for name, port in ports.items():
        arg = arg.replace(f"{{port:{name}}}", str(port))
    return arg
