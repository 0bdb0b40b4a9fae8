"""Fixtures for the reconciler tests: the fake Kubernetes API on loopback, and reconcilers bound to it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from policies.policy import default_policy
from policies.resolver import ServiceAddress, ServiceRef, ServiceResolver, StaticResolver
from reconciler.api import KubeObjects, build_api_client
from reconciler.core import Reconciler
from reconciler.metrics import ReconcileMetrics
from reconciler.settings import ReconcileSettings
from tests.reconciler.fakeapi import FakeKubeAPI

NAMESPACE = "llm-d-inference-scheduler"
EPP = ServiceRef(NAMESPACE, "gaie-inference-scheduling-epp")
EPP_IP = "10.96.45.12"
OPERATOR = "schedulerinstall-controller"


def without_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as a user wrote it: no resourceVersion, uid, managedFields, generation, timestamps."""
    result = copy.deepcopy(obj)
    for key in ("resourceVersion", "uid", "managedFields", "generation", "creationTimestamp"):
        result["metadata"].pop(key, None)
    return result


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
