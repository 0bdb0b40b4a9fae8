"""EPP benchmark: the gateway with the EPP, with two peer pickers, and without any, one run.

One simulator serves every request. Each picker gets its own Envoy (one worker), all built from the same
bootstrap (the fixed incident filter, pinned to that picker's port), so the pickers differ and nothing else:
- the EPP (`extproc-guard epp`);
- lwepp, the Gateway API Inference Extension's reference picker (v1.6.0), which reads an InferencePool and
  its Pod from the e2e control plane (etcd + kube-apiserver; the Pod is made Ready by hand);
- `minimal`, the least a picker can do in grpc-go (answer the headers with the destination, everything
  else with an empty answer).
The peers are built from Go by `bench/peers/build.sh` (this script runs it; nothing is rebuilt when up to
date; lwepp also needs `tests/e2e/controlplane/build.sh`, run the same way).

Every picker is measured in the one mode lwepp works in on Envoy 1.40: a buffer filter ahead of ext_proc,
request bodies STREAMED, `send_body_without_waiting_for_header_response` (lwepp answers the headers once
the whole body is in; the EPP and `minimal` answer them at once). The baseline is the same Envoy, buffer
filter included, on a route without ext_proc (the client names the endpoint itself).

`wrk` drives each side in turn at a fixed concurrency; a round measures the baseline and then the three
pickers in an order that rotates from round to round. It prints requests/s and p50/p99 per side (medians
over the rounds), the EPP against the baseline and against each peer (the median of the rounds' ratios and
their spread), CPU per request by process, and the EPP's CPU time per decision (its processes' own CPU
counters, /proc/PID/stat, divided by its decision counter).

    .venv/bin/python bench/epp_bench.py [--duration 5] [--rounds 6] [--peers lwepp,minimal]
                                        [--py-spy | --profile]

`--py-spy` samples the EPP with py-spy during its rounds and prints where its busy time went (the sampler
costs some CPU of its own, so read that run's throughput with care); `--profile` runs the EPP under
cProfile instead (exact call counts, heavy overhead: read it as proportions).

Last measured on this 2-core machine, five runs started at load average 1.8-1.9 (the README's benchmark
table has the same): EPP/lwepp throughput 1.06-1.17x (rounds 0.84-1.64x), p50 0.08-0.38 ms lower;
EPP/minimal 1.01-1.12x (rounds 0.73-2.13x), p50 0.05-0.24 ms lower; EPP/baseline 45-51% (rounds
28-70%), p50 +0.97 to +1.16 ms; EPP CPU per decision 55-60 us. lwepp runs at its defaults (its development
logger writes three lines per request); the EPP at its own (two lines per request).

Not a test: numbers depend on the machine. Needs `wrk` on PATH, and Go for the peers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peer_pickers
from bench.procstat import cpu_seconds
from bench.sampling import Sampler, summarize
from cli.demo.gateway import INFERENCE_PATH, build_local_gateway
from epp.children import (
    Child,
    ChildError,
    find_envoy_binary,
    free_port,
    start_child,
    stop_child,
    wait_for_port,
)

CLI = (sys.executable, "-m", "cli.main")
BODY = b'{"model": "sim-model", "prompt": "hello", "max_tokens": 4}'
WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body = '{BODY.decode()}'
wrk.headers["Content-Type"] = "application/json"
"""
EPP = "EPP"
BASELINE = "baseline"
BUFFER_FILTER = {
    "name": "envoy.filters.http.buffer",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": 1 << 20,
    },
}


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def parse_wrk(text: str) -> WrkResult:
    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return WrkResult(
        requests_per_s=float(rps.group(1)) if rps else 0.0,
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        requests=int(total.group(1)) if total else 0,
        errors=errors,
    )


def run_wrk(url: str, *, duration: float, connections: int, script: Path, header: str | None) -> WrkResult:
    argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", "--latency", "-s", str(script)]
    if header:
        argv += ["-H", header]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=duration + 60, check=True)
    return parse_wrk(done.stdout)


