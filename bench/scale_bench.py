"""Cluster scale: the webhook and the reconciler against a real kube-apiserver holding N EnvoyFilters.

For each N (default 1,000 and 10,000), on a fresh control plane (etcd + kube-apiserver with the real Istio
and GIE CRDs, built by tests/e2e/controlplane/build.sh):

1. creates N/10 namespaces, 2N Services and N EnvoyFilters in the mix of `bench/scale_mix.py` (80% unrelated,
   15% EPP filters, half of them in the bad form, 5% other ext_proc users), concurrently through the API
   (`--threads` requests in flight, one keep-alive TLS connection per thread), and says how long it took;
2. starts `extproc-guard serve --kubeconfig` (with `--workers W`, once per value of `--workers` and build of
   the engine in `--engines`: `source`, the sources, or `compiled`, the build of `make compiled`) and reports
   the time until `/readyz` answers 200 from every worker (its caches synced), its memory: RSS summed over
   the supervisor and its workers, and PSS (the kernel's proportional set size, from smaps_rollup: a page
   that forked processes share counts once in all), and `/mutate` p50/p99 at concurrency 16 over TLS
   (`wrk` with a Lua body: the bad EPP filter of a populated namespace, a fresh uid per request) in two
   modes, `--rounds` rounds each:
   "distinct", a new object name per request, so the server evaluates every review, and "same", the same
   object again (the apiserver's reinvocations and re-applies), answered from the server's memo as
   `bench/webhook_bench.py` measures it; then the server's garbage collections from its own `/metrics`
   (`--py-spy` also samples where its time goes in the last distinct round);
3. runs `extproc-guard reconcile --once --kubeconfig` `--rounds` times with each engine build (the bad
   filters put back between rounds) and reports the audit's time (its own log line), the whole command's
   time, its peak RSS (the kernel's maximum resident set of the process) and what it wrote: the
   EnvoyFilters whose resourceVersion moved, checked against the bad EPP filters, and the Events it
   recorded.

Then prints one table (medians, ranges over the rounds), the growth per 1,000 filters between the first
and the last size, and with several variants (engine builds, `--workers` values), each one's ratio to the
first (the baseline) at every size.

Not a test: the numbers depend on the machine and what else runs on it (the load average is printed).
Needs the control-plane build outputs and `wrk` on PATH.

    python bench/scale_bench.py [--sizes 1000,10000] [--engines source,compiled] [--workers 1,2]
                                [--rounds 3] [--duration 10] [--threads 64] [--py-spy]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procstat import busy_seconds, children_cpu_seconds, cpu_seconds  # noqa: E402
from bench.sampling import Sampler, summarize  # noqa: E402
from bench.scale_mix import (  # noqa: E402
    OPERATOR,
    Kind,
    filters_of,
    namespace_name,
    namespaces,
    services_of,
)
from bench.webhook_bench import LUA, Run, Server, run_wrk, write_certs  # noqa: E402
from epp.children import free_port  # noqa: E402
from tests.compiled import compiled_build_problem, compiled_env  # noqa: E402
from tests.e2e.cluster import (  # noqa: E402
    BUILD_SCRIPT,
    ControlPlane,
    ControlPlaneInfo,
    find_bin_dir,
    install_crds,
    missing_binaries,
    missing_crd_files,
)

FILTERS = "/apis/networking.istio.io/v1alpha3"
EVENTS = "/apis/events.k8s.io/v1"
READY_TIMEOUT_SECONDS = 300.0
RECONCILE_TIMEOUT_SECONDS = 900.0
MODES = {"distinct": "every review a new object (evaluated)", "same": "the same object, new uid (memo)"}
AUDIT_LINE = re.compile(r"audit done objects=(\d+) .* seconds=([\d.]+)")


# -- the API, directly ------------------------------------------------------------------------------------
class ApiError(RuntimeError):
    pass


class Api:
    """Admin requests to the control plane: one keep-alive TLS connection per thread."""

    def __init__(self, info: ControlPlaneInfo) -> None:
        url = urllib.parse.urlsplit(info.server)
        self._host, self._port = url.hostname or "127.0.0.1", url.port or 443
        pki = info.work_dir / "pki"
        self._context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPSConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPSConnection(
                self._host, self._port, context=self._context, timeout=120
            )
            self._local.connection = connection
        return connection

    def request(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201)) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        for attempt in range(3):
            connection = self._connection()
            try:
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
                continue
            if response.status == 429 and attempt < 2:
                time.sleep(1)
                continue
            if response.status not in ok:
                raise ApiError(f"{method} {path}: {response.status} {data[:300]!r}")
            return json.loads(data) if data else None
        raise ApiError(f"{method} {path}: gave up")

    def list_all(self, path: str, *, limit: int = 500) -> Iterator[dict[str, Any]]:
        token = ""
        while True:
            query = {"limit": str(limit)} | ({"continue": token} if token else {})
            page = self.request("GET", f"{path}?{urllib.parse.urlencode(query)}")
            yield from page.get("items") or ()
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return


def run_all(threads: int, calls: Iterable[Callable[[], object]]) -> int:
    """Run the calls on a pool; raise the first failure; the number run."""
    done = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        pending: set[concurrent.futures.Future[object]] = set()
        for call in calls:
            pending.add(pool.submit(call))
            if len(pending) >= threads * 8:
                finished, pending = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
                for future in finished:
                    future.result()
                    done += 1
        for future in concurrent.futures.as_completed(pending):
            future.result()
            done += 1
    return done


# -- populating the cluster -----------------------------------------------------------------------------
@dataclass
class Population:
    size: int
    bad: set[tuple[str, str]] = field(default_factory=set)
    bad_documents: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def populate(api: Api, size: int, *, threads: int) -> Population:
    population = Population(size)
    indexes = list(namespaces(size))
    manager = f"fieldManager={OPERATOR}"

    def create_namespace(index: int) -> Callable[[], object]:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace_name(index)}}
        return lambda: api.request("POST", f"/api/v1/namespaces?{manager}", body)

    def create_service(body: dict[str, Any]) -> Callable[[], object]:
        path = f"/api/v1/namespaces/{body['metadata']['namespace']}/services?{manager}"
        return lambda: api.request("POST", path, body)

    def create_filter(body: dict[str, Any]) -> Callable[[], object]:
        path = f"{FILTERS}/namespaces/{body['metadata']['namespace']}/envoyfilters?{manager}"
        return lambda: api.request("POST", path, body)

    def filters() -> Iterator[Callable[[], object]]:
        for index in indexes:
            for slot, document in filters_of(index):
                population.counts[slot.kind] = population.counts.get(slot.kind, 0) + 1
                if slot.kind is Kind.EPP_BAD:
                    population.bad.add((slot.namespace, slot.name))
                    population.bad_documents[(slot.namespace, slot.name)] = document
                yield create_filter(document)

    phases: list[tuple[str, Callable[[], Iterable[Callable[[], object]]]]] = [
        ("namespaces", lambda: (create_namespace(i) for i in indexes)),
        ("services", lambda: (create_service(s) for i in indexes for s in services_of(i))),
        ("envoyfilters", filters),
    ]
    for name, calls in phases:
        started = time.perf_counter()
        population.counts[name] = run_all(threads, calls())
        population.seconds[name] = time.perf_counter() - started
        rate = population.counts[name] / population.seconds[name]
        print(f"  created {population.counts[name]:>6} {name:<12} in {population.seconds[name]:6.1f} s "
              f"({rate:.0f}/s)", flush=True)  # fmt: skip
    return population


def versions(api: Api) -> dict[tuple[str, str], str]:
    return {
        (item["metadata"]["namespace"], item["metadata"]["name"]): item["metadata"]["resourceVersion"]
        for item in api.list_all(f"{FILTERS}/envoyfilters")
    }


def count_events(api: Api) -> int:
    return sum(1 for _ in api.list_all(f"{EVENTS}/events"))


def put_back_bad_filters(api: Api, population: Population, *, threads: int) -> None:
    """Write the bad EPP filters in their bad form again (the operator's revert), for the next round."""
    current = versions(api)

    def revert(key: tuple[str, str]) -> Callable[[], object]:
        document = json.loads(json.dumps(population.bad_documents[key]))
        document["metadata"]["resourceVersion"] = current[key]
        path = f"{FILTERS}/namespaces/{key[0]}/envoyfilters/{key[1]}?fieldManager={OPERATOR}"
        return lambda: api.request("PUT", path, document)

    run_all(threads, (revert(key) for key in sorted(population.bad)))


# -- processes ------------------------------------------------------------------------------------------
def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a running process, and Pss (its share of every page it maps: a page
    shared by n processes counts 1/n), in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "Pss":
            found[key] = int(value.split()[0])
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the supervisor of `serve --workers` and its workers)."""
    pids = [pid]
    for parent in pids:
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        pids.extend(int(child) for child in children)
    return pids


def tree_memory_mib(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM and Pss summed over `pid` and its descendants, in MiB. The RSS sum counts a page that
    forked workers share once per process (an overstatement); the Pss sum counts it once in all."""
    total = {"VmRSS": 0.0, "VmHWM": 0.0, "Pss": 0.0}
    for member in process_tree(pid):
        try:
            memory = memory_kib(member)
        except OSError:
            continue  # exited meanwhile
        for key in total:
            total[key] += memory.get(key, 0) / 1024
    return total


