"""Fixtures for the reconciler tests: the fake Kubernetes API on loopback, and reconcilers bound to it."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies.policy import default_policy
from policies.resolver import ServiceAddress, ServiceRef, ServiceResolver, StaticResolver
from reconciler.api import KubeObjects, build_api_client
from reconciler.core import Reconciler
from reconciler.metrics import ReconcileMetrics
from reconciler.settings import ReconcileSettings
from tests.e2e.conftest import control_plane, kubectl, namespace  # noqa: F401  (the real apiserver's fixtures)
from tests.reconciler.fakeapi import FakeKubeAPI

DATA_DIR = Path(__file__).resolve().parent / "data"
NAMESPACE = "llm-d-inference-scheduler"
EPP = ServiceRef(NAMESPACE, "gaie-inference-scheduling-epp")
EPP_IP = "10.96.45.12"
OPERATOR = "schedulerinstall-controller"


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((DATA_DIR / name).read_text())
    assert isinstance(document, dict)
    return document


def renamed(document: dict[str, Any], name: str) -> dict[str, Any]:
    result = copy.deepcopy(document)
    result["metadata"]["name"] = name
    return result


def without_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as a user wrote it: no resourceVersion, uid, managedFields, generation, timestamps."""
    result = copy.deepcopy(obj)
    for key in ("resourceVersion", "uid", "managedFields", "generation", "creationTimestamp"):
        result["metadata"].pop(key, None)
    return result


async def poll_until(condition: Callable[[], bool], what: str, *, seconds: float, every: float) -> None:
    """Check `condition` every `every` seconds; fail the test if it is still false after `seconds`."""
    for _ in range(int(seconds / every)):
        if condition():
            return
        await asyncio.sleep(every)
    pytest.fail(f"not within {seconds}s: {what}")


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fixed_wall() -> datetime:
    return datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeKubeAPI]:
    api = FakeKubeAPI()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
def kubeconfig(fake_api: FakeKubeAPI, tmp_path: Path) -> Path:
    return fake_api.write_kubeconfig(tmp_path / "kubeconfig")


def static_epp(cluster_ip: str = EPP_IP, port: int = 9002) -> StaticResolver:
    return StaticResolver({EPP: ServiceAddress(cluster_ip, (port,))})


ReconcilerFactory = Callable[..., Reconciler]


@pytest.fixture
def make_reconciler(kubeconfig: Path) -> ReconcilerFactory:
    """Build a reconciler talking to the fake API as replica `identity` (its User-Agent names it)."""

    def build(
        *,
        identity: str = "replica-a",
        resolver: ServiceResolver | None = None,
        settings: ReconcileSettings | None = None,
        may_write: Callable[[], bool] | None = None,
        clock: Callable[[], float] | None = None,
        metrics: ReconcileMetrics | None = None,
    ) -> Reconciler:
        base = settings or ReconcileSettings(backoff_initial_seconds=30.0)
        base = replace(base, identity=identity)
        api_client = build_api_client(
            kubeconfig=kubeconfig, context=None, user_agent=f"extproc-guard-reconciler/{identity}"
        )
        kube = KubeObjects(api_client, field_manager=base.field_manager, timeout=10.0)
        return Reconciler(
            kube,
            policy=default_policy(),
            resolver=resolver or static_epp(),
            settings=base,
            metrics=metrics or ReconcileMetrics(),
            may_write=may_write or (lambda: True),
            clock=clock or FakeClock(),
            wall=fixed_wall,
        )

    return build
