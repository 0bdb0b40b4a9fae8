"""A real Kubernetes control plane for the end-to-end tests: etcd + kube-apiserver on loopback, driven
through the real kubectl. Started the way envtest starts one: no kubelet, no controller manager, a
generated serving certificate, service-account keys and a client certificate in `system:masters`.
The CRDs are the real ones (Istio's, the Gateway API Inference Extension's), which the control-plane
build takes from their pinned Go modules into `bin/crds/`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.e2e import pki
from tests.polling import WaitFailed, wait_until

logger = logging.getLogger(__name__)

E2E_DIR = Path(__file__).resolve().parent
BIN_DIR = E2E_DIR / "controlplane" / "bin"
BUILD_SCRIPT = E2E_DIR / "controlplane" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kubectl")
# Under the bin folder: the CRD files the build takes from istio.io/api and gateway-api-inference-extension.
CRD_FILES = (
    "crds/istio/customresourcedefinitions.gen.yaml",
    "crds/gie/inference.networking.k8s.io_inferencepools.yaml",
)
# The CRDs the tests use, installed by name from those files (Istio's file holds many more).
REQUIRED_CRDS = (
    "envoyfilters.networking.istio.io",
    "destinationrules.networking.istio.io",
    "inferencepools.inference.networking.k8s.io",
)
# Installed when the files hold it: gateway-api-inference-extension v1.6.0 no longer ships it.
OPTIONAL_CRDS = ("inferencepools.inference.networking.x-k8s.io",)
SERVICE_CIDR = "10.96.0.0/16"
LOOPBACK = "127.0.0.1"
REQUIRE_ENV = "EXTPROC_GUARD_REQUIRE_E2E"
BIN_DIR_ENV = "EXTPROC_GUARD_CONTROLPLANE_BIN"

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
KUBECTL_TIMEOUT_S = 60.0


class ControlPlaneError(RuntimeError):
    """The control plane did not start, or a command against it failed unexpectedly."""


def find_bin_dir() -> Path:
    """Where the control plane binaries are: `$EXTPROC_GUARD_CONTROLPLANE_BIN` or the build's output."""
    override = os.environ.get(BIN_DIR_ENV)
    return Path(override) if override else BIN_DIR


def missing_binaries(bin_dir: Path) -> list[str]:
    """The names of the control plane binaries that are absent or not executable in `bin_dir`."""
    return [name for name in BINARIES if not os.access(bin_dir / name, os.X_OK)]


def missing_crd_files(bin_dir: Path) -> list[str]:
    """The CRD files (relative to `bin_dir`) that the control-plane build did not place there."""
    return [name for name in CRD_FILES if not (bin_dir / name).is_file()]


def find_cli() -> Path:
    """The installed `extproc-guard` command: beside this Python first, then on PATH. Its absence is a
    broken installation, so it fails the test that asked (never a reason to skip)."""
    beside_python = Path(sys.executable).parent / "extproc-guard"
    if beside_python.exists():
        return beside_python
    found = shutil.which("extproc-guard")
    if found is None:
        raise AssertionError("the extproc-guard command is not installed (pip install -e .)")
    return Path(found)


def cli_help(command: str) -> str:
    """`extproc-guard COMMAND --help`. A command that cannot print it is broken: that fails the test that
    asked (never a reason to skip)."""
    result = subprocess.run(
        [str(find_cli()), command, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"`extproc-guard {command} --help` exited with {result.returncode}: {result.stderr.strip()}"
        )
    return result.stdout


def reconcile_argv(control_plane: ControlPlaneInfo, namespace: str, *extra: str) -> list[str]:
    """`extproc-guard reconcile` against the control plane, for one namespace, with `extra` flags."""
    return [
        str(find_cli()),
        "reconcile",
        "--kubeconfig",
        str(control_plane.kubeconfig),
        "--namespace",
        namespace,
        *extra,
    ]


def pick_free_port() -> int:
    """A TCP port on loopback that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    """A child process in its own process group, logging to a file; stop() kills the whole group."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(self.env) if self.env is not None else None,
                start_new_session=True,
            )
        logger.info("started %s (pid %d)", self.name, self.process.pid)

    def death(self) -> str | None:
        """None while running; otherwise why it stopped, with the end of its log."""
        if self.process is None:
            return f"{self.name} was never started"
        code = self.process.poll()
        if code is None:
            return None
        return f"{self.name} exited with {code}; last log lines:\n{self.log_tail()}"

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop on %s", self.name, sig.name)
        # The leader may have exited before the rest of its group: make sure nothing is left.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.poll() is None:
            process.wait(timeout=STOP_TIMEOUT_S)