class ServerTree(Server):
    """The server as `run_wrk` sees it, its CPU time summed over the supervisor and the workers."""

    def cpu_seconds(self) -> float:
        return cpu_seconds(process_tree(self.process.pid))


def wait_child(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, int]:
    """Wait for a child (bounded) and return (exit code, peak RSS in KiB) from the kernel's rusage."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_maxrss
        if time.monotonic() > deadline:
            process.kill()
            timeout = 30.0
            deadline = time.monotonic() + timeout
        time.sleep(0.05)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "cli.main", *args]


def child_env(engine: str) -> dict[str, str] | None:
    """The environment of a command run with `engine`: the sources, or the compiled build (`make
    compiled`: the project installed with the engine's modules compiled by mypyc)."""
    return compiled_env() if engine == "compiled" else None


def https_get(port: int, path: str) -> tuple[int, bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- the webhook ----------------------------------------------------------------------------------------
@dataclass
class WebhookResult:
    workers: str
    engine: str
    ready_seconds: float
    rss_ready_mib: float
    rss_after_mib: float
    peak_mib: float
    pss_ready_mib: float
    pss_after_mib: float
    runs: dict[str, list[Run]]
    gc: str
    profile: str = ""


def review_body(folder: Path, population: Population, mode: str) -> Path:
    """A CREATE review of a bad EPP filter in the first namespace, `__UID__` (and in the distinct mode
    `__NAME__`) for the Lua script to fill."""
    slot_key = sorted(population.bad)[0]
    document = json.loads(json.dumps(population.bad_documents[slot_key]))
    name = "__NAME__" if mode == "distinct" else "bench-review"
    document["metadata"]["name"] = name
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "__UID__",
            "kind": {"group": "networking.istio.io", "version": "v1alpha3", "kind": "EnvoyFilter"},
            "resource": {"group": "networking.istio.io", "version": "v1alpha3", "resource": "envoyfilters"},
            "name": name,
            "namespace": document["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": f"system:serviceaccount:llm-d:{OPERATOR}"},
            "object": document,
            "oldObject": None,
            "dryRun": False,
        },
    }
    path = folder / f"review-{mode}.json"
    path.write_text(json.dumps(review, separators=(",", ":")))
    return path


