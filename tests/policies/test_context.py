"""One EPP path written as several EnvoyFilters: a cluster, a per-route override or a filter found in
another document of the same workload, and what a reference to something missing means when the context
is settled (offline, the reconciler) or not (admission)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies.context import Context
from policies.findings import Level
from policies.model import EnvoyFilter, is_envoy_filter
from policies.pieces import PER_ROUTE_TYPE, read_clusters
from policies.workload import neighbours_of
from tests.policies.shapes import (
    EXT_PROC,
    SPLIT_EPP,
    SPLIT_EPP_IP,
    envoy_filters,
    inputs,
    load_shape,
    only,
    rules_of,
)

DECLARED = {SPLIT_EPP: f"{SPLIT_EPP_IP}:9002"}


def split() -> list[dict[str, Any]]:
    return load_shape("epp-split")


def global_mode(document: dict[str, Any]) -> dict[str, Any]:
    mode: dict[str, Any] = document["spec"]["configPatches"][0]["patch"]["value"]["typed_config"][
        "processing_mode"
    ]
    return mode


# A cluster another EnvoyFilter adds ---------------------------------------------------------------------


def test_a_cluster_added_by_another_document_of_the_workload_is_found() -> None:
    documents = split()
    result = inputs(documents).evaluate(documents[0])
    assert "EPX007" not in rules_of(result.findings)


def test_a_cluster_in_another_namespace_is_not_the_workloads() -> None:
    documents = split()
    documents[1]["metadata"]["namespace"] = "elsewhere"
    (dangling,) = only(inputs(documents).evaluate(documents[0]).findings, "EPX007")
    assert dangling.level is Level.ENFORCE
    assert "'granite-picker-grpc', which no CLUSTER ADD patch of the workload defines" in dangling.message


def test_a_cluster_in_istios_root_namespace_serves_every_workload() -> None:
    documents = split()
    documents[1]["metadata"]["namespace"] = "istio-system"
    assert "EPX007" not in rules_of(inputs(documents).evaluate(documents[0]).findings)


@pytest.mark.parametrize(
    ("settled", "level"), [(True, Level.ENFORCE), (False, Level.WARN)], ids=["settled", "admission"]
)
def test_a_dangling_cluster_is_denied_only_when_the_context_is_settled(settled: bool, level: Level) -> None:
    documents = split()[:1]
    (dangling,) = only(inputs(documents, settled=settled).evaluate(documents[0]).findings, "EPX007")
    assert dangling.level is level
    assert dangling.role == "epp"
    if not settled:
        assert "resolves once it is stored" in dangling.message


def test_the_other_documents_dns_cluster_is_judged_as_the_epps() -> None:
    documents = split()
    (dns,) = only(inputs(documents).evaluate(documents[1]).findings, "EPX003")
    assert dns.level is Level.ENFORCE
    assert dns.role == "epp"
    assert dns.path == "/spec/configPatches/0/patch/value/type"
    assert not dns.fixable, "no --service and no Service document: nothing to pin it to"


def test_the_other_documents_dns_cluster_is_pinned_to_the_declared_service() -> None:
    documents = split()
    result = inputs(documents, declared=DECLARED).evaluate(documents[1])
    cluster = result.fixed["spec"]["configPatches"][0]["patch"]["value"]
    assert cluster["type"] == "STATIC"
    socket = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert socket["socket_address"] == {"address": SPLIT_EPP_IP, "port_value": 9002}
    assert result.fixed["metadata"]["annotations"] == {"extproc-guard.io/epp-service": str(SPLIT_EPP)}
    assert result.unfixed == ()


def test_a_cluster_document_alone_is_not_an_ext_proc_document() -> None:
    documents = split()
    result = inputs(documents[1:2]).evaluate(documents[1])
    assert not result.applicable
    assert result.findings == ()


def test_a_cluster_only_another_users_filter_names_is_never_changed() -> None:
    documents = split()
    for document in (documents[0], documents[2]):
        document["metadata"]["annotations"] = {"extproc-guard.io/role": "other"}
    before = copy.deepcopy(documents[1])
    result = inputs(documents, declared=DECLARED).evaluate(documents[1])
    assert result.patch == ()
    assert result.fixed == before
    assert "EPX003" not in rules_of(result.findings)


# A per-route override another EnvoyFilter adds ---------------------------------------------------------


def test_a_per_route_override_in_another_document_satisfies_the_header_rule() -> None:
    documents = split()
    result = inputs(documents, declared=DECLARED).evaluate(documents[0])
    header = only(result.findings, "EPX004")
    assert [finding.path for finding in header] == [
        "/spec/configPatches/0/patch/value/typed_config/processing_mode/request_header_mode"
    ]
    patches = result.fixed["spec"]["configPatches"]
    assert len(patches) == 1, "no second override is added next to the workload's"
    assert global_mode(result.fixed)["request_header_mode"] == "SKIP"


def test_a_disabled_override_elsewhere_does_not_count() -> None:
    documents = split()
    documents[2]["spec"]["configPatches"][0]["patch"]["value"]["typed_per_filter_config"][EXT_PROC] = {
        "@type": PER_ROUTE_TYPE,
        "disabled": True,
    }
    result = inputs(documents, declared=DECLARED).evaluate(documents[0])
    assert any("no per-route ExtProcPerRoute override" in f.message for f in only(result.findings, "EPX004"))


def test_an_override_for_another_filter_name_does_not_count() -> None:
    documents = split()
    per_filter = documents[2]["spec"]["configPatches"][0]["patch"]["value"]["typed_per_filter_config"]
    per_filter["envoy.filters.http.ext_proc.bbr"] = per_filter.pop(EXT_PROC)
    result = inputs(documents, declared=DECLARED).evaluate(documents[0])
    assert any("no per-route ExtProcPerRoute override" in f.message for f in only(result.findings, "EPX004"))


def test_the_override_document_takes_the_role_of_the_filter_it_configures() -> None:
    documents = split()
    documents[0]["metadata"]["annotations"] = {"extproc-guard.io/role": "other"}
    route_result = inputs(documents).evaluate(documents[2])
    assert route_result.findings == ()
    assert (
        inputs(documents)
        .roles(documents[2])[0]
        .why.endswith("(filter envoy.filters.http.ext_proc of envoyfilter/granite-picker-filter)")
    )


# EPX004's added override ---------------------------------------------------------------------------------


def added_override(fixed: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = fixed["spec"]["configPatches"][-1]
    assert patch["applyTo"] == "HTTP_ROUTE"
    return patch


def test_the_added_override_keeps_the_filters_response_and_trailer_modes() -> None:
    documents = split()[:2]
    result = inputs(documents, declared=DECLARED).evaluate(documents[0])
    patch = added_override(result.fixed)
    assert patch["match"] == {"context": "GATEWAY"}
    assert patch["patch"]["operation"] == "MERGE"
    entry = patch["patch"]["value"]["typed_per_filter_config"][EXT_PROC]
    assert entry["@type"] == PER_ROUTE_TYPE
    assert entry["overrides"]["processing_mode"] == {
        "request_header_mode": "SEND",
        "request_body_mode": "NONE",
        "response_header_mode": "SEND",
        "response_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SEND",
    }
    assert result.unfixed == ()


def test_the_added_override_of_a_gie_filter_streams_full_duplex_with_trailers() -> None:
    documents = load_shape("gie-epp")
    documents[0]["spec"]["configPatches"].pop()  # no override
    result = inputs(documents).evaluate(documents[0])
    entry = added_override(result.fixed)["patch"]["value"]["typed_per_filter_config"][EXT_PROC]
    mode = entry["overrides"]["processing_mode"]
    assert mode["request_header_mode"] == "SEND"
    assert mode["request_body_mode"] == mode["response_body_mode"] == "FULL_DUPLEX_STREAMED"
    assert mode["request_trailer_mode"] == mode["response_trailer_mode"] == "SEND"
    assert mode["response_header_mode"] == "SKIP", "the filter's own response header mode"
    assert added_override(result.fixed)["match"] == {"context": "GATEWAY"}
    assert result.unfixed == ()


def test_the_split_path_fixes_to_no_enforce_finding_in_any_document() -> None:
    documents = split()
    run = inputs(documents, declared=DECLARED)
    fixed = [run.evaluate(document).fixed for document in envoy_filters(documents)]
    again = inputs(fixed, declared=DECLARED)
    for document in fixed:
        assert again.evaluate(document).enforced == ()


# The index of a namespace's EnvoyFilters -----------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"


def real_envoy_filters() -> list[dict[str, Any]]:
    files = sorted((ROOT / "manifests").rglob("*.yaml")) + sorted((ROOT / "tests").rglob("*.yaml"))
    files += sorted(CORPUS.glob("*.yaml")) if CORPUS.is_dir() else []
    found = []
    for path in files:
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        found += [doc for doc in documents if isinstance(doc, dict) and is_envoy_filter(doc)]
    return found


def test_a_neighbour_holds_every_cluster_its_filter_adds() -> None:
    documents = real_envoy_filters()
    cluster_only = copy.deepcopy(split()[1])
    cluster_only["metadata"]["name"] = "clusters-only"
    documents.append(cluster_only)
    context = Context(envoy_filters=tuple(documents))
    namespaces = {str(EnvoyFilter.of(document).namespace) for document in documents}
    checked = 0
    for namespace in namespaces:
        for neighbour in neighbours_of(context, namespace, EXT_PROC):
            if neighbour.envoy_filter.namespace != namespace:
                continue
            assert neighbour.clusters == read_clusters(neighbour.envoy_filter), neighbour.key
            checked += bool(neighbour.clusters)
    assert checked > 10
