"""Boot a real Envoy for a test, with bounded waits and guaranteed cleanup.

API::

    from tests.envoy_rig import EnvoyRig, EnvoyStartError, find_envoy, run_envoy

    bootstrap = render_bootstrap(envoy_filter, options=RenderOptions(
        listen_address="127.0.0.1", listen_port=0, admin_port=0))
    with run_envoy(bootstrap, workdir=tmp_path) as envoy:   # -> EnvoyRig
        envoy.admin_url          # "http://127.0.0.1:PORT" (the admin port Envoy bound)
        envoy.listener_port()    # port the first listener bound (port 0 in the config lets Envoy pick)
        envoy.listener_ports()   # {listener name: port}
        envoy.get("/clusters")   # admin GET, text
        envoy.stats()            # {"cluster.epp-cluster.upstream_rq_total": 5, ...} counters and gauges
        envoy.config_dump()      # parsed /config_dump JSON
        envoy.log_text()         # Envoy's own log so far

- `find_envoy()` finds the binary next to the running interpreter, else on PATH; it raises `EnvoyStartError`
  when there is none (callers may turn that into a skip).
- `run_envoy(bootstrap, *, workdir, ready_timeout=30.0, log_level="info", extra_args=())` writes the
  bootstrap (a mapping, rendered as JSON) to ``envoy.json`` in a fresh directory under ``workdir``, starts
  Envoy with ``--concurrency 1 --disable-hot-restart`` (so parallel Envoys never share shared memory) and
  ``--admin-address-path``, and
  waits at most ``ready_timeout`` seconds for admin ``/ready`` to answer LIVE. If Envoy exits or does not
  become ready in time it raises `EnvoyStartError` with the tail of Envoy's log. On leaving the block Envoy
  gets SIGTERM, is waited for (bounded), and is killed if it lingers.
- Ports: give the bootstrap port 0 for the admin and the listener; the rig reads the real ports back from
  Envoy, so there is no window in which another process can take them.

Synchronous (stdlib, `epp.children` and `tests.polling` only). From async tests, enter it in a
module-scoped fixture or wrap calls in ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from epp.children import ChildError, find_envoy_binary
from tests.polling import WaitFailed, wait_until

_STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.05
_HTTP_TIMEOUT = 5.0


class EnvoyStartError(RuntimeError):
    """Envoy is missing, exited early, or did not become ready in time."""


def find_envoy() -> str:
    """Path of the Envoy binary: next to the interpreter first (the virtualenv), else on PATH."""
    try:
        return find_envoy_binary()
    except ChildError as exc:
        raise EnvoyStartError("no envoy binary next to the interpreter or on PATH") from exc


@dataclass
class EnvoyRig:
    """A running Envoy: its admin URL and readers for its admin endpoints."""

    process: subprocess.Popen[bytes]
    admin_url: str
    config_path: Path
    log_path: Path

    def get(self, path: str, *, timeout: float = _HTTP_TIMEOUT) -> str:
        """GET an admin path (``/stats``, ``/clusters``, ...) and return the body as text."""
        with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as response:
            body: bytes = response.read()
        return body.decode("utf-8", "replace")

    def stats(self) -> dict[str, int]:
        """Counters and gauges from admin ``/stats`` (histograms left out)."""
        values: dict[str, int] = {}
        for line in self.get("/stats").splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                values[name.strip()] = int(value)
        return values

    def config_dump(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.get("/config_dump"))
        return parsed

    def listener_ports(self) -> dict[str, int]:
        """The port each listener actually bound, by listener name."""
        listeners = json.loads(self.get("/listeners?format=json"))
        ports: dict[str, int] = {}
        for status in listeners.get("listener_statuses", []):
            address = status.get("local_address", {}).get("socket_address", {})
            ports[status["name"]] = int(address.get("port_value", 0))
        return ports

    def listener_port(self) -> int:
        ports = self.listener_ports()
        if not ports:
            raise EnvoyStartError("Envoy has no listeners")
        return next(iter(ports.values()))

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def run_envoy(
    bootstrap: Mapping[str, Any],
    *,
    workdir: Path,
    ready_timeout: float = 30.0,
    log_level: str = "info",
    extra_args: Sequence[str] = (),
) -> Iterator[EnvoyRig]:
    """Start Envoy from ``bootstrap``, wait (bounded) until it is ready, and stop it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix="envoy-", dir=workdir))
    config_path = rundir / "envoy.json"
    admin_path = rundir / "admin-address"
    log_path = rundir / "envoy.log"
    config_path.write_text(json.dumps(bootstrap, indent=2), "utf-8")
    command = [
        find_envoy(),
        "-c",
        str(config_path),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--admin-address-path",
        str(admin_path),
        "-l",
        log_level,
        *extra_args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            admin_url = _wait_ready(process, admin_path, log_path, ready_timeout)
            yield EnvoyRig(process=process, admin_url=admin_url, config_path=config_path, log_path=log_path)
        finally:
            _stop(process, log)


def _wait_ready(process: subprocess.Popen[bytes], admin_path: Path, log_path: Path, timeout: float) -> str:
    admin_url = ""

    def ready() -> bool:
        nonlocal admin_url
        if not admin_url and admin_path.exists():
            address = admin_path.read_text("utf-8").strip()
            admin_url = f"http://{address}" if address else ""
        return bool(admin_url) and _is_live(admin_url)

    def running() -> str | None:
        return None if process.poll() is None else f"Envoy exited with {process.returncode}"

    try:
        wait_until(ready, "Envoy's admin /ready", timeout=timeout, interval=_POLL_INTERVAL, alive=running)
    except WaitFailed as error:
        raise EnvoyStartError(f"{error}:\n{_tail(log_path)}") from error
    return admin_url


def _is_live(admin_url: str) -> bool:
    try:
        with urllib.request.urlopen(admin_url + "/ready", timeout=1.0) as response:
            return bool(response.status == 200 and response.read().strip() == b"LIVE")
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT)
    log.flush()


def _tail(log_path: Path, lines: int = 30) -> str:
    text = log_path.read_text("utf-8", "replace") if log_path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])
