"""The reconciler's key behaviours on a real etcd + kube-apiserver (the end-to-end control plane), with the
EnvoyFilter and PolicyReport CRDs installed and objects written by the real kubectl. Skipped with one line
when the control plane binaries are not built (see tests/e2e)."""

from __future__ import annotations

import asyncio
import copy
import gc
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies.patch import PatchOp
from policies.policy import default_policy
from reconciler.api import KubeObjects, Page, Resource, build_api_client
from reconciler.core import Action, Reconciler
from reconciler.leader import LeaseElector
from reconciler.metrics import ReconcileMetrics
from reconciler.settings import FIELD_MANAGER, LeaseSettings, ReconcileSettings
from tests.documents import load_document, renamed
from tests.e2e.cluster import ControlPlaneInfo, Kubectl
from tests.reconciler.conftest import OPERATOR, FakeClock, fixed_wall, static_epp, without_server_fields
from tests.reconciler.test_audit import LUA_PATCH, with_unrelated_content

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
POLICY_REPORT_CRD = REPO / "manifests" / "base" / "crds" / "policyreports.yaml"
FILTER = "epp-ext-proc"


class CountingKube(KubeObjects):
    """The real client, counting the writes it sends and optionally letting another writer in first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[str] = []
        self.before_first_patch: list[Any] = []

    def patch_object(
        self, resource: Resource, namespace: str, name: str, *, expected_version: str, ops: Sequence[PatchOp]
    ) -> dict[str, Any]:
        hooks, self.before_first_patch = self.before_first_patch, []
        for hook in hooks:
            hook()
        self.writes.append(f"patch {resource.plural}")
        return super().patch_object(resource, namespace, name, expected_version=expected_version, ops=ops)

    def create_object(self, resource: Resource, namespace: str, body: Any) -> dict[str, Any]:
        self.writes.append(f"create {resource.plural}")
        return super().create_object(resource, namespace, body)

    def replace_object(self, resource: Resource, body: Any) -> dict[str, Any]:
        self.writes.append(f"replace {resource.plural}")
        return super().replace_object(resource, body)


@pytest.fixture(scope="session")
def policy_report_crd(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(POLICY_REPORT_CRD))
    kubectl.run("wait", "--for=condition=Established", "crd/policyreports.wgpolicyk8s.io", "--timeout=60s")


def kube_for(control_plane: ControlPlaneInfo, identity: str) -> CountingKube:
    api_client = build_api_client(
        kubeconfig=control_plane.kubeconfig, context=None, user_agent=f"extproc-guard-reconciler/{identity}"
    )
    return CountingKube(api_client, field_manager=FIELD_MANAGER, timeout=30.0)


def reconciler_for(
    kube: KubeObjects,
    namespace: str,
    *,
    clock: FakeClock | None = None,
    may_write: Callable[[], bool] | None = None,
    **overrides: Any,
) -> Reconciler:
    settings = replace(ReconcileSettings(namespaces=(namespace,)), **overrides)
    return Reconciler(
        kube,
        policy=default_policy(),
        resolver=static_epp(),
        settings=settings,
        metrics=ReconcileMetrics(),
        clock=clock or FakeClock(),
        wall=fixed_wall,
        may_write=may_write or (lambda: True),
    )


def create(kubectl: Kubectl, document: dict[str, Any], namespace: str) -> None:
    document = in_namespace(document, namespace)
    kubectl.run("create", "-f", "-", "--field-manager", OPERATOR, stdin=yaml.safe_dump(document))


def operator_applies(kubectl: Kubectl, document: dict[str, Any], namespace: str) -> None:
    """The operator's reconcile loop: server-side apply of its template, taking the fields back."""
    document = in_namespace(document, namespace)
    kubectl.run(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        OPERATOR,
        "-f",
        "-",
        stdin=yaml.safe_dump(document),
    )


def stored(kubectl: Kubectl, namespace: str, name: str = FILTER) -> dict[str, Any]:
    return kubectl.get_json("envoyfilter", name, "-n", namespace)