def gc_summary(metrics: str) -> str:
    """The server's garbage collections by generation, from its own metrics (count, total pause)."""
    parts = []
    for generation in ("0", "1", "2"):
        count = re.search(
            rf'extproc_guard_gc_pause_seconds_count{{generation="{generation}"}} ([\d.e+]+)', metrics
        )
        total = re.search(
            rf'extproc_guard_gc_pause_seconds_sum{{generation="{generation}"}} ([\d.e+-]+)', metrics
        )
        if count and total:
            parts.append(
                f"gen{generation} {float(count.group(1)):.0f}x {float(total.group(1)) * 1000:.0f} ms"
            )
    return ", ".join(parts) or "no GC metric"


def worker_count(workers: str) -> int:
    """The number of workers `serve --workers VALUE` runs (`auto`: the CPUs this process may run on)."""
    return len(os.sched_getaffinity(0)) if workers == "auto" else int(workers)


def ready_workers(port: int, workers: int, ready: set[int]) -> bool:
    """Ask /readyz on a fresh connection (whichever worker the kernel picks); True once every worker has
    answered 200. A single server's answer names no worker: it is worker 0."""
    try:
        status, body = https_get(port, "/readyz")
    except OSError:
        return False
    if status == 200:
        ready.add(int((json.loads(body).get("worker") or {}).get("index", 0)))
    return len(ready) >= workers