@dataclass(frozen=True)
class Kubectl:
    """The real kubectl, pointed at one kubeconfig."""

    binary: Path
    kubeconfig: Path
    cache_dir: Path

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = KUBECTL_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run `kubectl ARGS`; with `check`, a non-zero exit raises with kubectl's stderr."""
        argv = [str(self.binary), "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache_dir)]
        argv += args
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def get_json(self, *args: str) -> dict[str, Any]:
        """`kubectl get ARGS -o yaml`, parsed."""
        loaded = yaml.safe_load(self.run("get", *args, "-o", "yaml").stdout)
        if not isinstance(loaded, dict):
            raise ControlPlaneError(f"kubectl get {' '.join(args)} printed no object")
        return loaded

    def apply(self, manifest: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`kubectl apply -f - ARGS` with `manifest` on stdin."""
        return self.run("apply", "-f", "-", *args, stdin=manifest, check=check)


@dataclass(frozen=True)
class ControlPlaneInfo:
    """What a test needs to reach the running control plane."""

    server: str
    kubeconfig: Path
    ca_pem: bytes
    kubectl: Kubectl
    bin_dir: Path
    work_dir: Path


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ControlPlane:
    """etcd + kube-apiserver on loopback ports in a private temp dir. Use start() then stop() in finally."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.work_dir = Path(tempfile.mkdtemp(prefix="extproc-guard-e2e-"))
        self.processes: list[ManagedProcess] = []

    def start(self, attempts: int = 3) -> ControlPlaneInfo:
        """Start etcd and kube-apiserver; ports picked free just before use are retried on a clash."""
        pki_dir = self.work_dir / "pki"
        pki_dir.mkdir()
        ca = pki.create_ca("extproc-guard-e2e-ca")
        serving = pki.issue_cert(ca, "kube-apiserver", ips=[LOOPBACK], dns_names=["localhost"])
        admin = pki.issue_cert(ca, "e2e-admin", organizations=["system:masters"], client=True)
        sa_key, sa_pub = pki.create_signing_key()
        files = {
            "ca": _write(pki_dir / "ca.crt", ca.cert_pem, 0o644),
            "serving_cert": _write(pki_dir / "apiserver.crt", serving.cert_pem, 0o644),
            "serving_key": _write(pki_dir / "apiserver.key", serving.key_pem),
            "sa_key": _write(pki_dir / "sa.key", sa_key),
            "sa_pub": _write(pki_dir / "sa.pub", sa_pub, 0o644),
            "admin_cert": _write(pki_dir / "admin.crt", admin.cert_pem, 0o644),
            "admin_key": _write(pki_dir / "admin.key", admin.key_pem),
        }
        last_error: ControlPlaneError | None = None
        for attempt in range(1, attempts + 1):
            try:
                server = self._start_once(files, attempt)
            except (ControlPlaneError, WaitFailed) as error:
                logger.warning("control plane start attempt %d failed: %s", attempt, error)
                last_error = ControlPlaneError(f"{error}\n{self.log_tails()}")
                self.stop_processes()
                continue
            kubeconfig = self._write_kubeconfig(server, ca.cert_pem, admin)
            cache_dir = self.work_dir / "kubectl-cache"
            kubectl = Kubectl(self.bin_dir / "kubectl", kubeconfig, cache_dir)
            return ControlPlaneInfo(server, kubeconfig, ca.cert_pem, kubectl, self.bin_dir, self.work_dir)
        raise ControlPlaneError(f"control plane did not start after {attempts} attempts: {last_error}")

    def _start_once(self, files: Mapping[str, Path], attempt: int) -> str:
        etcd_client, etcd_peer, secure_port = pick_free_port(), pick_free_port(), pick_free_port()
        data_dir = self.work_dir / f"etcd-{attempt}"
        etcd = ManagedProcess(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                f"--data-dir={data_dir}",
                f"--listen-client-urls=http://{LOOPBACK}:{etcd_client}",
                f"--advertise-client-urls=http://{LOOPBACK}:{etcd_client}",
                f"--listen-peer-urls=http://{LOOPBACK}:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://{LOOPBACK}:{etcd_peer}",
                f"--initial-cluster=default=http://{LOOPBACK}:{etcd_peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.work_dir / f"etcd-{attempt}.log",
        )
        self.processes.append(etcd)
        etcd.start()
        wait_until(
            lambda: http_ok(f"http://{LOOPBACK}:{etcd_client}/health"),
            "etcd /health",
            timeout=START_TIMEOUT_S,
            interval=0.1,
            alive=etcd.death,
        )
        server = f"https://{LOOPBACK}:{secure_port}"
        apiserver = ManagedProcess(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://{LOOPBACK}:{etcd_client}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={secure_port}",
                f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                f"--tls-cert-file={files['serving_cert']}",
                f"--tls-private-key-file={files['serving_key']}",
                f"--client-ca-file={files['ca']}",
                f"--service-account-issuer={server}",
                f"--service-account-key-file={files['sa_pub']}",
                f"--service-account-signing-key-file={files['sa_key']}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                # No controller manager creates service accounts here, and no node exists to list.
                "--disable-admission-plugins=ServiceAccount",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ],
            self.work_dir / f"kube-apiserver-{attempt}.log",
        )
        self.processes.append(apiserver)
        apiserver.start()
        context = _tls_context(files["ca"], files["admin_cert"], files["admin_key"])
        wait_until(
            lambda: http_ok(f"{server}/readyz", context),
            "kube-apiserver /readyz",
            timeout=START_TIMEOUT_S,
            interval=0.1,
            alive=lambda: etcd.death() or apiserver.death(),
        )
        return server

    def _write_kubeconfig(self, server: str, ca_pem: bytes, admin: pki.Issued) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "e2e", "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}
            ],
            "users": [
                {
                    "name": "e2e-admin",
                    "user": {
                        "client-certificate-data": _b64(admin.cert_pem),
                        "client-key-data": _b64(admin.key_pem),
                    },
                }
            ],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e-admin"}}],
            "current-context": "e2e",
        }
        return _write(self.work_dir / "kubeconfig", yaml.safe_dump(config).encode())

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.processes)

    def stop_processes(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def stop(self) -> None:
        """Stop every process (apiserver first) and remove the temp dir."""
        try:
            self.stop_processes()
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def _tls_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    return context


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """Whether `url` answers 200 now (any error, refusal or timeout is a no)."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def load_crds(crd_dir: Path) -> list[dict[str, Any]]:
    """The CRDs the tests use, from the YAML files under `crd_dir`; raises if a required one is missing."""
    wanted = (*REQUIRED_CRDS, *OPTIONAL_CRDS)
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(crd_dir.rglob("*.yaml")):
        for document in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                name = document["metadata"]["name"]
                if name in wanted:
                    found[name] = document
    if missing := [name for name in REQUIRED_CRDS if name not in found]:
        raise ControlPlaneError(f"no CRD {', '.join(missing)} under {crd_dir}: run {BUILD_SCRIPT.name}")
    return [found[name] for name in wanted if name in found]


def _established(kubectl: Kubectl, names: Sequence[str]) -> bool:
    jsonpath = '{range .items[*]}{.status.conditions[?(@.type=="Established")].status}{" "}{end}'
    result = kubectl.run("get", "crd", *names, "-o", f"jsonpath={jsonpath}", check=False)
    return result.returncode == 0 and result.stdout.split() == ["True"] * len(names)


def install_crds(kubectl: Kubectl, crd_dir: Path) -> list[str]:
    """Create the CRDs the tests use and wait until they are Established and served; their names.

    Server-side apply, so the large schemas are not copied into a last-applied annotation.
    """
    crds = load_crds(crd_dir)
    names = [crd["metadata"]["name"] for crd in crds]
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": crds})
    kubectl.run("apply", "--server-side", "-f", "-", stdin=manifest)
    wait_until(lambda: _established(kubectl, names), "CRDs Established", timeout=60, interval=0.25)
    resources = ",".join(f"{crd['spec']['names']['plural']}.{crd['spec']['group']}" for crd in crds)
    wait_until(
        lambda: kubectl.run("get", resources, "-A", check=False).returncode == 0,
        "custom resources served",
        timeout=30,
        interval=0.25,
    )
    return names
