"""`extproc-guard demo`: the incident on one machine, no cluster.

Part 1: the operator's EnvoyFilter, fixed by the policy engine and pinned to a local EPP, runs on a real
Envoy with the EPP and three model-server simulators; requests are routed by the EPP's picks.
Part 2: the same config without HTTP/2 on the epp-cluster: the seed's "rq_total grows, the EPP logs
nothing", then what `check` and `doctor` say about it.
Every child runs in its own process group and is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from cli.demo.gateway import (
    EPP_CLUSTER,
    EPP_SERVICE,
    EXT_PROC_STATS,
    INFERENCE_PATH,
    build_local_gateway,
    local_epp_resolver,
    render_local,
    strip_http2,
)
from epp.children import (
    Child,
    ChildError,
    find_envoy_binary,
    free_port,
    start_child,
    stop_child,
    wait_for_port,
)
from policies import default_policy, evaluate

CLI = (sys.executable, "-m", "cli.main")
SIMULATORS = ("sim-a", "sim-b", "sim-c")
HTTP_TIMEOUT = 15.0
START_TIMEOUT = 30.0


class DemoError(RuntimeError):
    """The demo could not run a step; the message says which and why."""


@dataclass(frozen=True, slots=True)
class DemoSettings:
    requests: int = 9
    broken_requests: int = 5
    workdir: Path | None = None  # None: a temporary directory, removed at the end


@dataclass
class _Run:
    out: TextIO
    workdir: Path
    children: list[Child] = field(default_factory=list)

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def start(self, name: str, argv: list[str]) -> Child:
        child = start_child(name, argv, log_dir=self.workdir)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            stop_child(child, timeout=5.0)
        self.children.clear()


def run_demo(settings: DemoSettings, *, out: TextIO = sys.stdout) -> int:
    with _workdir(settings.workdir) as workdir:
        run = _Run(out, workdir)
        try:
            return _demo(run, settings)
        except (ChildError, DemoError) as exc:
            run.say(f"\ndemo failed: {exc}")
            return 1
        finally:
            run.stop_all()


@contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="extproc-guard-demo-") as name:
        yield Path(name)


def _demo(run: _Run, settings: DemoSettings) -> int:
    envoy_binary = find_envoy_binary()
    epp_port, metrics_port = free_port(), free_port()
    sim_ports = {name: free_port() for name in SIMULATORS}
    run.say("== extproc-guard demo: the EPP path of the incident, on one machine ==")
    sims = {
        name: run.start(name, [*CLI, "sim-model", "--port", str(port), "--name", name, "--latency-ms", "3"])
        for name, port in sim_ports.items()
    }
    endpoints = ",".join(f"127.0.0.1:{port}" for port in sim_ports.values())
    epp = run.start(
        "epp",
        [*CLI, "epp", "--host", "127.0.0.1", "--port", str(epp_port), "--endpoints", endpoints,
         "--scrape-interval", "0.25", "--metrics-port", str(metrics_port)],
    )  # fmt: skip
    gateway = build_local_gateway(epp_port=epp_port)
    found = ", ".join(sorted({f.rule for f in gateway.evaluation.findings}))
    run.say(f"\n1. The operator's EnvoyFilter: the policy finds {found}.")
    run.say("   Fixed: REPLACE, body NONE, global SKIP + per-route SEND, STATIC epp-cluster with HTTP/2,")
    run.say(f"   pinned to the EPP at 127.0.0.1:{epp_port} (Service {EPP_SERVICE} resolved locally).")
    for name, child in sims.items():
        wait_for_port(child, sim_ports[name], timeout=START_TIMEOUT)
    wait_for_port(epp, epp_port, timeout=START_TIMEOUT)
    wait_for_port(epp, metrics_port, timeout=START_TIMEOUT)
    _wait(lambda: _healthy_endpoints(metrics_port) == len(SIMULATORS), what="the EPP's first scrape")
    run.say(f"   Started: simulators {', '.join(f'{n}@{p}' for n, p in sim_ports.items())}; EPP @{epp_port}.")

    envoy = _start_envoy(run, "envoy", envoy_binary, gateway.bootstrap)
    run.say(f"\n2. Real Envoy ({envoy.version}) with the fixed config; {settings.requests} requests:")
    decisions_before = len(_decision_lines(epp))
    served: Counter[str] = Counter()
    for index in range(settings.requests):
        status, server, _ = _post(
            envoy.url(INFERENCE_PATH), {"model": "sim-model", "prompt": f"hello {index}"}
        )
        served[server or "-"] += 1
        run.say(f"   request {index + 1:>2}: HTTP {status} served by {server or '-'}")
    stats = envoy.stats()
    run.say("   Envoy ext_proc stats: " + _format_stats(stats, _HEALTHY_STATS))
    _wait(lambda: len(_decision_lines(epp)) - decisions_before >= settings.requests, what="the EPP's log")
    _wait(lambda: len(_stream_lines(epp)) >= settings.requests, what="the EPP's stream lines")
    run.say("   EPP decision log (last 3):")
    for line in _decision_lines(epp)[-3:]:
        run.say("     " + _shorten(line))
    healthy_ok = (
        sum(served[name] for name in SIMULATORS) == settings.requests
        and stats.get(EXT_PROC_STATS + "streams_started", 0) == settings.requests
    )
    stop_child(envoy.child)

    broken_filter = strip_http2(gateway.envoy_filter)
    broken = _start_envoy(run, "envoy-no-http2", envoy_binary, render_local(broken_filter))
    run.say("\n3. The seed's failure: the same config without HTTP/2 on the epp-cluster.")
    epp_lines_before = len(epp.log_text().splitlines())
    statuses = Counter(
        _post(broken.url(INFERENCE_PATH), {"model": "sim-model", "prompt": "x"})[0]
        for _ in range(settings.broken_requests)
    )
    run.say(
        f"   {settings.broken_requests} requests: "
        + ", ".join(f"{n} x HTTP {s}" for s, n in statuses.items())
    )
    broken_stats = broken.stats()
    run.say("   Envoy: " + _format_stats(broken_stats, _BROKEN_STATS))
    time.sleep(0.3)  # the EPP writes its log in batches every 100 ms
    new_epp_lines = [line for line in epp.log_text().splitlines()[epp_lines_before:] if line.strip()]
    calls = [line for line in new_epp_lines if " decision " in line or " stream request_id=" in line]
    run.say(f"   EPP: {len(calls)} ext_proc calls logged (it never saw one).")
    refused = [line for line in new_epp_lines if "speaks HTTP/1.1" in line]
    if refused:
        run.say(f"   This EPP does notice the connections ({len(refused)} logged), e.g.:")
        run.say("     " + _shorten(refused[0], 200))
    broken_path = run.workdir / "envoyfilter-no-http2.yaml"
    broken_path.write_text(yaml.safe_dump(broken_filter, sort_keys=False), "utf-8")
    run.say("\n4. What extproc-guard says about that filter:")
    _show_check(run, broken_filter, epp_port)
    _show_doctor(run, broken.admin_url, broken_path)
    stop_child(broken.child)
    failure_shown = (
        broken_stats.get(f"cluster.{EPP_CLUSTER}.upstream_cx_protocol_error", 0) > 0
        and not calls
        and all(status >= 500 for status in statuses)
    )
    if settings.workdir is not None:
        run.say(f"\nConfigs and logs kept in {run.workdir}")
    if healthy_ok and failure_shown:
        run.say(
            "Demo complete: the fixed path routes every request; the no-HTTP/2 path fails as in the incident."
        )
        return 0
    run.say("Demo finished, but something differed from the expected story (see above).")
    return 1


_HEALTHY_STATS = ("streams_started", "streams_failed", "stream_msgs_sent", "stream_msgs_received")
_BROKEN_STATS = (
    f"cluster.{EPP_CLUSTER}.upstream_rq_total",
    f"cluster.{EPP_CLUSTER}.upstream_cx_protocol_error",
    EXT_PROC_STATS + "streams_failed",
)


@dataclass
class _Envoy:
    child: Child
    admin_url: str
    listen_port: int
    version: str

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.listen_port}{path}"

    def stats(self) -> dict[str, int]:
        values: dict[str, int] = {}
        for line in _get(self.admin_url + "/stats").splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().isdigit():
                values[name.strip()] = int(value)
        return values


def _start_envoy(run: _Run, name: str, binary: str, bootstrap: dict[str, Any]) -> _Envoy:
    listen_port, admin_port = free_port(), free_port()
    static = bootstrap["static_resources"]
    static["listeners"][0]["address"]["socket_address"]["port_value"] = listen_port
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin_port
    config = run.workdir / f"{name}.json"
    config.write_text(json.dumps(bootstrap, indent=1), "utf-8")
    argv = [binary, "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"]
    child = run.start(name, argv)
    admin_url = f"http://127.0.0.1:{admin_port}"
    _wait(lambda: _ready(admin_url, child), what=f"{name} to be ready", timeout=START_TIMEOUT)
    wait_for_port(child, listen_port)
    version = _get(admin_url + "/server_info")
    match = re.search(r'"version":\s*"[^/]*/([^/]+)/', version)
    return _Envoy(child, admin_url, listen_port, f"Envoy {match.group(1)}" if match else "Envoy")


def _ready(admin_url: str, child: Child) -> bool:
    if not child.alive:
        raise DemoError(f"{child.name} exited with {child.process.returncode}:\n{child.tail()}")
    try:
        return _get(admin_url + "/ready").strip() == "LIVE"
    except (urllib.error.URLError, OSError):
        return False


def _show_check(run: _Run, envoy_filter: dict[str, Any], epp_port: int) -> None:
    evaluation = evaluate(envoy_filter, policy=default_policy(), resolver=local_epp_resolver(epp_port))
    enforced = [f for f in evaluation.findings if f.enforced]
    run.say(f"   check: {len(enforced)} enforce finding(s)")
    for finding in enforced:
        run.say(f"     {finding.rule} {finding.slug}: {_shorten(finding.message, 200)}")


def _show_doctor(run: _Run, admin_url: str, filter_path: Path) -> None:
    argv = [*CLI, "doctor", "--admin", admin_url, "--filter", str(filter_path)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        run.say("   doctor: did not answer within 60 s")
        return
    if done.returncode == 2 and "invalid choice" in done.stderr:
        run.say("   doctor: not available in this build")
        return
    run.say(f"   doctor (exit {done.returncode}):")
    for line in (done.stdout or done.stderr).strip().splitlines()[:8]:
        run.say("     " + _shorten(line, 200))


def _decision_lines(epp: Child) -> list[str]:
    return [line for line in epp.log_text().splitlines() if " decision request_id=" in line]


def _stream_lines(epp: Child) -> list[str]:
    return [line for line in epp.log_text().splitlines() if " stream request_id=" in line]


def _healthy_endpoints(metrics_port: int) -> int:
    try:
        text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
    except (urllib.error.URLError, OSError):
        return 0
    return sum(
        1 for line in text.splitlines() if line.startswith("epp_endpoint_healthy{") and line.endswith(" 1.0")
    )


def _format_stats(stats: dict[str, int], names: tuple[str, ...]) -> str:
    parts = []
    for name in names:
        key = name if name.startswith("cluster.") or name.startswith("http.") else EXT_PROC_STATS + name
        parts.append(f"{key.removeprefix(EXT_PROC_STATS).removeprefix('cluster.')}={stats.get(key, 0)}")
    return ", ".join(parts)


def _shorten(line: str, width: int = 160) -> str:
    line = re.sub(r"^\S+ (INFO|WARNING) epp\.\S+ ", "", line)
    return line if len(line) <= width else line[: width - 3] + "..."


def _post(url: str, payload: object) -> tuple[int, str, str]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, response.headers.get("x-served-by", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, "", error.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as error:
        raise DemoError(f"request to {url} failed: {error}") from None


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
        body: bytes = response.read()
    return body.decode("utf-8", "replace")


def _wait(condition: Callable[[], bool], *, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