def measure_webhook(
    info: ControlPlaneInfo,
    population: Population,
    folder: Path,
    *,
    workers: str,
    engine: str,
    rounds: int,
    duration: float,
    py_spy: bool = False,
) -> WebhookResult:
    cert, key = write_certs(folder)
    script = folder / "review.lua"
    script.write_text(LUA)
    bodies = {mode: review_body(folder, population, mode) for mode in MODES}
    port = free_port()
    argv = cli("serve", "--tls-cert", str(cert), "--tls-key", str(key), "--host", "127.0.0.1",
               "--port", str(port), "--kubeconfig", str(info.kubeconfig), "--workers", workers)  # fmt: skip
    log = (folder / f"serve-workers-{workers}-{engine}.log").open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env(engine))
    server = ServerTree("extproc-guard", port, process)
    try:
        ready = None
        answered: set[int] = set()
        while ready is None:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited with {process.returncode}; see {log.name}")
            if time.perf_counter() - started > READY_TIMEOUT_SECONDS:
                raise RuntimeError("serve did not become ready")
            if ready_workers(port, worker_count(workers), answered):
                ready = time.perf_counter() - started
            else:
                time.sleep(0.05)
        time.sleep(1.0)  # let the last list's garbage go before taking the resident size
        memory_ready = tree_memory_mib(process.pid)
        runs: dict[str, list[Run]] = {mode: [] for mode in MODES}
        for body in bodies.values():
            run_wrk(server, "/mutate", body, script, connections=16, seconds=2)  # warm up
        tree = process_tree(process.pid)
        sampled = tree[1] if len(tree) > 1 else tree[0]  # one worker: py-spy follows one process
        sampler = Sampler(sampled, folder) if py_spy else None
        for round_index in range(rounds):
            for mode, body in bodies.items():
                last = round_index == rounds - 1 and mode == "distinct"
                sampling = sampler if last else None
                if sampling is not None:
                    sampling.start(duration)
                busy, wrk = busy_seconds(), children_cpu_seconds()
                run = run_wrk(server, "/mutate", body, script, connections=16, seconds=duration)
                busy, wrk = busy_seconds() - busy, children_cpu_seconds() - wrk
                if sampling is not None:
                    sampling.finish()
                runs[mode].append(run)
                # What else kept the cores busy meanwhile: the apiserver, etcd, the kernel, other jobs.
                others = max(0.0, busy - wrk - run.cpu_us * run.requests / 1e6) / run.seconds
                print(f"    /mutate c16 {mode:<8}: {run.rps:5.0f} req/s, p50 {run.p50_ms:5.2f} ms, "
                      f"p99 {run.p99_ms:5.2f} ms, {run.errors} errors, "
                      f"{run.cpu_us:5.0f} us CPU per review; wrk {wrk / run.seconds:.2f} cores, "
                      f"everything else {others:.2f} cores", flush=True)  # fmt: skip
        memory = tree_memory_mib(process.pid)
        _, metrics = https_get(port, "/metrics")
        return WebhookResult(
            workers=workers,
            engine=engine,
            ready_seconds=ready,
            rss_ready_mib=memory_ready["VmRSS"],
            rss_after_mib=memory["VmRSS"],
            peak_mib=memory["VmHWM"],
            pss_ready_mib=memory_ready["Pss"],
            pss_after_mib=memory["Pss"],
            runs=runs,
            gc=gc_summary(metrics.decode()),
            profile=""
            if sampler is None
            else sampler.problem or summarize(sampler.profile, within=("webhook/", "policies/", "kube/")),
        )
    finally:
        process.send_signal(signal.SIGTERM)
        wait_child(process, 40)
        log.close()


# -- the reconciler -------------------------------------------------------------------------------------
@dataclass
class ReconcileRun:
    audit_seconds: float
    total_seconds: float
    peak_mib: float
    objects: int
    written: int
    written_bad: int
    written_other: int
    events: int
    exit_code: int


