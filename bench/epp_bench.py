"""EPP benchmark: the gateway with and without the EPP, same Envoy, same simulator, one run.

Envoy (one worker) runs the fixed incident filter pinned to a local EPP; one simulator serves every request.
`wrk` drives the gateway at a fixed concurrency, alternating between the baseline route (ext_proc off, the
client names the endpoint itself in x-gateway-destination-endpoint) and the inference route (every request
asks the EPP). It prints requests/s and p50/p99 for both (medians over the rounds), the ratio of each EPP
round to the baseline round just before it and the median of those pairs, and the EPP's CPU time per
decision from the EPP processes' own CPU counters (/proc/PID/stat) divided by its decision counter.

    .venv/bin/python bench/epp_bench.py [--duration 5] [--rounds 6] [--workers 1] [--py-spy | --profile]

`--py-spy` samples the EPP with py-spy during the EPP rounds and prints where its busy time went (the
sampler costs some CPU of its own, so read that run's throughput with care); `--profile` runs the EPP
under cProfile instead (exact call counts, heavy overhead: read it as proportions).

Not a test: numbers depend on the machine. Needs `wrk` on PATH.
"""

from __future__ import annotations

import argparse
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
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstat import cpu_seconds
from bench.sampling import Sampler, summarize
from cli.demo.gateway import INFERENCE_PATH, build_local_gateway
from epp.children import Child, find_envoy_binary, free_port, start_child, stop_child, wait_for_port

