"""The server with live ClusterIPs: readiness follows the Service cache, reviews read the cache.

The Kubernetes API here is `kubefake.FakeServiceAPI`, a fake that speaks the REST list/watch protocol on
loopback and can refuse requests on cue (a real kube-apiserver cannot be made unreachable and back from a
test); the server reaches it through a kubeconfig file, as it would a real cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest

from kube.settings import KubeSettings
from tests.documents import load_document
from tests.kube.kubefake import FakeServiceAPI
from tests.polling import wait_until_async
from tests.webhook.webhookrig import (
    EPP,
    Pki,
    ServerThread,
    decode_patch,
    review_of,
)
from webhook.settings import ServeSettings


@pytest.fixture
async def api() -> AsyncIterator[FakeServiceAPI]:
    fake = FakeServiceAPI()
    fake.put(EPP.namespace, EPP.name, "10.96.88.8", (9002,))
    fake.refuse_with = 503  # unreachable until a test lets it answer
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def server(api: FakeServiceAPI, pki: Pki, tmp_path: Path) -> AsyncIterator[ServerThread]:
    kube = KubeSettings(
        kubeconfig=api.write_kubeconfig(tmp_path / "kubeconfig"),
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.2,
        stale_after_seconds=0.5,
    )
    settings = ServeSettings(tls=pki.write_serving(tmp_path / "tls"), host="127.0.0.1", port=0, kube=kube)
    running = ServerThread(settings)
    await asyncio.to_thread(running.start)
    try:
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def readiness(session: aiohttp.ClientSession, server: ServerThread) -> tuple[int, dict[str, Any]]:
    async with session.get(server.url + "/readyz") as response:
        return response.status, dict(await response.json())


async def mutate(
    session: aiohttp.ClientSession, server: ServerThread, document: dict[str, Any]
) -> dict[str, Any]:
    async with session.post(server.url + "/mutate", json=review_of(document)) as response:
        assert response.status == 200
        return dict((await response.json())["response"])


def pinned_address(document: dict[str, Any]) -> str:
    value = document["spec"]["configPatches"][1]["patch"]["value"]
    address = value["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    return str(address["socket_address"]["address"])


async def test_not_ready_until_the_service_cache_syncs(
    api: FakeServiceAPI, session: aiohttp.ClientSession, server: ServerThread
) -> None:

    async def failing() -> bool:
        return "503" in ((await readiness(session, server))[1]["services"]["last_error"] or "")

    await wait_until_async(failing, "/readyz to report the failing list")
    status, state = await readiness(session, server)
    assert status == 503
    assert state["services"]["synced"] is False
    api.refuse_with = None

    async def ready() -> bool:
        return (await readiness(session, server))[0] == 200

    await wait_until_async(ready, "/readyz after the first list")
    status, state = await readiness(session, server)
    assert state["services"]["count"] == 1
    assert state["services"]["age_seconds"] == 0.0
    assert state["services"]["stale"] is False


async def test_staleness_is_reported_while_the_api_is_unreachable(
    api: FakeServiceAPI, session: aiohttp.ClientSession, server: ServerThread
) -> None:
    api.refuse_with = None

    async def synced() -> bool:
        return (await readiness(session, server))[0] == 200

    await wait_until_async(synced, "the first list")
    api.refuse_with = 503
    api.drop_watches()

    async def stale() -> bool:
        return bool((await readiness(session, server))[1]["services"]["stale"])

    await wait_until_async(stale, "/readyz to say the cache is stale")
    status, state = await readiness(session, server)
    assert status == 200, "a synced cache keeps serving what it has"
    assert state["services"]["age_seconds"] > 0.5
    async with session.get(server.url + "/metrics") as response:
        text = await response.text()
    assert "extproc_guard_service_cache_age_seconds" in text
    assert "extproc_guard_service_cache_synced 1.0" in text


async def test_mutation_pins_the_live_cluster_ip_and_follows_a_change(
    api: FakeServiceAPI, session: aiohttp.ClientSession, server: ServerThread
) -> None:
    api.refuse_with = None
    bad = load_document("seed-bad.yaml")

    async def pinned(address: str) -> bool:
        response = await mutate(session, server, bad)
        return (
            "patch" in response
            and pinned_address(jsonpatch.apply_patch(bad, decode_patch(response))) == address
        )

    await wait_until_async(lambda: pinned("10.96.88.8"), "the cached ClusterIP in the patch")
    api.put(EPP.namespace, EPP.name, "10.96.99.9", (9002,))
    await wait_until_async(lambda: pinned("10.96.99.9"), "the changed ClusterIP in the patch")


async def test_a_service_missing_from_the_synced_cache_is_denied_with_the_reason(
    api: FakeServiceAPI, session: aiohttp.ClientSession, server: ServerThread
) -> None:
    api.refuse_with = None
    api.delete(EPP.namespace, EPP.name)

    async def synced() -> bool:
        return (await readiness(session, server))[0] == 200

    await wait_until_async(synced, "the first list")
    bad = load_document("seed-bad.yaml")
    async with session.post(server.url + "/validate", json=review_of(bad)) as response:
        answer = (await response.json())["response"]
    assert answer["allowed"] is False
    assert "does not exist" in answer["status"]["message"]