def measure_reconcile(
    api: Api, info: ControlPlaneInfo, population: Population, folder: Path, index: int, *, engine: str
) -> ReconcileRun:
    before = versions(api)
    events_before = count_events(api)
    log_path = folder / f"reconcile-{engine}-{index}.log"
    argv = cli("-v", "reconcile", "--once", "--kubeconfig", str(info.kubeconfig))
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env(engine)
        )
        code, peak_kib = wait_child(process, RECONCILE_TIMEOUT_SECONDS)
        total = time.perf_counter() - started
    text = log_path.read_text(errors="replace")
    found = AUDIT_LINE.search(text)
    if found is None:
        raise RuntimeError(f"reconcile printed no audit line (exit {code}); see {log_path}")
    after = versions(api)
    written = {key for key, version in after.items() if before.get(key) != version}
    return ReconcileRun(
        audit_seconds=float(found.group(2)),
        total_seconds=total,
        peak_mib=peak_kib / 1024,
        objects=int(found.group(1)),
        written=len(written),
        written_bad=len(written & population.bad),
        written_other=len(written - population.bad),
        events=count_events(api) - events_before,
        exit_code=code,
    )


# -- one size -------------------------------------------------------------------------------------------
@dataclass
class SizeResult:
    size: int
    population: Population
    webhooks: dict[str, WebhookResult]
    """By variant (`variant_label`), the baseline first."""
    reconciles: dict[str, list[ReconcileRun]]
    """By engine, the baseline first."""

    @property
    def webhook(self) -> WebhookResult:
        """The baseline: the first `--engines` value with the first `--workers` value."""
        return next(iter(self.webhooks.values()))


def variant_label(engine: str, workers: str) -> str:
    return f"{engine} engine, --workers {workers}"


def measure_size(size: int, args: argparse.Namespace, folder: Path) -> SizeResult:
    plane = ControlPlane(find_bin_dir())
    try:
        info = plane.start()
        install_crds(info.kubectl, info.bin_dir / "crds")
        api = Api(info)
        what = f"{size // 10:,} namespaces, {2 * size:,} Services, {size:,} EnvoyFilters"
        print(f"N = {size:,}: creating {what} with {args.threads} concurrent requests", flush=True)
        population = populate(api, size, threads=args.threads)
        total = sum(population.seconds.values())
        mix = ", ".join(f"{kind} {population.counts[kind]}" for kind in Kind if kind in population.counts)
        print(f"  created in {total:.0f} s; mix: {mix}")
        webhooks = {}
        for engine in args.engines:
            for workers in args.workers:
                label = variant_label(engine, workers)
                print(f"  load average {load_average()}; webhook, {label}", flush=True)
                webhook = measure_webhook(
                    info,
                    population,
                    folder,
                    workers=workers,
                    engine=engine,
                    rounds=args.rounds,
                    duration=args.duration,
                    py_spy=args.py_spy,
                )
                webhooks[label] = webhook
                print(
                    f"    ready {webhook.ready_seconds:.1f} s; RSS (sum over its processes) "
                    f"{webhook.rss_ready_mib:.0f} MiB at ready, {webhook.rss_after_mib:.0f} MiB after the "
                    f"load (peaks {webhook.peak_mib:.0f} MiB); PSS {webhook.pss_ready_mib:.0f} MiB at ready, "
                    f"{webhook.pss_after_mib:.0f} MiB after; GC (all workers) {webhook.gc}",
                    flush=True,
                )
                if webhook.profile:
                    print("    where a worker spent the last distinct-objects round (py-spy):")
                    print("\n".join("      " + line for line in webhook.profile.splitlines()))
        reconciles: dict[str, list[ReconcileRun]] = {}
        for engine in args.engines:
            runs = reconciles.setdefault(engine, [])
            for index in range(args.rounds):
                if sum(len(done) for done in reconciles.values()):  # the bad filters, as created
                    put_back_bad_filters(api, population, threads=args.threads)
                run = measure_reconcile(api, info, population, folder, index, engine=engine)
                runs.append(run)
                print(
                    f"  reconcile --once ({engine} engine): audit {run.audit_seconds:.1f} s (command "
                    f"{run.total_seconds:.1f} s), peak RSS {run.peak_mib:.1f} MiB, {run.objects} objects, "
                    f"wrote {run.written} EnvoyFilters ({run.written_bad} of {len(population.bad)} bad ones, "
                    f"{run.written_other} others) and {run.events} Events, exit {run.exit_code}",
                    flush=True,
                )
        return SizeResult(size, population, webhooks, reconciles)
    finally:
        plane.stop()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def spread(values: list[float], digits: int = 1) -> str:
    """The median, and the range when the values differ."""
    low, high, median = min(values), max(values), statistics.median(values)
    if round(low, digits) == round(high, digits):
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def median_of(result: WebhookResult, mode: str, field: str) -> float:
    return float(statistics.median(getattr(run, field) for run in result.runs[mode]))


