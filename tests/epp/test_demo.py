"""`extproc-guard demo` end to end (real Envoy, EPP, simulators), and its cleanup on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.envoy

CLI = (sys.executable, "-m", "cli.main")


def test_the_demo_routes_every_request_then_shows_the_no_http2_failure_and_its_findings(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [*CLI, "demo", "--requests", "6", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert out.count("HTTP 200 served by sim-") == 6
    assert "streams_started=6, streams_failed=0" in out
    assert "5 x HTTP 500" in out
    assert "upstream_cx_protocol_error=5" in out
    assert "EPP: 0 ext_proc calls logged" in out
    assert "EPX005 epp-cluster-http2" in out
    assert "Traceback" not in out + done.stderr


def _children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ctrl_c_during_the_demo_stops_every_child_process(tmp_path: Path) -> None:
    log = (tmp_path / "demo.out").open("w+")
    demo = subprocess.Popen(
        [*CLI, "demo", "--keep", str(tmp_path / "run")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        children: set[int] = set()

        def envoy_started() -> bool:
            children.update(_children_of(demo.pid))
            if "Real Envoy" not in (tmp_path / "demo.out").read_text():
                return False
            children.update(_children_of(demo.pid))
            return True

        def demo_running() -> str | None:
            return None if demo.poll() is None else f"the demo exited with {demo.returncode}"

        wait_until(envoy_started, "the demo to start Envoy", timeout=120, interval=0.05, alive=demo_running)
        assert len(children) >= 5  # three simulators, the EPP, Envoy
        os.kill(demo.pid, signal.SIGINT)
        demo.wait(timeout=60)
        assert demo.returncode != 0
        wait_until(
            lambda: not any(_running(pid) for pid in children),
            "every child process to end",
            timeout=30,
            interval=0.1,
        )
        assert not [pid for pid in children if _running(pid)]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=10)
        log.close()
