"""End-to-end cost of the admission webhooks, measured through the real kubectl.

On one control plane (etcd + kube-apiserver, built by tests/e2e/controlplane/build.sh), in one run:
`kubectl apply` of the seed's bad EnvoyFilter (a create, a new name each time) into two namespaces, one
that the webhook configurations select (`extproc-guard serve` mutates and validates there) and one they
do not. The two are interleaved, alternating which goes first, so both see the same machine load.
Prints the p50 of the whole `kubectl apply` (process start included) and of the create request alone
(the latency kubectl logs at -v=6) for both, and what the webhooks add.

    python bench/e2e_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import logging
import re
import ssl
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.cluster import (  # noqa: E402
    BUILD_SCRIPT,
    ControlPlane,
    ControlPlaneError,
    Kubectl,
    find_bin_dir,
    find_cli,
    install_crds,
    missing_binaries,
    missing_crd_files,
)
from tests.e2e.seeds import dump, load_document, renamed  # noqa: E402
from tests.e2e.webhook_server import (  # noqa: E402
    WebhookServer,
    register_webhooks,
    serve_help,
    unregister_webhooks,
)

logger = logging.getLogger(__name__)

EPP_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: gaie-inference-scheduling-epp
  namespace: llm-d-inference-scheduler
spec:
  selector: {app: gaie-inference-scheduling-epp}
  ports: [{name: grpc-ext-proc, port: 9002, targetPort: 9002}]
"""
PLAIN_NAMESPACE = "bench-without-webhooks"
WEBHOOK_NAMESPACE = "bench-with-webhooks"
SELECTOR_KEY, SELECTOR_VALUE = "extproc-guard.io/bench", "webhooks"
REVIEW_DURATION = re.compile(
    r'^extproc_guard_review_duration_seconds_(sum|count)\{webhook="([^"]+)"\} (\S+)$', re.M
)
# kubectl -v=6 logs each response with its latency; two spellings across kubectl versions.
POST_LATENCY = (
    re.compile(r'"Response" verb="POST" .*?milliseconds=(\d+)'),
    re.compile(r"POST \S+ \d+ [A-Za-z ]+ in (\d+) milliseconds"),
)


@dataclass(frozen=True)
class Sample:
    wall_ms: float
    request_ms: float | None


@dataclass(frozen=True)
class Summary:
    wall_p50: float
    request_p50: float | None

    @classmethod
    def of(cls, samples: list[Sample]) -> Summary:
        requests = [s.request_ms for s in samples if s.request_ms is not None]
        return cls(
            statistics.median(s.wall_ms for s in samples),
            statistics.median(requests) if requests else None,
        )


def parse_request_ms(stderr: str) -> float | None:
    for pattern in POST_LATENCY:
        if match := pattern.search(stderr):
            return float(match.group(1))
    return None


def apply_once(kubectl: Kubectl, document: dict[str, Any]) -> Sample:
    start = time.perf_counter()
    result = kubectl.apply(dump(document), "-v=6", check=False)
    wall_ms = (time.perf_counter() - start) * 1000
    if result.returncode != 0:
        raise ControlPlaneError(f"kubectl apply failed: {result.stderr.strip().splitlines()[-1:]}")
    return Sample(wall_ms, parse_request_ms(result.stderr))


def measure_interleaved(kubectl: Kubectl, runs: int, warmup: int) -> dict[str, list[Sample]]:
    """Applies into both namespaces, alternating which goes first; the first `warmup` pairs are dropped."""
    seed = load_document("seed-bad.yaml")
    samples: dict[str, list[Sample]] = {PLAIN_NAMESPACE: [], WEBHOOK_NAMESPACE: []}
    for index in range(warmup + runs):
        order = (PLAIN_NAMESPACE, WEBHOOK_NAMESPACE)
        for namespace in order if index % 2 == 0 else reversed(order):
            sample = apply_once(kubectl, renamed(seed, f"bench-{index}", namespace))
            if index >= warmup:
                samples[namespace].append(sample)
    return samples


def review_means_ms(server: WebhookServer) -> dict[str, float]:
    """Mean time the webhook spent per review, by webhook, from its own /metrics."""
    context = ssl.create_default_context(cadata=server.ca_pem.decode())
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5, context=context) as response:
        text = response.read().decode()
    totals: dict[str, dict[str, float]] = {}
    for match in REVIEW_DURATION.finditer(text):
        kind, webhook, value = match.groups()
        totals.setdefault(webhook, {})[kind] = float(value)
    return {
        webhook: parts["sum"] / parts["count"] * 1000
        for webhook, parts in sorted(totals.items())
        if parts.get("count")
    }


def format_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def run(runs: int, warmup: int) -> int:
    bin_dir = find_bin_dir()
    if missing := missing_binaries(bin_dir) + missing_crd_files(bin_dir):
        print(f"e2e_bench: control plane build outputs missing ({', '.join(missing)}): run {BUILD_SCRIPT}")
        return 2
    cli, help_text = find_cli(), serve_help()
    if cli is None or help_text is None:
        print("e2e_bench: `extproc-guard serve` is not available")
        return 2
    plane = ControlPlane(bin_dir)
    server: WebhookServer | None = None
    try:
        info = plane.start()
        kubectl = info.kubectl
        install_crds(kubectl, bin_dir / "crds")
        kubectl.run("create", "namespace", "llm-d-inference-scheduler")
        kubectl.apply(EPP_SERVICE)
        kubectl.run("create", "namespace", PLAIN_NAMESPACE)
        kubectl.run("create", "namespace", WEBHOOK_NAMESPACE)
        kubectl.run("label", "namespace", WEBHOOK_NAMESPACE, f"{SELECTOR_KEY}={SELECTOR_VALUE}")

        server = WebhookServer.create(cli, info.kubeconfig, help_text)
        server.start()
        probe = renamed(load_document("seed-bad.yaml"), "bench-probe", WEBHOOK_NAMESPACE)
        register_webhooks(kubectl, server, probe, {SELECTOR_KEY: SELECTOR_VALUE})
        samples = measure_interleaved(kubectl, runs, warmup)
        without = Summary.of(samples[PLAIN_NAMESPACE])
        with_webhooks = Summary.of(samples[WEBHOOK_NAMESPACE])
        handling = review_means_ms(server)
        unregister_webhooks(kubectl)
    except (ControlPlaneError, OSError) as error:
        print(f"e2e_bench: {error}")
        return 1
    finally:
        if server is not None:
            server.remove()
        plane.stop()

    print(f"kubectl apply of the seed's bad EnvoyFilter, p50 over {runs} interleaved runs each")
    print(
        f"  without webhooks: apply {format_ms(without.wall_p50)}, "
        f"create request {format_ms(without.request_p50)}"
    )
    print(
        f"  with webhooks:    apply {format_ms(with_webhooks.wall_p50)}, "
        f"create request {format_ms(with_webhooks.request_p50)}"
    )
    added_wall = with_webhooks.wall_p50 - without.wall_p50
    added_request = (
        None
        if with_webhooks.request_p50 is None or without.request_p50 is None
        else with_webhooks.request_p50 - without.request_p50
    )
    print(f"  added by the webhooks: apply {added_wall:+.1f} ms, create request {format_ms(added_request)}")
    if handling:
        means = ", ".join(f"{webhook} {ms:.1f} ms" for webhook, ms in handling.items())
        print(f"  the webhook's own time per review (mean, its /metrics): {means}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--runs", type=int, default=30, help="measured applies per configuration (default 30)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="applies dropped before measuring (default 3)")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(args.runs, args.warmup)


if __name__ == "__main__":
    sys.exit(main())
