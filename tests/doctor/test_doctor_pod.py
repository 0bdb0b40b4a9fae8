"""`doctor --pod NAMESPACE/NAME`: the exec API path, with the real Kubernetes client.

A fake where the real thing cannot run here: exec needs a kubelet and a running pod, which the test control
plane (etcd + kube-apiserver, no nodes) does not have. The fake is an aiohttp server that speaks the exec
endpoint's websocket protocol (`v4.channel.k8s.io`: one channel byte per frame; 1 stdout, 2 stderr, 3 the
final metav1.Status) and answers `pilot-agent request GET stats|clusters` with text recorded from a real
Envoy. Everything else (kubeconfig loading, the client's websocket exec, the CLI) is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

from tests.doctor.loopback import serving
from tests.doctor.runner import run_doctor

DATA = Path(__file__).parent / "data"
SUCCESS = {"metadata": {}, "status": "Success"}


class FakeExec:
    """Records each exec call and answers from the recorded admin text of one case."""

    def __init__(self, case: str, *, fail_with: str | None = None) -> None:
        self.texts = {
            "stats": (DATA / f"{case}.stats.txt").read_text(),
            "clusters": (DATA / f"{case}.clusters.txt").read_text(),
        }
        self.fail_with = fail_with
        self.calls: list[dict[str, object]] = []

    async def exec(self, request: web.Request) -> web.StreamResponse:
        command = request.query.getall("command")
        self.calls.append(
            {
                "namespace": request.match_info["namespace"],
                "pod": request.match_info["pod"],
                "container": request.query.get("container"),
                "command": command,
            }
        )
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        if self.fail_with is not None:
            await ws.send_bytes(b"\x02" + b"error: " + self.fail_with.encode())
            status = {"status": "Failure", "message": self.fail_with, "reason": "NonZeroExitCode"}
        else:
            text = self.texts[command[-1]].encode()
            for start in range(0, len(text), 16384):  # several frames, as a real kubelet sends
                await ws.send_bytes(b"\x01" + text[start : start + 16384])
            status = SUCCESS
        await ws.send_bytes(b"\x03" + json.dumps(status).encode())
        await ws.close()
        async for message in ws:  # drain until the client closes
            if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        return ws


@contextlib.asynccontextmanager
async def serve(fake: FakeExec, tmp_path: Path) -> AsyncIterator[Path]:
    app = web.Application()
    app.router.add_route("*", "/api/v1/namespaces/{namespace}/pods/{pod}/exec", fake.exec)
    async with serving(app) as port:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        yield kubeconfig


POD = "llm-d-inference-scheduler/infra-inference-scheduling-inference-gateway-7d9c"


async def test_pod_reads_stats_and_clusters_with_pilot_agent_in_the_proxy_container(tmp_path: Path) -> None:
    fake = FakeExec("no-http2")
    async with serve(fake, tmp_path) as kubeconfig:
        argv = ["--pod", POD, "--kubeconfig", str(kubeconfig), "--timeout", "20", "-o", "json"]
        run = await asyncio.to_thread(run_doctor, argv)
    assert run.code == 1, run.stderr
    assert json.loads(run.stdout)["causes"][0]["rule"] == "EPX005"
    namespace, pod = POD.split("/")
    assert fake.calls == [
        {
            "namespace": namespace,
            "pod": pod,
            "container": "istio-proxy",
            "command": ["pilot-agent", "request", "GET", endpoint],
        }
        for endpoint in ("stats", "clusters")
    ]


async def test_pod_exec_failure_is_one_line_with_the_reason(tmp_path: Path) -> None:
    fake = FakeExec("healthy", fail_with="command terminated with exit code 1")
    async with serve(fake, tmp_path) as kubeconfig:
        argv = ["--pod", POD, "--kubeconfig", str(kubeconfig), "--timeout", "20"]
        run = await asyncio.to_thread(run_doctor, argv)
    assert run.code == 2
    assert len(run.stderr.strip().splitlines()) == 1
    assert "exit code 1" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "kubeconfig_text",
    ["not: [yaml", "{}"],
    ids=["broken-yaml", "empty-config"],
)
def test_unusable_kubeconfig_is_one_line(tmp_path: Path, kubeconfig_text: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text)
    run = run_doctor(["--pod", POD, "--kubeconfig", str(kubeconfig)])
    assert run.code == 2
    assert len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr
