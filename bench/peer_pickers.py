"""The ext_proc servers `bench/epp_bench.py` measures beside the EPP, built from Go by `bench/peers/build.sh`.

- `lwepp`: the Gateway API Inference Extension's reference picker. It finds its model server the way it
  does in a cluster, through an InferencePool and a Pod, here on the e2e control plane (etcd +
  kube-apiserver, `tests/e2e/cluster.py`). No kubelet runs there, so the Pod is created and its status
  set by hand (`kubectl patch --subresource=status`): Ready, with the simulator's address as its IP.
- `minimal`: the least a picker can do in grpc-go (`bench/peers/minimal/main.go`).

Not a test and not part of the services: tooling for the benchmark.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from epp.children import Child, start_child, stop_child
from tests.e2e.cluster import (
    BUILD_SCRIPT as CONTROLPLANE_BUILD_SCRIPT,
)
from tests.e2e.cluster import (
    ControlPlane,
    ControlPlaneError,
    find_bin_dir,
    install_crds,
    missing_binaries,
    missing_crd_files,
)

PEERS_DIR = Path(__file__).resolve().parent / "peers"
BUILD_SCRIPT = PEERS_DIR / "build.sh"
BIN_DIR = PEERS_DIR / "bin"
NAMES = ("lwepp", "minimal")
NAMESPACE = "bench"
POOL = "sim-pool"
POD = "sim-0"
LABELS = {"app": "sim"}


class PeerError(RuntimeError):
    """A peer could not be built or started; the message says what to run or what failed."""


def run_build(script: Path, what: str) -> None:
    """Run a build script (it does nothing when its outputs are up to date); raise with its error."""
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise PeerError(f"{what}: {script} failed:\n{detail}\n(run {script} by hand to see it whole)")
    print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"{what}: built")


def build_peers(names: tuple[str, ...]) -> None:
    """The peers' binaries, and for lwepp the e2e control plane, built or found up to date."""
    if not names:
        return
    run_build(BUILD_SCRIPT, "benchmark peers")
    if "lwepp" in names and find_bin_dir() == CONTROLPLANE_BUILD_SCRIPT.parent / "bin":
        run_build(CONTROLPLANE_BUILD_SCRIPT, "e2e control plane (lwepp reads its InferencePool there)")


def start_minimal(*, port: int, endpoint: str, log_dir: Path) -> Child:
    """The minimal grpc-go server on 127.0.0.1:`port`, sending every request to `endpoint`."""
    argv = [str(BIN_DIR / "minimal"), "--listen", f"127.0.0.1:{port}", "--endpoint", endpoint]
    return start_child("minimal", argv, log_dir=log_dir)


def pool_objects(sim_port: int) -> list[dict[str, Any]]:
    """The namespace, the InferencePool lwepp serves, and the simulator's Pod (without its status)."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": POOL, "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": LABELS},
                "targetPorts": [{"number": sim_port}],
                "endpointPickerRef": {"name": "lwepp", "port": {"number": 9002}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": POD, "namespace": NAMESPACE, "labels": LABELS},
            "spec": {"containers": [{"name": "sim", "image": "sim-model"}]},
        },
    ]


def ready_status(ip: str) -> dict[str, Any]:
    """What a kubelet would report for the simulator's Pod once it runs and passes its probes."""
    ready = [
        {"type": kind, "status": "True"}
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    return {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": ready}}


@contextlib.contextmanager
def running_lwepp(
    *, port: int, metrics_port: int, health_port: int, sim_port: int, log_dir: Path
) -> Iterator[Child]:
    """lwepp on 127.0.0.1:`port` (plaintext), its pool's one Pod the simulator on 127.0.0.1:`sim_port`.

    lwepp and the control plane run for the block and are stopped after it.
    """
    bin_dir = find_bin_dir()
    if missing := missing_binaries(bin_dir) + missing_crd_files(bin_dir):
        raise PeerError(
            f"control plane build outputs missing ({', '.join(missing)}): run {CONTROLPLANE_BUILD_SCRIPT}"
        )
    plane = ControlPlane(bin_dir)
    try:
        try:
            info = plane.start()
            install_crds(info.kubectl, bin_dir / "crds")
            for item in pool_objects(sim_port):
                info.kubectl.apply(json.dumps(item))
            patch = json.dumps(ready_status("127.0.0.1"))
            info.kubectl.run(
                "patch", "pod", POD, "-n", NAMESPACE, "--subresource=status", "--type=merge", "-p", patch
            )
        except ControlPlaneError as error:
            raise PeerError(f"lwepp's control plane: {error}\n{plane.log_tails()}") from error
        argv = [
            str(BIN_DIR / "lwepp"),
            f"--kubeconfig={info.kubeconfig}",
            f"--pool-name={POOL}",
            f"--pool-namespace={NAMESPACE}",
            f"--grpc-port={port}",
            f"--grpc-health-port={health_port}",
            f"--metrics-port={metrics_port}",
            "--secure-serving=false",
        ]
        lwepp = start_child("lwepp", argv, log_dir=log_dir)
        try:
            yield lwepp
        finally:
            stop_child(lwepp, timeout=15)
    finally:
        plane.stop()