def process_tree(root: int) -> list[int]:
    """`root` and its descendants (the EPP and, with --workers, its worker processes)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, parent in parents.items() if parent == current]
        tree += children
        frontier += children
    return tree


def wrk_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def epp_decisions(metrics_ports: list[int]) -> float:
    total = 0.0
    for port in metrics_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("epp_decisions_total{"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def http_manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
    manager: dict[str, Any] = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return manager


def add_baseline_rewrite(bootstrap: dict[str, Any]) -> None:
    """The baseline route (/baseline/...) reaches the same simulator path as the inference route."""
    for host in http_manager(bootstrap)["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            if route["name"] == "baseline":
                route["match"] = {"prefix": "/baseline/"}
                route["route"]["prefix_rewrite"] = "/"


def use_streamed_bodies(bootstrap: dict[str, Any]) -> None:
    """The mode every picker is measured in: a buffer filter ahead of ext_proc, so the body is one message;
    request bodies STREAMED on the inference route, sent without waiting for the headers' answer."""
    manager = http_manager(bootstrap)
    filters = manager["http_filters"]
    at = next(i for i, f in enumerate(filters) if f["name"] == "envoy.filters.http.ext_proc")
    filters[at]["typed_config"]["send_body_without_waiting_for_header_response"] = True
    filters.insert(at, json.loads(json.dumps(BUFFER_FILTER)))
    for host in manager["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            override = route.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_proc", {})
            mode = override.get("overrides", {}).get("processing_mode")
            if mode is not None:
                mode["request_body_mode"] = "STREAMED"


def bench_gateway(*, picker_port: int, listen_port: int, admin_port: int) -> dict[str, Any]:
    """The bootstrap of every side's Envoy: the local gateway, its baseline route rewritten to the
    simulator's path, request bodies buffered and STREAMED to the picker at `picker_port`."""
    bootstrap = build_local_gateway(
        epp_port=picker_port, listen_port=listen_port, admin_port=admin_port
    ).bootstrap
    add_baseline_rewrite(bootstrap)
    use_streamed_bodies(bootstrap)
    return bootstrap