def report(results: list[SizeResult]) -> None:
    """One row per measure and variant (engine, `--workers` value), one column per size (medians, ranges in
    brackets), then the growth per 1,000 filters and each variant's ratio to the first."""
    print(
        "\nmedians (range over the rounds); MiB = 2^20 bytes; RSS and PSS summed over the server's processes"
    )
    variants = list(results[0].webhooks)
    engines = list(results[0].reconciles)

    def webhook(variant: str, mode: str, field: str, digits: int = 1) -> Callable[[SizeResult], str]:
        return lambda r: spread([getattr(x, field) for x in r.webhooks[variant].runs[mode]], digits)

    def reconcile(engine: str, field: str) -> Callable[[SizeResult], str]:
        return lambda r: spread([getattr(x, field) for x in r.reconciles[engine]])

    def rss_and_peak(variant: str) -> Callable[[SizeResult], str]:
        return lambda r: f"{r.webhooks[variant].rss_after_mib:.0f} ({r.webhooks[variant].peak_mib:.0f})"

    def pss(variant: str) -> Callable[[SizeResult], str]:
        return lambda r: f"{r.webhooks[variant].pss_after_mib:.0f}"

    def written(engine: str) -> Callable[[SizeResult], str]:
        return lambda r: f"{max(x.written for x in r.reconciles[engine])} / {len(r.population.bad)}"

    def not_bad(engine: str) -> Callable[[SizeResult], str]:
        return lambda r: f"{max(x.written_other for x in r.reconciles[engine])}"

    rows: list[tuple[str, Callable[[SizeResult], str]]] = []
    for v in variants:
        tag = f" [{v}]"
        rows += [
            ("webhook ready, s" + tag, lambda r, v=v: f"{r.webhooks[v].ready_seconds:.1f}"),
            ("webhook RSS after the load (peak), MiB" + tag, rss_and_peak(v)),
            ("webhook PSS after the load, MiB" + tag, pss(v)),
            ("/mutate c16 p50, ms (distinct objects)" + tag, webhook(v, "distinct", "p50_ms")),
            ("/mutate c16 p99, ms (distinct objects)" + tag, webhook(v, "distinct", "p99_ms")),
            ("/mutate c16 p50, ms (same object)" + tag, webhook(v, "same", "p50_ms", 2)),
            ("/mutate c16 p99, ms (same object)" + tag, webhook(v, "same", "p99_ms", 2)),
        ]  # fmt: skip
    for e in engines:
        tag = f" [{e} engine]"
        rows += [
            ("reconcile audit, s" + tag, reconcile(e, "audit_seconds")),
            ("reconcile peak RSS, MiB" + tag, reconcile(e, "peak_mib")),
            ("EnvoyFilters written / bad" + tag, written(e)),
            ("of them not bad" + tag, not_bad(e)),
        ]  # fmt: skip
    width = max(len(label) for label, _ in rows) + 2
    print(f"{'':<{width}}" + "".join(f"{f'N = {r.size:,}':>22}" for r in results))
    for label, cell in rows:
        print(f"{label:<{width}}" + "".join(f"{cell(r):>22}" for r in results))
    base = variants[0]
    for v in variants[1:]:
        for r in results:
            one, other = r.webhooks[base], r.webhooks[v]
            ratios = ", ".join(
                f"{what} {median_of(other, mode, field) / median_of(one, mode, field):.2f}x"
                for what, mode, field in (
                    ("distinct p50", "distinct", "p50_ms"),
                    ("distinct p99", "distinct", "p99_ms"),
                    ("distinct req/s", "distinct", "rps"),
                    ("distinct CPU per review", "distinct", "cpu_us"),
                    ("same p99", "same", "p99_ms"),
                )
            )
            rss = other.rss_after_mib / one.rss_after_mib
            pss_ratio = other.pss_after_mib / one.pss_after_mib
            print(f"{v} against {base} at N = {r.size:,}: {ratios}, RSS {rss:.2f}x, PSS {pss_ratio:.2f}x")
    for e in engines[1:]:
        for r in results:
            audit = statistics.median(x.audit_seconds for x in r.reconciles[e]) / statistics.median(
                x.audit_seconds for x in r.reconciles[engines[0]]
            )
            print(f"reconcile audit, {e} engine against {engines[0]} at N = {r.size:,}: {audit:.2f}x")
    if len(results) < 2:
        return
    small, large = results[0], results[-1]
    thousands = (large.size - small.size) / 1000

    def growth(value: Callable[[SizeResult], float]) -> float:
        return (value(large) - value(small)) / thousands

    for v in variants:
        print(
            f"growth per 1,000 EnvoyFilters (and 2,000 Services): webhook RSS after the load "
            f"{growth(lambda r, v=v: r.webhooks[v].rss_after_mib):.2f} MiB [{v}]"
        )
    for e in engines:

        def median_peak(r: SizeResult, e: str = e) -> float:
            return statistics.median(x.peak_mib for x in r.reconciles[e])

        def median_audit(r: SizeResult, e: str = e) -> float:
            return statistics.median(x.audit_seconds for x in r.reconciles[e])

        print(
            f"growth per 1,000 EnvoyFilters: reconciler peak RSS {growth(median_peak):.2f} MiB "
            f"({growth(median_peak) * 1.048576:.2f} MB), audit {growth(median_audit):.2f} s [{e} engine]"
        )