def events(kubectl: Kubectl, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = kubectl.get_json("events.events.k8s.io", "-n", namespace).get("items") or []
    return [e for e in items if e.get("reason") == reason]


def in_namespace(document: dict[str, Any], namespace: str) -> dict[str, Any]:
    result = copy.deepcopy(document)
    result["metadata"]["namespace"] = namespace
    return result


async def test_a_bad_filter_is_fixed_with_unrelated_content_kept_exactly(
    control_plane: ControlPlaneInfo, kubectl: Kubectl, namespace: str
) -> None:
    create(kubectl, with_unrelated_content(load_document("seed-bad.yaml")), namespace)
    reconciler = reconciler_for(kube_for(control_plane, "a"), namespace)

    result = await reconciler.audit()

    assert [o.action for o in result.outcomes] == [Action.FIXED]
    expected = in_namespace(with_unrelated_content(load_document("seed-corrected.yaml")), namespace)
    assert without_server_fields(stored(kubectl, namespace)) == expected
    (fixed,) = events(kubectl, namespace, "Fixed")
    assert fixed["regarding"]["name"] == FILTER


async def test_a_concurrent_write_is_refused_by_the_real_apiserver_and_retried_on_the_fresh_object(
    control_plane: ControlPlaneInfo, kubectl: Kubectl, namespace: str
) -> None:
    create(kubectl, load_document("seed-bad.yaml"), namespace)
    kube = kube_for(control_plane, "a")
    kube.before_first_patch.append(
        lambda: kubectl.run("annotate", "envoyfilter", FILTER, "-n", namespace, "example.com/edited=yes")
    )

    (outcome,) = (await reconciler_for(kube, namespace).audit()).outcomes

    assert outcome.action is Action.FIXED
    assert outcome.attempts == 2
    after = stored(kubectl, namespace)
    assert after["metadata"]["annotations"]["example.com/edited"] == "yes"
    assert after["spec"]["configPatches"][0]["patch"]["operation"] == "REPLACE"


async def test_two_replicas_with_a_real_lease_never_both_write(
    control_plane: ControlPlaneInfo, kubectl: Kubectl, namespace: str
) -> None:
    create(kubectl, load_document("seed-bad.yaml"), namespace)
    lease = f"reconciler-{uuid.uuid4().hex[:6]}"
    kubes = [kube_for(control_plane, name) for name in ("a", "b")]
    electors = [
        LeaseElector(kube, LeaseSettings(name=lease, namespace=namespace, identity=name), clock=FakeClock())
        for kube, name in zip(kubes, ("a", "b"), strict=True)
    ]
    assert await asyncio.to_thread(electors[0].step) is True
    assert await asyncio.to_thread(electors[1].step) is False
    for kube in kubes:
        kube.writes.clear()
    reconcilers = [
        reconciler_for(kube, namespace, may_write=elector.holds)
        for kube, elector in zip(kubes, electors, strict=True)
    ]

    results = [await r.audit() for r in reversed(reconcilers)]

    assert [o.action for o in results[0].outcomes] == [Action.NOT_LEADER]
    assert kubes[1].writes == []
    assert [o.action for o in results[1].outcomes] == [Action.FIXED]
    assert "patch envoyfilters" in kubes[0].writes
    holder = kubectl.get_json("lease", lease, "-n", namespace)["spec"]["holderIdentity"]
    assert holder == "a"


async def test_dry_run_changes_nothing_on_the_real_apiserver(
    control_plane: ControlPlaneInfo, kubectl: Kubectl, namespace: str
) -> None:
    create(kubectl, load_document("seed-bad.yaml"), namespace)
    before = stored(kubectl, namespace)["metadata"]["resourceVersion"]
    kube = kube_for(control_plane, "a")

    result = await reconciler_for(kube, namespace, dry_run=True).audit()

    assert [o.action for o in result.outcomes] == [Action.WOULD_FIX]
    assert kube.writes == []
    assert stored(kubectl, namespace)["metadata"]["resourceVersion"] == before
    assert events(kubectl, namespace, "Fixed") == []


@pytest.mark.usefixtures("policy_report_crd")
async def test_unfixable_findings_reach_a_real_policy_report_and_event(
    control_plane: ControlPlaneInfo, kubectl: Kubectl, namespace: str
) -> None:
    create(kubectl, load_document("unfixable.yaml"), namespace)
    reconciler = reconciler_for(kube_for(control_plane, "a"), namespace)

    await reconciler.audit()

    report = kubectl.get_json("policyreport", "extproc-guard", "-n", namespace)
    failed = [r for r in report["results"] if r["result"] == "fail"]
    assert [r["rule"].split()[0] for r in failed] == ["EPX007"]
    assert report["summary"]["fail"] == 1
    (violation,) = events(kubectl, namespace, "PolicyViolation")
    assert "EPX007" in violation["note"]
    version = report["metadata"]["resourceVersion"]

    await reconciler.audit()

    after = kubectl.get_json("policyreport", "extproc-guard", "-n", namespace)
    assert after["metadata"]["resourceVersion"] == version

    kubectl.run("delete", "envoyfilter", "epp-ext-proc-unfixable", "-n", namespace)
    create(kubectl, load_document("seed-corrected.yaml"), namespace)
    await reconciler.audit()

    emptied = kubectl.get_json("policyreport", "extproc-guard", "-n", namespace)
    assert emptied["summary"]["fail"] == 0
    assert {r["resources"][0]["name"] for r in emptied["results"]} == {FILTER}


async def test_an_operator_that_keeps_applying_its_template_is_named_from_real_managed_fields(
    control_plane: ControlPlaneInfo, kubectl: Kubectl, namespace: str
) -> None:
    operator_applies(kubectl, load_document("seed-bad.yaml"), namespace)
    clock = FakeClock()
    kube = kube_for(control_plane, "a")
    reconciler = reconciler_for(kube, namespace, clock=clock)
    actions = []
    for _ in range(3):
        (outcome,) = (await reconciler.audit()).outcomes
        actions.append(outcome.action)
        operator_applies(kubectl, load_document("seed-bad.yaml"), namespace)

    (outcome,) = (await reconciler.audit()).outcomes
    patches_before = kube.writes.count("patch envoyfilters")
    (again,) = (await reconciler.audit()).outcomes

    assert actions == [Action.FIXED, Action.FIXED, Action.BACKING_OFF]
    assert outcome.action is Action.BACKING_OFF
    assert again.action is Action.BACKING_OFF
    assert kube.writes.count("patch envoyfilters") == patches_before
    (fight,) = events(kubectl, namespace, "WriterFight")
    assert OPERATOR in fight["note"]
    assert outcome.writer == OPERATOR


async def test_an_audit_reads_every_page_of_a_paged_list(
    control_plane: ControlPlaneInfo, kubectl: Kubectl, namespace: str
) -> None:
    for name in ("one", "two", "three"):
        document = load_document("seed-bad.yaml")
        document["metadata"]["name"] = name
        create(kubectl, document, namespace)
    api_client = build_api_client(
        kubeconfig=control_plane.kubeconfig, context=None, user_agent="extproc-guard-reconciler/paged"
    )
    kube = CountingKube(api_client, field_manager=FIELD_MANAGER, timeout=30.0, page_size=1)

    result = await reconciler_for(kube, namespace).audit()

    assert result.errors == ()
    assert sorted((o.name, o.action) for o in result.outcomes) == [
        ("one", Action.FIXED),
        ("three", Action.FIXED),
        ("two", Action.FIXED),
    ]


class Watched(dict[str, Any]):
    """An object as the API returned it, that a test can hold a weak reference to."""

    __slots__ = ("__weakref__",)


class PageWatchingKube(CountingKube):
    """The real client reading small pages. When the next page is asked for, it records how many objects
    of earlier pages are still alive somewhere and which bad filters of earlier pages are not patched yet."""

    def __init__(self, *args: Any, bad: set[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bad = bad
        self.pages: list[list[str]] = []
        self.held_at_fetch: list[int] = []
        self.unpatched_at_fetch: list[str] = []
        self.patched: list[str] = []
        self.reads: list[str] = []
        self._alive: list[weakref.ref[Watched]] = []

    def list_page(self, resource: Resource, namespace: str | None, token: str | None = None) -> Page:
        gc.collect()
        self.held_at_fetch.append(sum(1 for ref in self._alive if ref() is not None))
        listed = {name for page in self.pages for name in page}
        self.unpatched_at_fetch += sorted((listed & self.bad) - set(self.patched))
        page = super().list_page(resource, namespace, token)
        items = [Watched(item) for item in page.items]
        self._alive = [weakref.ref(item) for item in items]
        self.pages.append([item["metadata"]["name"] for item in items])
        return Page(items, page.next_token)

    def patch_object(
        self, resource: Resource, namespace: str, name: str, *, expected_version: str, ops: Sequence[PatchOp]
    ) -> dict[str, Any]:
        self.patched.append(name)
        return super().patch_object(resource, namespace, name, expected_version=expected_version, ops=ops)

    def get_object(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        if resource.plural == "envoyfilters":
            self.reads.append(name)
        return super().get_object(resource, namespace, name)


async def test_an_audit_visits_each_object_once_and_holds_at_most_one_page(
    control_plane: ControlPlaneInfo, kubectl: Kubectl, namespace: str
) -> None:
    bad = {f"bad-{i}" for i in range(5)}
    clean = {f"clean-{i}" for i in range(2)}
    unrelated = {f"lua-{i}" for i in range(3)}
    for name in sorted(bad):
        create(kubectl, renamed(load_document("seed-bad.yaml"), name), namespace)
    for name in sorted(clean):
        create(kubectl, renamed(load_document("seed-corrected.yaml"), name), namespace)
    lua = {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "spec": {"configPatches": [LUA_PATCH]},
    }
    for name in sorted(unrelated):
        create(kubectl, {**lua, "metadata": {"name": name}}, namespace)
    api_client = build_api_client(
        kubeconfig=control_plane.kubeconfig, context=None, user_agent="extproc-guard-reconciler/pages"
    )
    kube = PageWatchingKube(api_client, field_manager=FIELD_MANAGER, timeout=30.0, page_size=3, bad=bad)

    result = await reconciler_for(kube, namespace).audit()

    assert result.errors == ()
    listed = [name for page in kube.pages for name in page]
    assert sorted(listed) == sorted(bad | clean | unrelated)  # every object, each once
    assert [len(page) for page in kube.pages] == [3, 3, 3, 1]
    assert kube.held_at_fetch == [0, 0, 0, 0]  # no object of an earlier page outlived it
    assert kube.unpatched_at_fetch == []  # each page was written before the next was read
    assert sorted(kube.patched) == sorted(bad)  # one patch per bad filter, nothing else written
    assert kube.reads == []  # no filter was read again
    assert sorted((o.name, o.action) for o in result.outcomes) == sorted(
        [(name, Action.FIXED) for name in bad] + [(name, Action.CLEAN) for name in clean]
    )
    assert result.not_applicable == len(unrelated)