def start_envoy(name: str, *, picker_port: int, workdir: Path) -> tuple[Child, str]:
    """One Envoy (one worker) in front of the picker at `picker_port`; the child and its gateway URL."""
    listen_port, admin_port = free_port(), free_port()
    bootstrap = bench_gateway(picker_port=picker_port, listen_port=listen_port, admin_port=admin_port)
    config = workdir / f"envoy-{name}.json"
    config.write_text(json.dumps(bootstrap, indent=1))
    argv = [find_envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart"]
    envoy = start_child(f"envoy-{name}", [*argv, "-l", "warning"], log_dir=workdir)
    try:
        wait_for_port(envoy, listen_port)
        wait_for_port(envoy, admin_port)
    except ChildError:
        stop_child(envoy)
        raise
    return envoy, f"http://127.0.0.1:{listen_port}"


def wait_routed(url: str, picker: Child, *, timeout: float = 90.0) -> None:
    """Wait (bounded) until a request through `url` is answered 200: the picker knows the simulator."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not picker.alive:
            raise ChildError(f"{picker.name} exited with {picker.process.returncode}:\n{picker.tail()}")
        request = urllib.request.Request(url, data=BODY, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}"
        except OSError as error:
            last = repr(error)
        time.sleep(0.25)
    raise ChildError(
        f"{url} through {picker.name} not answered 200 within {timeout:.0f}s ({last}):\n{picker.tail()}"
    )


@dataclass
class Side:
    """What one wrk round drives: a URL through one Envoy, and the picker processes behind it."""

    name: str
    url: str
    header: str | None
    envoy: Child
    picker: list[int]
    results: list[WrkResult] = field(default_factory=list)
    cpu: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))


def print_profile(path: Path, top: int = 25) -> None:
    """Where the EPP's Python time went (cProfile adds overhead of its own; read it as proportions)."""
    import pstats

    print("\nEPP profile (cProfile, whole run; request-path functions by own time, startup left out):")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(r"epp/|logging/|prometheus_client/|hpack/|socket|selector", top)


def parse_peers(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.split(",") if n and n != "none")
    if unknown := [n for n in names if n not in peer_pickers.NAMES]:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(unknown)}; known: lwepp, minimal, none")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk round (5)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, each every side once (6)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    parser.add_argument("--workers", type=int, default=1, help="EPP worker processes (1)")
    parser.add_argument("--transport", default="h2", choices=["h2", "grpcio"], help="EPP gRPC server (h2)")
    parser.add_argument("--epp-log-level", default="info", choices=["info", "warning"], help="(info)")
    parser.add_argument("--sim-latency-ms", type=float, default=0.0, help="simulator latency (0)")
    parser.add_argument(
        "--peers",
        type=parse_peers,
        default=peer_pickers.NAMES,
        help="peers beside the EPP (lwepp,minimal; none)",
    )
    parser.add_argument("--profile", action="store_true", help="run the EPP under cProfile and print it")
    parser.add_argument("--py-spy", action="store_true", help="sample the EPP with py-spy in the EPP rounds")
    parser.add_argument("--keep", type=Path, help="keep configs and logs in this directory")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("epp_bench: wrk is not on PATH", file=sys.stderr)
        return 2
    try:
        peer_pickers.build_peers(args.peers)
    except peer_pickers.PeerError as error:
        print(f"epp_bench: {error}\n(or leave the peers out: --peers none)", file=sys.stderr)
        return 2
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="epp-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    children: list[Child] = []
    try:
        with contextlib.ExitStack() as stack:
            return measure(args, workdir, script, children, stack)
    except (ChildError, peer_pickers.PeerError) as error:
        print(f"epp_bench: {error}", file=sys.stderr)
        return 1
    finally:
        for child in reversed(children):
            stop_child(child, timeout=15)
        if args.profile and (workdir / "epp.prof").exists():
            print_profile(workdir / "epp.prof")
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def measure(
    args: argparse.Namespace, workdir: Path, script: Path, children: list[Child], stack: contextlib.ExitStack
) -> int:
    sim_port, epp_port = free_port(), free_port()
    if args.workers > 1:  # worker i serves metrics on base + i
        base = 20000 + (os.getpid() % 20000)
        metrics_ports = [base + i for i in range(args.workers)]
    else:
        metrics_ports = [free_port()]
    sim_argv = [*CLI, "sim-model", "--port", str(sim_port), "--name", "sim", "--concurrency", "64"]
    sim = start_child("sim", [*sim_argv, "--latency-ms", str(args.sim_latency_ms)], log_dir=workdir)
    children.append(sim)
    epp_argv = [*CLI, "epp", "--host", "127.0.0.1", "--port", str(epp_port), "--endpoints",
                f"127.0.0.1:{sim_port}", "--metrics-port", str(metrics_ports[0]), "--workers",
                str(args.workers), "--log-level", args.epp_log_level,
                "--transport", args.transport]  # fmt: skip
    if args.profile:  # cProfile around the whole EPP; written when it stops (SIGTERM ends it cleanly)
        epp_argv = [sys.executable, "-m", "cProfile", "-o", str(workdir / "epp.prof"), *epp_argv[1:]]
    epp = start_child("epp", epp_argv, log_dir=workdir)
    children.append(epp)
    pickers: dict[str, tuple[Child, int]] = {EPP: (epp, epp_port)}
    endpoint = f"127.0.0.1:{sim_port}"
    if "minimal" in args.peers:
        port = free_port()
        minimal = peer_pickers.start_minimal(port=port, endpoint=endpoint, log_dir=workdir)
        children.append(minimal)
        pickers["minimal"] = (minimal, port)
    if "lwepp" in args.peers:
        port = free_port()
        lwepp = stack.enter_context(
            peer_pickers.running_lwepp(
                port=port,
                metrics_port=free_port(),
                health_port=free_port(),
                sim_port=sim_port,
                log_dir=workdir,
            )
        )
        pickers["lwepp"] = (lwepp, port)
    wait_for_port(sim, sim_port)
    for port in (epp_port, *metrics_ports):
        wait_for_port(epp, port)
    sides: dict[str, Side] = {}
    for name in (EPP, *(p for p in peer_pickers.NAMES if p in pickers)):
        picker, port = pickers[name]
        wait_for_port(picker, port, timeout=120)
        envoy, gateway = start_envoy(name.lower(), picker_port=port, workdir=workdir)
        children.append(envoy)
        wait_routed(gateway + INFERENCE_PATH, picker)
        if name == EPP:
            destination = f"x-gateway-destination-endpoint: {endpoint}"
            sides[BASELINE] = Side(BASELINE, gateway + "/baseline" + INFERENCE_PATH, destination, envoy, [])
        sides[name] = Side(name, gateway + INFERENCE_PATH, None, envoy, process_tree(picker.process.pid))
    epp_pids = sides[EPP].picker
    # with workers the parent only waits: sample the first worker, which Envoy's one connection reaches
    sampler = Sampler(epp_pids[1] if len(epp_pids) > 1 else epp_pids[0], workdir) if args.py_spy else None
    for side in sides.values():  # warm-up, not counted
        run_wrk(side.url, duration=2, connections=args.connections, script=script, header=side.header)
    decisions = 0.0
    sim_pids = process_tree(sim.process.pid)
    pickers_in_turn = [s for s in sides.values() if s.name != BASELINE]
    for index in range(args.rounds):
        turn = index % len(pickers_in_turn)
        for side in [sides[BASELINE], *pickers_in_turn[turn:], *pickers_in_turn[:turn]]:
            groups = {"envoy": [side.envoy.process.pid], "simulator": sim_pids, "picker": side.picker}
            before = {name: cpu_seconds(pids) for name, pids in groups.items()}
            wrk_before = wrk_cpu()
            decisions_before = epp_decisions(metrics_ports) if side.name == EPP else 0.0
            if sampler is not None and side.name == EPP:
                sampler.start(args.duration)
            result = run_wrk(
                side.url,
                duration=args.duration,
                connections=args.connections,
                script=script,
                header=side.header,
            )
            side.cpu["wrk"] += wrk_cpu() - wrk_before  # before py-spy, also a child, is reaped
            if sampler is not None and side.name == EPP:
                sampler.finish()
            side.results.append(result)
            for name, pids in groups.items():
                side.cpu[name] += cpu_seconds(pids) - before[name]
            if side.name == EPP:
                decisions += epp_decisions(metrics_ports) - decisions_before
    report(sides, decisions=decisions, args=args)
    if sampler is not None:
        print("\nWhere the EPP's busy time went (py-spy, EPP rounds):")
        print(sampler.problem or summarize(sampler.profile))
    return 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def compare(epp: Side, other: Side) -> tuple[list[float], list[float]]:
    """Round by round, the EPP's throughput over the other side's, and the EPP's p50 minus the other's."""
    pairs = list(zip(epp.results, other.results, strict=True))
    return [e.requests_per_s / o.requests_per_s for e, o in pairs], [e.p50_ms - o.p50_ms for e, o in pairs]


