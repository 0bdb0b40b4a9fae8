"""The running reconciler (`run_reconciler`: audit loop, EnvoyFilter watch, Service-cache-driven drift
repair) on a real etcd + kube-apiserver, with objects written by the real kubectl as another field
manager. The audit interval is an hour and the drift poll is off, so whatever is repaired after the first
audit was repaired by the watch or by the Service cache's change callback. Waits are bounded polls on
stored state; nothing asserts on time. Skipped with one line when the control plane is not built."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
import yaml

from policies.policy import default_policy
from reconciler.runner import Parts, build_parts, run_reconciler
from reconciler.settings import ReconcileSettings
from tests.documents import load_document
from tests.e2e.cluster import ControlPlaneInfo, Kubectl
from tests.polling import wait_until_async
from tests.reconciler.conftest import OPERATOR, without_server_fields
from tests.reconciler.test_apiserver import FILTER, events, in_namespace, stored
from tests.reconciler.test_apiserver import operator_applies as apply_as_operator

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 30.0
DRIFT_SERVICE = "epp-drift"


class Running:
    """`run_reconciler` in this event loop for one namespace; stopped (bounded) by `shut_down`."""

    def __init__(self, settings: ReconcileSettings) -> None:
        self.settings = settings
        self.parts: Parts = build_parts(settings, policy=default_policy(), services={})
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(run_reconciler(self.parts, settings, stop=self.stop))

    def sample(self, name: str, **labels: str) -> float:
        value = self.parts.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    def fixed(self, cause: str) -> float:
        return self.sample("extproc_guard_reconcile_objects_fixed_total", cause=cause)

    def stopped(self) -> str | None:
        """None while `run_reconciler` runs, then why it ended."""
        if not self.task.done():
            return None
        return f"the reconciler stopped: {self.task.exception()!r}"

    async def shut_down(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, WAIT_SECONDS)


@pytest.fixture
async def start(control_plane: ControlPlaneInfo, namespace: str) -> AsyncIterator[Callable[..., Running]]:
    running: list[Running] = []

    def build(**overrides: Any) -> Running:
        settings = ReconcileSettings(
            namespaces=(namespace,),
            interval_seconds=3600.0,
            drift_poll_seconds=None,
            cache_sync_timeout_seconds=WAIT_SECONDS,
            kubeconfig=control_plane.kubeconfig,
            identity="watch-test",
        )
        running.append(Running(replace(settings, **overrides)))
        return running[-1]

    yield build
    for one in running:
        if not one.task.done():
            await one.shut_down()


async def wait_for(condition: Callable[[], bool], what: str, running: Running | None = None) -> None:
    """Poll (bounded) a condition that kubectl reads from the apiserver; fail early if the runner died."""
    await wait_until_async(
        lambda: asyncio.to_thread(condition),
        what,
        timeout=WAIT_SECONDS,
        interval=0.1,
        alive=running.stopped if running is not None else None,
    )


def is_corrected(kubectl: Kubectl, namespace: str, name: str = FILTER) -> bool:
    return bool(
        stored(kubectl, namespace, name)["spec"]["configPatches"][0]["patch"]["operation"] == "REPLACE"
    )


async def operator_applies(
    kubectl: Kubectl, document: dict[str, Any], namespace: str, rollout: int = 0
) -> str:
    """The operator's reconcile loop: server-side apply of its (bad) template, taking the fields back;
    `rollout` changes an annotation so every apply is a new version. Returns the stored resourceVersion."""
    document = in_namespace(document, namespace)
    document["metadata"].setdefault("annotations", {})["example.com/rollout"] = str(rollout)
    await asyncio.to_thread(apply_as_operator, kubectl, document, namespace)
    version = (await asyncio.to_thread(stored, kubectl, namespace))["metadata"]["resourceVersion"]
    return str(version)


def caught_up(running: Running, kubectl: Kubectl, namespace: str, name: str = FILTER) -> Callable[[], bool]:
    """True once the reconciler has looked at (or itself written) the version now stored."""

    def check() -> bool:
        version = stored(kubectl, namespace, name)["metadata"]["resourceVersion"]
        return running.parts.reconciler.version_seen(namespace, name) == version

    return check


@pytest.mark.usefixtures("epp_service")
async def test_a_filter_written_back_to_the_bad_form_is_fixed_again_by_the_watch_not_the_audit(
    kubectl: Kubectl, namespace: str, start: Callable[..., Running]
) -> None:
    await operator_applies(kubectl, load_document("seed-bad.yaml"), namespace)
    running = start()
    await wait_for(lambda: is_corrected(kubectl, namespace), "the first audit fixed the filter", running)
    assert running.fixed("audit") == 1

    await operator_applies(kubectl, load_document("seed-bad.yaml"), namespace, rollout=1)
    await wait_for(lambda: is_corrected(kubectl, namespace), "the watch fixed the rewrite", running)
    # A barrier: a filter created after the fix; once it has been looked at, so has every earlier event,
    # including the echo of the watch's own patch.
    barrier = without_server_fields(await asyncio.to_thread(stored, kubectl, namespace))
    barrier["metadata"]["name"] = "barrier"  # a copy of the corrected filter: clean, nothing to fix
    await asyncio.to_thread(kubectl.run, "create", "-f", "-", stdin=yaml.safe_dump(barrier))
    await wait_for(caught_up(running, kubectl, namespace, "barrier"), "the watch saw the barrier", running)

    assert running.fixed("watch") == 1
    notes = [str(e["note"]) for e in await asyncio.to_thread(events, kubectl, namespace, "Fixed")]
    assert sum("(watch)" in note for note in notes) == 1
    looked_at = running.sample("extproc_guard_reconcile_objects_audited_total")
    assert looked_at == 3, "the audit's filter, the rewrite and the barrier; never the echo of a patch"


@pytest.mark.usefixtures("epp_service")
async def test_a_writer_that_keeps_rewriting_meets_the_fight_back_off_not_a_patch_per_rewrite(
    kubectl: Kubectl, namespace: str, start: Callable[..., Running]
) -> None:
    await operator_applies(kubectl, load_document("seed-bad.yaml"), namespace)
    running = start(backoff_initial_seconds=3600.0)
    await wait_for(lambda: is_corrected(kubectl, namespace), "the first audit fixed the filter", running)

    rewrites = 6
    for rollout in range(1, rewrites + 1):
        await operator_applies(kubectl, load_document("seed-bad.yaml"), namespace, rollout=rollout)
        await wait_for(caught_up(running, kubectl, namespace), f"the watch saw rewrite {rollout}", running)

    # Threshold 2: the first rewrite is fixed, the second is a fight; the other four are left alone.
    assert (running.fixed("audit"), running.fixed("watch")) == (1, 1)
    assert not await asyncio.to_thread(is_corrected, kubectl, namespace)
    (fight,) = await asyncio.to_thread(events, kubectl, namespace, "WriterFight")
    assert OPERATOR in fight["note"]
    assert running.sample("extproc_guard_reconcile_fights_total", writer=OPERATOR) == 1
    assert running.sample("extproc_guard_reconcile_objects_backing_off") == 1


def drift_service(namespace: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": DRIFT_SERVICE, "namespace": namespace},
            "spec": {"ports": [{"name": "grpc-ext-proc", "port": 9002, "targetPort": 9002}]},
        }
    )


def cluster_ip(kubectl: Kubectl, namespace: str) -> str:
    return kubectl.run(
        "get", "service", DRIFT_SERVICE, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout.strip()


def pinned_ip(kubectl: Kubectl, namespace: str) -> str:
    for patch in stored(kubectl, namespace)["spec"]["configPatches"]:
        if patch["applyTo"] == "CLUSTER":
            endpoint = patch["patch"]["value"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
            return str(endpoint["endpoint"]["address"]["socket_address"]["address"])
    raise AssertionError("no CLUSTER patch")


def recreate_with_new_cluster_ip(kubectl: Kubectl, namespace: str, old_ip: str) -> str:
    for _ in range(5):
        kubectl.run("delete", "service", DRIFT_SERVICE, "-n", namespace, "--wait=true", "--timeout=30s")
        kubectl.apply(drift_service(namespace))
        new_ip = cluster_ip(kubectl, namespace)
        if new_ip != old_ip:
            return new_ip
    raise AssertionError(f"the apiserver kept allocating {old_ip}")


async def test_a_service_recreated_with_a_new_cluster_ip_is_repaired_through_the_cache_subscription(
    kubectl: Kubectl, namespace: str, start: Callable[..., Running]
) -> None:
    await asyncio.to_thread(kubectl.apply, drift_service(namespace))
    old_ip = await asyncio.to_thread(cluster_ip, kubectl, namespace)
    text = yaml.safe_dump(load_document("seed-bad.yaml")).replace(
        "gaie-inference-scheduling-epp.llm-d-inference-scheduler", f"{DRIFT_SERVICE}.{namespace}"
    )
    await operator_applies(kubectl, yaml.safe_load(text), namespace)
    running = start()
    await wait_for(lambda: pinned_ip(kubectl, namespace) == old_ip, "the audit pinned the filter", running)
    annotations = (await asyncio.to_thread(stored, kubectl, namespace))["metadata"]["annotations"]
    assert annotations["extproc-guard.io/epp-service"] == f"{namespace}/{DRIFT_SERVICE}"

    new_ip = await asyncio.to_thread(recreate_with_new_cluster_ip, kubectl, namespace, old_ip)
    await wait_for(
        lambda: pinned_ip(kubectl, namespace) == new_ip, "drift repair re-pinned the filter", running
    )

    assert running.fixed("drift") == 1
    assert running.fixed("audit") == 1
    assert running.fixed("watch") == 0


@pytest.mark.usefixtures("epp_service")
async def test_a_filter_left_alone_for_a_fight_is_fixed_again_when_the_back_off_ends_without_an_audit(
    kubectl: Kubectl, namespace: str, start: Callable[..., Running]
) -> None:
    await operator_applies(kubectl, load_document("seed-bad.yaml"), namespace)
    running = start(backoff_initial_seconds=1.0)
    await wait_for(lambda: is_corrected(kubectl, namespace), "the first audit fixed the filter", running)
    await operator_applies(kubectl, load_document("seed-bad.yaml"), namespace, rollout=1)
    await wait_for(lambda: is_corrected(kubectl, namespace), "the watch fixed the first rewrite", running)

    await operator_applies(kubectl, load_document("seed-bad.yaml"), namespace, rollout=2)  # now a fight
    await wait_for(lambda: is_corrected(kubectl, namespace), "the fix after the back-off", running)

    (fight,) = await asyncio.to_thread(events, kubectl, namespace, "WriterFight")
    assert "backs off 1s" in fight["note"]
    assert (running.fixed("audit"), running.fixed("watch")) == (1, 2)
