"""Live endpoints from Kubernetes: list + watch of EndpointSlices and of Pods, through the real client.

No kube-apiserver runs in this test, so a small fake speaks the parts of the real REST protocol the client
uses: a list (`...List` object with `metadata.resourceVersion`) and a watch (`?watch=true`: a chunked
stream of `{"type": ..., "object": ...}` lines). The `kubernetes` client, its kubeconfig loading and its
`Watch` are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from epp.discovery import (
    KubeDiscovery,
    KubeDiscoverySettings,
    endpoints_from_pods,
    endpoints_from_slices,
    targets_from_pods,
)
from epp.endpoints import Endpoint

WAIT = 30.0


def endpoint_slice(
    name: str, version: str, addresses: list[tuple[str, bool]], port: int = 8000
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "models",
            "resourceVersion": version,
            "labels": {"kubernetes.io/service-name": "llm"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in addresses],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def pod(
    name: str, version: str, ip: str, *, ready: bool = True, phase: str = "Running", engine: str | None = None
) -> dict[str, Any]:
    labels = {"app": "vllm"} | ({"llm-d.ai/engine-type": engine} if engine else {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "models",
            "resourceVersion": version,
            "labels": labels,
        },
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


@dataclass
class FakeApiServer:
    """Serves one collection: list, then watch streams fed from `events`."""

    kind: str
    items: list[dict[str, Any]]
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    requests: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path_qs)
        if request.query.get("watch") not in ("true", "1", "True"):
            body = {"kind": f"{self.kind}List", "apiVersion": "v1", "metadata": {"resourceVersion": "10"}}
            return web.json_response({**body, "items": self.items})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while True:
                event = await self.events.get()
                await response.write(json.dumps(event).encode() + b"\n")
        return response


@contextlib.asynccontextmanager
async def serve_fake(fake: FakeApiServer, path: str, tmp: Path) -> AsyncIterator[Path]:
    app = web.Application()
    app.router.add_get(path, fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "fake", "user": {"token": "test"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    try:
        yield kubeconfig
    finally:
        await runner.cleanup()


async def next_set(updates: asyncio.Queue[tuple[Endpoint, ...]]) -> set[str]:
    return {str(e) for e in await asyncio.wait_for(updates.get(), timeout=WAIT)}


@contextlib.asynccontextmanager
async def discovering(settings: KubeDiscoverySettings) -> AsyncIterator[asyncio.Queue[tuple[Endpoint, ...]]]:
    updates: asyncio.Queue[tuple[Endpoint, ...]] = asyncio.Queue()
    task = asyncio.create_task(KubeDiscovery(settings, lambda found, _: updates.put_nowait(found)).run())
    try:
        yield updates
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_endpointslices_of_a_service_are_listed_then_followed_by_the_watch(tmp_path: Path) -> None:
    first = endpoint_slice("llm-a", "10", [("10.1.0.1", True), ("10.1.0.2", True), ("10.1.0.3", False)])
    fake = FakeApiServer("EndpointSlice", [first])
    path = "/apis/discovery.k8s.io/v1/namespaces/models/endpointslices"
    async with serve_fake(fake, path, tmp_path) as kubeconfig:
        settings = KubeDiscoverySettings(namespace="models", service="llm", kubeconfig=str(kubeconfig))
        async with discovering(settings) as updates:
            assert await next_set(updates) == {"10.1.0.1:8000", "10.1.0.2:8000"}
            second = endpoint_slice("llm-b", "11", [("10.1.0.9", True)])
            await fake.events.put({"type": "ADDED", "object": second})
            assert await next_set(updates) == {"10.1.0.1:8000", "10.1.0.2:8000", "10.1.0.9:8000"}
            changed = endpoint_slice("llm-a", "12", [("10.1.0.1", False), ("10.1.0.2", True)])
            await fake.events.put({"type": "MODIFIED", "object": changed})
            assert await next_set(updates) == {"10.1.0.2:8000", "10.1.0.9:8000"}
            await fake.events.put({"type": "DELETED", "object": second})
            assert await next_set(updates) == {"10.1.0.2:8000"}
    assert any("labelSelector=kubernetes.io" in r and "watch" not in r for r in fake.requests)
    assert any("watch=true" in r and "resourceVersion=10" in r for r in fake.requests)


async def test_pods_by_label_selector_count_only_when_running_and_ready(tmp_path: Path) -> None:
    fake = FakeApiServer("Pod", [pod("p1", "10", "10.2.0.1"), pod("p2", "10", "10.2.0.2", ready=False)])
    async with serve_fake(fake, "/api/v1/namespaces/models/pods", tmp_path) as kubeconfig:
        settings = KubeDiscoverySettings(
            namespace="models", selector="app=vllm", target_port=8000, kubeconfig=str(kubeconfig)
        )
        async with discovering(settings) as updates:
            assert await next_set(updates) == {"10.2.0.1:8000"}
            await fake.events.put({"type": "MODIFIED", "object": pod("p2", "11", "10.2.0.2")})
            assert await next_set(updates) == {"10.2.0.1:8000", "10.2.0.2:8000"}
            await fake.events.put({"type": "MODIFIED", "object": pod("p1", "12", "10.2.0.1", phase="Failed")})
            assert await next_set(updates) == {"10.2.0.2:8000"}
    assert any("labelSelector=app%3Dvllm" in r or "labelSelector=app=vllm" in r for r in fake.requests)


async def test_an_expired_watch_lists_again_and_publishes_what_changed_meanwhile(tmp_path: Path) -> None:
    fake = FakeApiServer("EndpointSlice", [endpoint_slice("llm-a", "10", [("10.1.0.1", True)])])
    path = "/apis/discovery.k8s.io/v1/namespaces/models/endpointslices"
    async with serve_fake(fake, path, tmp_path) as kubeconfig:
        settings = KubeDiscoverySettings(namespace="models", service="llm", kubeconfig=str(kubeconfig))
        async with discovering(settings) as updates:
            assert await next_set(updates) == {"10.1.0.1:8000"}
            fake.items = [endpoint_slice("llm-b", "20", [("10.1.0.7", True)])]
            gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
            await fake.events.put({"type": "ERROR", "object": gone})
            assert await next_set(updates) == {"10.1.0.7:8000"}
    lists = [r for r in fake.requests if "watch" not in r]
    assert len(lists) == 2


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        pytest.param(KubeDiscoverySettings(namespace="n"), "exactly one", id="neither-service-nor-selector"),
        pytest.param(
            KubeDiscoverySettings(namespace="n", selector="a=b"), "target port", id="selector-no-port"
        ),
    ],
)
def test_discovery_settings_that_cannot_work_are_refused(settings: KubeDiscoverySettings, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        KubeDiscovery(settings, lambda *_: None)


def test_slice_ports_are_chosen_by_name_and_ipv6_addresses_are_kept() -> None:
    item = endpoint_slice("s", "1", [("fd00::1", True)])
    item["ports"] = [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8000}]
    settings = KubeDiscoverySettings(namespace="n", service="s", port_name="http")
    assert endpoints_from_slices([item], settings) == {Endpoint("fd00::1", 8000)}
    assert endpoints_from_pods([pod("p", "1", "10.0.0.1")], KubeDiscoverySettings(namespace="n")) == set()


async def test_pods_give_each_endpoint_the_engine_type_of_their_label(tmp_path: Path) -> None:
    pods = [pod("v", "10", "10.2.0.1"), pod("s", "10", "10.2.0.2", engine="sglang")]
    settings = KubeDiscoverySettings(namespace="models", selector="app=vllm", target_port=8000)
    assert targets_from_pods(pods, settings) == {
        Endpoint("10.2.0.1", 8000): "",
        Endpoint("10.2.0.2", 8000): "sglang",
    }
    fake = FakeApiServer("Pod", pods)
    published: asyncio.Queue[dict[Endpoint, str]] = asyncio.Queue()
    async with serve_fake(fake, "/api/v1/namespaces/models/pods", tmp_path) as kubeconfig:
        live = KubeDiscoverySettings(
            namespace="models", selector="app=vllm", target_port=8000, kubeconfig=str(kubeconfig)
        )
        task = asyncio.create_task(
            KubeDiscovery(live, lambda _, engines: published.put_nowait(engines)).run()
        )
        try:
            engines = await asyncio.wait_for(published.get(), timeout=WAIT)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert engines == {Endpoint("10.2.0.1", 8000): "", Endpoint("10.2.0.2", 8000): "sglang"}