def report(sides: dict[str, Side], *, decisions: float, args: argparse.Namespace) -> None:
    """Each round measures every side once, close together in time: on a shared machine the speed drifts
    from minute to minute, and sides measured back to back see the same machine. Each verdict is the
    median of the rounds' ratios; the spread shows how much the machine moved."""
    epp = sides[EPP]
    print(
        f"epp_bench: {os.cpu_count()} CPUs, one Envoy (1 worker) per picker, buffer + STREAMED bodies, "
        f"wrk -c {args.connections}, {args.rounds} rounds x {args.duration:g}s per side, "
        f"EPP {args.transport} x {args.workers} worker(s), EPP log {args.epp_log_level}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'(medians)':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}   CPU per request (us)")
    for side in sides.values():
        requests = sum(r.requests for r in side.results) or 1
        cpu = ", ".join(f"{name} {1e6 * value / requests:.0f}" for name, value in side.cpu.items() if value)
        print(
            f"{side.name:10} {median([r.requests_per_s for r in side.results]):9.0f} "
            f"{median([r.p50_ms for r in side.results]):8.2f} {median([r.p99_ms for r in side.results]):8.2f}"
            f"   {cpu}"
        )
    ratios, added = compare(epp, sides[BASELINE])
    print(
        f"EPP / baseline: throughput {median(ratios):.0%} (rounds {min(ratios):.0%}..{max(ratios):.0%}; "
        f"target >= 50%), p50 {median(added):+.2f} ms (rounds {min(added):+.2f}..{max(added):+.2f}; "
        "target <= +1.5)"
    )
    for name in peer_pickers.NAMES:
        if name in sides:
            ratios, added = compare(epp, sides[name])
            print(
                f"EPP / {name}: throughput {median(ratios):.2f}x (rounds {min(ratios):.2f}.."
                f"{max(ratios):.2f}; target >= 1.00x), p50 {median(added):+.2f} ms (rounds "
                f"{min(added):+.2f}..{max(added):+.2f}; target <= +0.00)"
            )
    epp_cpu = epp.cpu["picker"]
    per_decision_us = 1e6 * epp_cpu / decisions if decisions else float("nan")
    print(
        f"EPP CPU per decision: {per_decision_us:.0f} us "
        f"({decisions:.0f} decisions, {epp_cpu:.2f} s CPU; target <= 150 us)"
    )
    if errors := sum(r.errors for side in sides.values() for r in side.results):
        print(f"WARNING: {errors} non-2xx or socket errors")


if __name__ == "__main__":
    raise SystemExit(main())
