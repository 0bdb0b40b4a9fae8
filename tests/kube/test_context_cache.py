"""The context cache against a stand-in API: a namespace's context holds its own and the root namespace's
filters, unpacked, and is rebuilt only when one of those changes, not on every write in the cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kube.client import build_api_client
from kube.context import ContextCache
from kube.settings import KubeSettings
from policies import Context
from tests.kube.objects import CLUSTER_MERGE, EPP_CLUSTER, EXT_PROC_FILTER, LUA
from tests.reconciler.fakeapi import FakeKubeAPI

ROOT = "istio-system"
FAST = KubeSettings(watch_timeout_seconds=30, backoff_initial_seconds=0.05, backoff_max_seconds=0.2)
WAIT_SECONDS = 10.0


def envoy_filter(namespace: str, name: str, patches: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"configPatches": patches},
    }


async def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_SECONDS}s: {what}")
        await asyncio.sleep(0.02)


def names(context: Context) -> list[tuple[str, str]]:
    return [(f["metadata"]["namespace"], f["metadata"]["name"]) for f in context.envoy_filters]


@pytest.fixture
async def cache(fake_api: FakeKubeAPI, tmp_path: Path) -> AsyncIterator[ContextCache]:
    for namespace, name, patches in [
        ("team-a", "epp", [EXT_PROC_FILTER, EPP_CLUSTER]),
        ("team-a", "lua", [LUA]),
        ("team-b", "epp", [EXT_PROC_FILTER, EPP_CLUSTER]),
        ("team-b", "tweak", [CLUSTER_MERGE]),
        (ROOT, "shared-cluster", [EPP_CLUSTER]),
    ]:
        fake_api.store_envoy_filter(envoy_filter(namespace, name, patches), manager="operator")
    api_client = build_api_client(kubeconfig=fake_api.write_kubeconfig(tmp_path / "kubeconfig"))
    listed: list[int] = []
    running = ContextCache(
        client.CustomObjectsApi(api_client),
        FAST,
        root_namespace=ROOT,
        cluster_domain="cluster.local",
        settled=True,
        after_list=lambda: listed.append(1),
    )
    await asyncio.to_thread(running.start)
    try:
        assert await asyncio.to_thread(running.wait_synced, WAIT_SECONDS)
        assert listed, "after_list is called once a collection is listed"
        yield running
    finally:
        await asyncio.to_thread(running.stop)


async def test_a_namespace_context_holds_its_own_and_the_root_namespaces_filters_only(
    cache: ContextCache,
) -> None:
    context = cache.context_for("team-a")

    assert names(context) == [(ROOT, "shared-cluster"), ("team-a", "epp")]
    assert context.envoy_filters[1]["spec"]["configPatches"] == [EXT_PROC_FILTER, EPP_CLUSTER]
    assert names(cache.context_for(ROOT)) == [(ROOT, "shared-cluster")]
    assert cache.size() == 3  # the Lua filter and the cluster tweak are not cached


async def test_a_write_elsewhere_keeps_the_namespace_context_and_one_in_it_rebuilds_it(
    cache: ContextCache, fake_api: FakeKubeAPI
) -> None:
    context = cache.context_for("team-a")
    assert cache.context_for("team-a") is context

    before = cache.generation
    fake_api.store_envoy_filter(envoy_filter("team-b", "second", [EXT_PROC_FILTER]), manager="operator")
    await eventually(lambda: cache.generation != before, "the watch sees the write in team-b")
    assert cache.context_for("team-a") is context

    before = cache.generation
    fake_api.store_envoy_filter(envoy_filter("team-a", "second", [EXT_PROC_FILTER]), manager="operator")
    await eventually(lambda: cache.generation != before, "the watch sees the write in team-a")
    rebuilt = cache.context_for("team-a")
    assert rebuilt is not context
    assert names(rebuilt) == [(ROOT, "shared-cluster"), ("team-a", "epp"), ("team-a", "second")]

    before = cache.generation
    fake_api.store_envoy_filter(envoy_filter(ROOT, "root-second", [EPP_CLUSTER]), manager="operator")
    await eventually(lambda: cache.generation != before, "the watch sees the write in the root namespace")
    assert (ROOT, "root-second") in names(cache.context_for("team-a"))