CLI = (sys.executable, "-m", "cli.main")
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"model": "sim-model", "prompt": "hello", "max_tokens": 4}'
wrk.headers["Content-Type"] = "application/json"
"""


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


def add_baseline_rewrite(bootstrap: dict[str, Any]) -> None:
    """The baseline route (/baseline/...) reaches the same simulator path as the inference route."""
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for host in manager["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            if route["name"] == "baseline":
                route["match"] = {"prefix": "/baseline/"}
                route["route"]["prefix_rewrite"] = "/"


def print_profile(path: Path, top: int = 25) -> None:
    """Where the EPP's Python time went (cProfile adds overhead of its own; read it as proportions)."""
    import pstats

    print("\nEPP profile (cProfile, whole run; request-path functions by own time, startup left out):")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(r"epp/|logging/|prometheus_client/|hpack/|socket|selector", top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk round (5)")
    parser.add_argument("--rounds", type=int, default=6, help="baseline/EPP round pairs (6)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    parser.add_argument("--workers", type=int, default=1, help="EPP worker processes (1)")
    parser.add_argument("--transport", default="h2", choices=["h2", "grpcio"], help="EPP gRPC server (h2)")
    parser.add_argument("--epp-log-level", default="info", choices=["info", "warning"], help="(info)")
    parser.add_argument("--sim-latency-ms", type=float, default=0.0, help="simulator latency (0)")
    parser.add_argument("--profile", action="store_true", help="run the EPP under cProfile and print it")
    parser.add_argument("--py-spy", action="store_true", help="sample the EPP with py-spy in the EPP rounds")
    parser.add_argument("--keep", type=Path, help="keep configs and logs in this directory")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("epp_bench: wrk is not on PATH", file=sys.stderr)
        return 2
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="epp-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    children: list[Child] = []
    try:
        sim_port, epp_port, listen_port, admin_port = free_port(), free_port(), free_port(), free_port()
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
        wait_for_port(sim, sim_port)
        for port in (epp_port, *metrics_ports):
            wait_for_port(epp, port)
        bootstrap = build_local_gateway(
            epp_port=epp_port, listen_port=listen_port, admin_port=admin_port
        ).bootstrap
        add_baseline_rewrite(bootstrap)
        config = workdir / "envoy.json"
        config.write_text(json.dumps(bootstrap, indent=1))
        envoy_argv = [find_envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart"]
        envoy = start_child("envoy", [*envoy_argv, "-l", "warning"], log_dir=workdir)
        children.append(envoy)
        wait_for_port(envoy, listen_port)
        wait_for_port(envoy, admin_port)
        time.sleep(1.0)  # first scrape
        gateway = f"http://127.0.0.1:{listen_port}"
        baseline_url, epp_url = gateway + "/baseline" + INFERENCE_PATH, gateway + INFERENCE_PATH
        destination = f"x-gateway-destination-endpoint: 127.0.0.1:{sim_port}"
        epp_pids = process_tree(epp.process.pid)
        # with workers the parent only waits: sample the first worker, which Envoy's one connection reaches
        sampler = Sampler(epp_pids[1] if len(epp_pids) > 1 else epp_pids[0], workdir) if args.py_spy else None
        # warm-up, not counted
        run_wrk(baseline_url, duration=2, connections=args.connections, script=script, header=destination)
        run_wrk(epp_url, duration=2, connections=args.connections, script=script, header=None)
        baseline: list[WrkResult] = []
        through: list[WrkResult] = []
        decisions = 0.0
        groups = {"envoy": [envoy.process.pid], "simulator": process_tree(sim.process.pid), "epp": epp_pids}
        spent: dict[str, defaultdict[str, float]] = {
            side: defaultdict(float) for side in ("baseline", "with EPP")
        }
        for _ in range(args.rounds):
            for side, url, header, results in (
                ("baseline", baseline_url, destination, baseline),
                ("with EPP", epp_url, None, through),
            ):
                before = {name: cpu_seconds(pids) for name, pids in groups.items()}
                wrk_before = wrk_cpu()
                decisions_before = epp_decisions(metrics_ports)
                if sampler is not None and side == "with EPP":
                    sampler.start(args.duration)
                result = run_wrk(
                    url, duration=args.duration, connections=args.connections, script=script, header=header
                )
                spent[side]["wrk"] += wrk_cpu() - wrk_before  # before py-spy, also a child, is reaped
                if sampler is not None:
                    sampler.finish()
                results.append(result)
                for name, pids in groups.items():
                    spent[side][name] += cpu_seconds(pids) - before[name]
                spent[side]["requests"] += result.requests
                if side == "with EPP":
                    decisions += epp_decisions(metrics_ports) - decisions_before
        report(baseline, through, cpu=spent["with EPP"]["epp"], decisions=decisions, args=args)
        print("CPU per request by process (us):")
        for side, counts in spent.items():
            requests = counts.pop("requests") or 1
            parts = ", ".join(f"{name} {1e6 * value / requests:.0f}" for name, value in counts.items())
            print(f"  {side:9} {parts}")
        if sampler is not None:
            print("\nWhere the EPP's busy time went (py-spy, EPP rounds):")
            print(sampler.problem or summarize(sampler.profile))
        return 0
    finally:
        for child in reversed(children):
            stop_child(child, timeout=15)
        if args.profile and (workdir / "epp.prof").exists():
            print_profile(workdir / "epp.prof")
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(
    baseline: list[WrkResult],
    through: list[WrkResult],
    *,
    cpu: float,
    decisions: float,
    args: argparse.Namespace,
) -> None:
    """Each EPP round is set against the baseline round just before it: on a shared machine the speed
    drifts from minute to minute, and a pair run back to back sees the same machine. The verdict is the
    median pair; the spread shows how much the machine moved."""
    ratios = [e.requests_per_s / b.requests_per_s for b, e in zip(baseline, through, strict=True)]
    added = [e.p50_ms - b.p50_ms for b, e in zip(baseline, through, strict=True)]
    b_rps, e_rps = median([r.requests_per_s for r in baseline]), median([r.requests_per_s for r in through])
    b_p50, e_p50 = median([r.p50_ms for r in baseline]), median([r.p50_ms for r in through])
    b_p99, e_p99 = median([r.p99_ms for r in baseline]), median([r.p99_ms for r in through])
    errors = sum(r.errors for r in baseline + through)
    per_decision_us = 1e6 * cpu / decisions if decisions else float("nan")
    print(
        f"epp_bench: {os.cpu_count()} CPUs, Envoy 1 worker, wrk -c {args.connections}, "
        f"{args.rounds} x {args.duration:g}s per side, EPP {args.transport} x {args.workers} worker(s), "
        f"EPP log {args.epp_log_level}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'(medians)':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'baseline':10} {b_rps:9.0f} {b_p50:8.2f} {b_p99:8.2f}")
    print(f"{'with EPP':10} {e_rps:9.0f} {e_p50:8.2f} {e_p99:8.2f}")
    print(
        "pairs (EPP round / the baseline round before it): "
        + ", ".join(f"{r:.0%} {a:+.2f}ms" for r, a in zip(ratios, added, strict=True))
    )
    print(
        f"ratio: throughput {median(ratios):.0%} of baseline (target >= 50%; pairs {min(ratios):.0%}"
        f"..{max(ratios):.0%}); p50 {median(added):+.2f} ms (target <= +1.5)"
    )
    print(
        f"EPP CPU per decision: {per_decision_us:.0f} us "
        f"({decisions:.0f} decisions, {cpu:.2f} s CPU; target <= 300 us)"
    )
    if errors:
        print(f"WARNING: {errors} non-2xx or socket errors")


if __name__ == "__main__":
    raise SystemExit(main())