def engines_list(text: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    for value in values:
        if value not in ("source", "compiled"):
            raise argparse.ArgumentTypeError(f"{value!r} is not an engine build (source or compiled)")
    if not values or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError("give each engine build once")
    return values


def workers_list(text: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    for value in values:
        if value != "auto" and not (value.isdigit() and int(value) >= 1):
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of workers or 'auto'")
    if not values:
        raise argparse.ArgumentTypeError("no --workers value")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Webhook and reconciler at cluster scale on a real apiserver."
    )
    parser.add_argument("--sizes", default="1000,10000", help="numbers of EnvoyFilters (default 1000,10000)")
    parser.add_argument("--rounds", type=int, default=3, help="wrk rounds and reconcile runs per size")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk round (default 10)")
    parser.add_argument("--threads", type=int, default=64, help="concurrent creates (default 64)")
    parser.add_argument(
        "--workers",
        type=workers_list,
        default=["1"],
        metavar="W[,W...]",
        help="serve --workers values to measure the webhook with, the first one the baseline (default 1)",
    )
    parser.add_argument(
        "--engines",
        type=engines_list,
        default=["source"],
        metavar="E[,E...]",
        help="builds of the engine to measure, the first one the baseline: source (the sources) and "
        "compiled (`make compiled`) (default source)",
    )
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep the servers' logs in DIR")
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="sample the webhook (its first worker) with py-spy in its last distinct-objects round",
    )
    args = parser.parse_args()
    bin_dir = find_bin_dir()
    missing = missing_binaries(bin_dir) + missing_crd_files(bin_dir)
    if missing:
        print(f"scale_bench: control plane build outputs missing ({', '.join(missing)}): run {BUILD_SCRIPT}")
        return 2
    if "compiled" in args.engines and (problem := compiled_build_problem()) is not None:
        print(f"scale_bench: {problem}", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("scale_bench: wrk is not on PATH", file=sys.stderr)
        return 2
    sizes = [int(x) for x in args.sizes.split(",") if x]
    print(f"cpus {os.cpu_count()}, load average {load_average()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        for size in sizes:
            folder = Path(tmp) / str(size)
            folder.mkdir()
            results.append(measure_size(size, args, folder))
            if args.logs is not None:
                kept = args.logs / str(size)
                kept.mkdir(parents=True, exist_ok=True)
                for log in folder.glob("*.log"):
                    shutil.copy(log, kept / log.name)
    report(results)
    print(f"load average after {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
