"""Admission webhook throughput and latency over TLS on loopback, against a bare aiohttp baseline.

Runs `extproc-guard serve` (static `--service`, so no cluster is needed) and, in the same run, a bare aiohttp
TLS server that answers the same AdmissionReview with `allowed: true` and nothing else. `wrk`, with a Lua
script that posts a real review under a fresh uid per request, loads both: the seed's bad filter on
/mutate and its corrected form on /validate, at concurrency 16 and 64, in interleaved rounds. It prints
requests/s, p50/p99, server CPU per request, the throughput ratio to the baseline and the ratio the CPU per
request implies (medians over the rounds), then an error run at concurrency 64 of at least --requests
requests.

Not a test: the numbers depend on the machine and on what else runs on it. Needs `wrk` on PATH.

    python bench/webhook_bench.py [--duration 10] [--rounds 3] [--requests 20000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procstat import cpu_seconds  # noqa: E402
from certs.pki import generate_ca, issue_serving_cert  # noqa: E402
from epp.children import free_port  # noqa: E402

DATA = ROOT / "manifests" / "examples"
SERVICE = "llm-d-inference-scheduler/gaie-inference-scheduling-epp=10.96.45.12:9002"
START_SECONDS = 30.0
BODIES = {"/mutate": "seed-bad.yaml", "/validate": "seed-corrected.yaml"}

# Each request posts the review with a fresh uid; with `__NAME__` in the body also a fresh object name, so
# the server evaluates every review (the same object again is answered from its memo of recent verdicts).
LUA = r"""
local counter = 0
local template = nil
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

function init(args)
  local f = assert(io.open(os.getenv("REVIEW_BODY"), "r"))
  template = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local uid = string.format("bench-%d-%d", id, counter)
  local name = string.format("review-%d-%d", id, counter)
  return wrk.format(nil, nil, nil, (template:gsub("__UID__", uid):gsub("__NAME__", name)))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""

BARE_SERVER = r"""
import json, ssl, sys
from aiohttp import web

async def answer(request):
    review = json.loads(await request.read())
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": True}}
    payload = json.dumps(body, separators=(",", ":")).encode()
    return web.Response(body=payload, content_type="application/json")

async def healthz(request):
    return web.Response(text="ok\n")

port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.minimum_version = ssl.TLSVersion.TLSv1_2
context.load_cert_chain(cert, key)
app = web.Application(client_max_size=3 * 1024 * 1024)
app.router.add_post("/mutate", answer)
app.router.add_post("/validate", answer)
app.router.add_get("/healthz", healthz)
web.run_app(app, host="127.0.0.1", port=port, ssl_context=context, access_log=None, print=None)
"""


