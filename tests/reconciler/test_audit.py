"""Audit against a fake Kubernetes API that speaks the real REST protocol (no kube-apiserver runs in these
tests; `fakeapi.FakeKubeAPI` serves list/get/patch with resourceVersion preconditions and managedFields)."""

from __future__ import annotations

import copy

from reconciler.core import Action
from reconciler.settings import ReconcileSettings
from tests.documents import load_document, renamed
from tests.reconciler.conftest import EPP, NAMESPACE, OPERATOR, ReconcilerFactory, without_server_fields
from tests.reconciler.fakeapi import EVENTS, POLICY_REPORTS, FakeKubeAPI

LUA_PATCH = {
    "applyTo": "HTTP_FILTER",
    "match": {"context": "GATEWAY"},
    "patch": {
        "operation": "INSERT_FIRST",
        "value": {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": "function envoy_on_request(h) end"},
            },
        },
    },
}


def with_unrelated_content(document: dict[str, object]) -> dict[str, object]:
    """The document with labels, a foreign annotation, a priority and an unrelated patch in front."""
    result = copy.deepcopy(document)
    metadata = result["metadata"]
    assert isinstance(metadata, dict)
    metadata["labels"] = {"app.kubernetes.io/managed-by": "scheduler-operator", "tier": "gateway"}
    metadata.setdefault("annotations", {})["example.com/owner"] = "team-inference"
    spec = result["spec"]
    assert isinstance(spec, dict)
    spec["priority"] = 10
    spec["configPatches"].insert(0, copy.deepcopy(LUA_PATCH))
    return result


async def test_a_pre_existing_bad_filter_is_patched_to_the_corrected_form(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)

    result = await make_reconciler().audit()

    assert [o.action for o in result.outcomes] == [Action.FIXED]
    stored = fake_api.envoy_filter(NAMESPACE, "epp-ext-proc")
    assert without_server_fields(stored) == load_document("seed-corrected.yaml")
    assert stored["metadata"]["annotations"]["extproc-guard.io/epp-service"] == str(EPP)


async def test_unrelated_fields_annotations_and_other_patches_are_preserved_exactly(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    fake_api.store_envoy_filter(with_unrelated_content(load_document("seed-bad.yaml")), manager=OPERATOR)

    await make_reconciler().audit()

    expected = with_unrelated_content(load_document("seed-corrected.yaml"))
    assert without_server_fields(fake_api.envoy_filter(NAMESPACE, "epp-ext-proc")) == expected


async def test_the_patch_is_minimal_and_guarded_by_the_resource_version_read(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    stored = fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)

    result = await make_reconciler().audit()

    (outcome,) = result.outcomes
    paths = {op.path for op in outcome.patch}
    assert "/spec/configPatches/0/patch/operation" in paths
    assert not any(p.startswith("/spec/workloadSelector") or p == "/spec/configPatches" for p in paths)
    (patch_request,) = fake_api.successful_patches()
    assert patch_request.method == "PATCH"
    written = fake_api.envoy_filter(NAMESPACE, "epp-ext-proc")
    assert int(written["metadata"]["resourceVersion"]) > int(stored["metadata"]["resourceVersion"])


async def test_a_corrected_filter_is_left_alone(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    fake_api.store_envoy_filter(load_document("seed-corrected.yaml"), manager=OPERATOR)

    result = await make_reconciler().audit()

    assert [o.action for o in result.outcomes] == [Action.CLEAN]
    assert fake_api.writes(plural="envoyfilters") == []


async def test_a_second_audit_after_a_fix_writes_nothing_more(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)
    reconciler = make_reconciler()
    await reconciler.audit()
    writes = len(fake_api.writes())

    result = await reconciler.audit()

    assert [o.action for o in result.outcomes] == [Action.CLEAN]
    assert len(fake_api.writes()) == writes


async def test_unfixable_findings_become_an_event_and_a_policy_report_once(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    fake_api.store_envoy_filter(load_document("unfixable.yaml"), manager=OPERATOR)
    fake_api.store_envoy_filter(renamed(load_document("seed-corrected.yaml"), "healthy"), manager=OPERATOR)
    reconciler = make_reconciler()

    result = await reconciler.audit()

    by_name = {o.name: o for o in result.outcomes}
    assert {f.rule for f in by_name["epp-ext-proc-unfixable"].unfixed} == {"EPX007"}
    violations = [e for e in fake_api.objects_of(*EVENTS) if e["reason"] == "PolicyViolation"]
    assert len(violations) == 1
    assert violations[0]["regarding"]["name"] == "epp-ext-proc-unfixable"
    assert violations[0]["type"] == "Warning"
    assert "EPX007" in violations[0]["note"]
    (report,) = fake_api.objects_of(*POLICY_REPORTS)
    assert report["metadata"]["namespace"] == NAMESPACE
    failed = [r for r in report["results"] if r["result"] == "fail"]
    assert [r["rule"].split()[0] for r in failed] == ["EPX007"]
    assert failed[0]["resources"][0]["name"] == "epp-ext-proc-unfixable"
    healthy = {r["result"] for r in report["results"] if r["resources"][0]["name"] == "healthy"}
    assert healthy
    assert healthy <= {"pass", "warn"}
    assert report["summary"]["fail"] == 1
    writes = len(fake_api.writes())

    await reconciler.audit()

    assert len(fake_api.writes()) == writes


async def test_a_cluster_without_the_policy_report_crd_still_gets_events(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    fake_api.serve_policy_reports = False
    fake_api.store_envoy_filter(load_document("unfixable.yaml"), manager=OPERATOR)

    result = await make_reconciler().audit()

    assert result.errors == ()
    assert [e["reason"] for e in fake_api.objects_of(*EVENTS) if e["reason"] == "PolicyViolation"] == [
        "PolicyViolation"
    ]


async def test_filters_outside_the_given_namespaces_are_not_touched(
    fake_api: FakeKubeAPI, make_reconciler: ReconcilerFactory
) -> None:
    fake_api.store_envoy_filter(load_document("seed-bad.yaml"), manager=OPERATOR)

    result = await make_reconciler(settings=ReconcileSettings(namespaces=("elsewhere",))).audit()

    assert result.outcomes == ()
    assert fake_api.writes(plural="envoyfilters") == []