@dataclass(frozen=True)
class Run:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process."""
        return cpu_seconds([self.process.pid])


def write_certs(folder: Path) -> tuple[Path, Path]:
    now = datetime.now(UTC)
    ca = generate_ca(common_name="bench CA", now=now, valid_for=timedelta(days=1))
    pair = issue_serving_cert(
        ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"], now=now, valid_for=timedelta(days=1)
    )
    (folder / "tls.crt").write_bytes(pair.cert_pem)
    (folder / "tls.key").write_bytes(pair.key_pem)
    return folder / "tls.crt", folder / "tls.key"


def write_review(folder: Path, name: str) -> Path:
    """A compact AdmissionReview as the apiserver sends it, with `__UID__` for the Lua script to fill."""
    document: dict[str, Any] = yaml.safe_load((DATA / name).read_text())
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "__UID__",
            "kind": {"group": "networking.istio.io", "version": "v1alpha3", "kind": "EnvoyFilter"},
            "resource": {"group": "networking.istio.io", "version": "v1alpha3", "resource": "envoyfilters"},
            "name": document["metadata"]["name"],
            "namespace": document["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:llm-d:operator"},
            "object": document,
            "oldObject": None,
            "dryRun": False,
        },
    }
    path = folder / f"{name}.review.json"
    path.write_text(json.dumps(review, separators=(",", ":")))
    return path


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def start(name: str, command: list[str], port: int) -> Server:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    server = Server(name, port, process)
    try:
        wait_ready(port, process)
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=5)


def run_wrk(server: Server, path: str, body: Path, script: Path, *, connections: int, seconds: float) -> Run:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, math.ceil(seconds))}s", "--timeout", "10s"]
    command += ["-s", str(script), f"https://127.0.0.1:{server.port}{path}"]
    environment = {"REVIEW_BODY": str(body), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    cpu_before = server.cpu_seconds()
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, env=environment)
    cpu = server.cpu_seconds() - cpu_before
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {result.stdout} {result.stderr}")
    data = json.loads(line.removeprefix("RESULT "))
    requests = int(data["requests"])
    return Run(
        requests=requests,
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=sum(int(data[k]) for k in ("connect", "read", "write", "status", "timeout")),
        cpu_us=cpu / requests * 1e6 if requests else 0.0,
    )


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda run: run.rps)[len(runs) // 2]


def compare(
    args: argparse.Namespace, guard: Server, bare: Server, bodies: dict[str, Path], script: Path
) -> None:
    header = f"{'endpoint':<10} {'conc':>4} {'server':<14} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
    print(header + f" {'errors':>6} {'cpu us/req':>10} {'ratio':>6} {'cpu ratio':>9}")
    for path, body in bodies.items():
        for server in (guard, bare):  # warm up: imports, first evaluations, connection setup
            run_wrk(server, path, body, script, connections=16, seconds=2)
        for connections in (16, 64):
            runs: dict[str, list[Run]] = {guard.name: [], bare.name: []}
            for _ in range(args.rounds):
                for server in (bare, guard):
                    runs[server.name].append(
                        run_wrk(server, path, body, script, connections=connections, seconds=args.duration)
                    )
            base = median_run(runs[bare.name])
            for server in (bare, guard):
                run = median_run(runs[server.name])
                ratio = f"{run.rps / base.rps:.2f}" if server is guard and base.rps else ""
                # CPU per request is steadier than wall-clock throughput on a shared machine: the
                # throughput ratio the server's own cost allows, all else equal.
                cpu_ratio = f"{base.cpu_us / run.cpu_us:.2f}" if server is guard and run.cpu_us else ""
                errors = sum(r.errors for r in runs[server.name])
                print(
                    f"{path:<10} {connections:>4} {server.name:<14} {run.rps:>8.0f} {run.p50_ms:>7.2f} "
                    f"{run.p99_ms:>7.2f} {errors:>6} {run.cpu_us:>10.0f} {ratio:>6} {cpu_ratio:>9}",
                    flush=True,
                )


def error_run(args: argparse.Namespace, guard: Server, bodies: dict[str, Path], script: Path) -> bool:
    """At least --requests requests at concurrency 64 on /mutate; True when none failed."""
    probe = run_wrk(guard, "/mutate", bodies["/mutate"], script, connections=64, seconds=3)
    seconds = max(5.0, 1.3 * args.requests / max(probe.rps, 1.0))
    run = run_wrk(guard, "/mutate", bodies["/mutate"], script, connections=64, seconds=seconds)
    print(
        f"error run: /mutate c64 {run.requests} requests in {run.seconds:.1f}s, {run.errors} errors, "
        f"p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms"
    )
    return run.errors == 0 and run.requests >= args.requests


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Admission webhook benchmark against a bare aiohttp handler."
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per case; medians shown")
    parser.add_argument("--requests", type=int, default=20000, help="requests in the c64 error run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("webhook_bench: wrk is not on PATH", file=sys.stderr)
        return 2
    print(f"cpus {os.cpu_count()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
        folder = Path(tmp)
        cert, key = write_certs(folder)
        script = folder / "review.lua"
        script.write_text(LUA)
        (folder / "bare.py").write_text(BARE_SERVER)
        bodies = {path: write_review(folder, name) for path, name in BODIES.items()}
        tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
        port = free_port()
        serve = [
            sys.executable,
            "-m",
            "cli.main",
            "serve",
            *tls,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        guard = start("extproc-guard", [*serve, "--service", SERVICE], port)
        try:
            port = free_port()
            bare = start(
                "bare aiohttp",
                [sys.executable, str(folder / "bare.py"), str(port), str(cert), str(key)],
                port,
            )
            try:
                compare(args, guard, bare, bodies, script)
            finally:
                stop(bare)
            ok = error_run(args, guard, bodies, script)
        finally:
            stop(guard)
    print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
