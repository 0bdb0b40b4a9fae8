"""Rules read the role of the piece they judge: EPX014 (FULL_DUPLEX_STREAMED without trailers) denies for
every role and is fixed only for the EPP, EPX015 only warns, and EPX001 installs the EPP's filter by
REPLACE of its own name, never another user's filter."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from policies.findings import Level
from tests.policies.shapes import (
    EXT_PROC,
    SPLIT_EPP,
    SPLIT_EPP_IP,
    inputs,
    load_shape,
    mark,
    only,
    rules_of,
)

HCM = "envoy.filters.network.http_connection_manager"
BBR_FILTER = "envoy.filters.http.ext_proc.bbr"
ROUTER = "envoy.filters.http.router"
GLOBAL_TRAILER = "/spec/configPatches/0/patch/value/typed_config/processing_mode/response_trailer_mode"


def global_mode(document: dict[str, Any]) -> dict[str, Any]:
    mode: dict[str, Any] = document["spec"]["configPatches"][0]["patch"]["value"]["typed_config"][
        "processing_mode"
    ]
    return mode


def route_mode(document: dict[str, Any], filter_name: str = EXT_PROC) -> dict[str, Any]:
    patch = next(p for p in document["spec"]["configPatches"] if p["applyTo"] == "HTTP_ROUTE")
    mode: dict[str, Any] = patch["patch"]["value"]["typed_per_filter_config"][filter_name]["overrides"][
        "processing_mode"
    ]
    return mode


# EPX014 full-duplex-trailers ---------------------------------------------------------------------------


def global_without_response_trailers(shape: str, role: str | None) -> list[dict[str, Any]]:
    documents = load_shape(shape)
    global_mode(documents[0])["response_trailer_mode"] = "SKIP"
    if role is not None:
        documents[0] = mark(documents[0], role)
    return documents


UNTRAILED = {
    "bbr (other)": (global_without_response_trailers("bbr", None), "other"),
    "bbr marked undecided": (global_without_response_trailers("bbr", "unsure"), "undecided"),
    "gie form (epp)": (global_without_response_trailers("gie-epp", None), "epp"),
    "gie form marked other": (global_without_response_trailers("gie-epp", "other"), "other"),
}


@pytest.mark.parametrize(("documents", "role"), UNTRAILED.values(), ids=UNTRAILED.keys())
def test_a_global_full_duplex_body_without_trailers_is_denied_for_every_role(
    documents: list[dict[str, Any]], role: str
) -> None:
    before = copy.deepcopy(documents[0])
    result = inputs(documents).evaluate(documents[0])
    (finding,) = only(result.findings, "EPX014")
    assert finding.level is Level.ENFORCE
    assert finding.role == role
    assert finding.path == GLOBAL_TRAILER
    assert "Envoy rejects the filter and with it the listener" in finding.message
    assert finding.fixable is (role == "epp")
    if role == "epp":
        assert global_mode(result.fixed)["response_trailer_mode"] == "SEND"
        assert "EPX014" not in rules_of(result.remaining)
    else:
        assert result.fixed == before
        assert "EPX014" in rules_of(result.unfixed)


def test_an_unset_trailer_mode_counts_as_skip() -> None:
    documents = load_shape("bbr")
    del global_mode(documents[0])["request_trailer_mode"]
    (finding,) = only(inputs(documents).evaluate(documents[0]).findings, "EPX014")
    assert "request_body_mode FULL_DUPLEX_STREAMED without request_trailer_mode SEND" in finding.message


def test_another_users_override_without_trailers_only_warns() -> None:
    """Envoy does not check per-route overrides at load time: nothing is rejected, the route fails."""
    documents = load_shape("activator")
    mode = route_mode(documents[1], "envoy.filters.http.activator.ext_proc")
    mode["request_body_mode"] = "FULL_DUPLEX_STREAMED"
    before = copy.deepcopy(documents[1])
    result = inputs(documents).evaluate(documents[1])
    (finding,) = only(result.findings, "EPX014")
    assert finding.level is Level.WARN
    assert finding.role == "other"
    assert result.fixed == before


def test_the_epps_override_without_trailers_is_denied_and_fixed() -> None:
    documents = load_shape("gie-epp")
    route_mode(documents[0])["request_trailer_mode"] = "SKIP"
    result = inputs(documents).evaluate(documents[0])
    (finding,) = only(result.findings, "EPX014")
    assert finding.level is Level.ENFORCE
    assert "the stream fails when the route runs" in finding.message
    assert route_mode(result.fixed)["request_trailer_mode"] == "SEND"
    assert result.unfixed == ()


# EPX015 mode-override-ignored ----------------------------------------------------------------------------


def test_allow_mode_override_under_full_duplex_warns_for_another_user() -> None:
    documents = load_shape("bbr")
    result = inputs(documents).evaluate(documents[0])
    (finding,) = only(result.findings, "EPX015")
    assert finding.level is Level.WARN
    assert finding.role == "other"
    assert finding.path == "/spec/configPatches/0/patch/value/typed_config/allow_mode_override"
    assert not finding.fixable
    assert result.patch == ()


def test_allow_mode_override_under_full_duplex_warns_for_the_epp_and_is_left_alone() -> None:
    documents = load_shape("gie-epp")
    documents[0]["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["allow_mode_override"] = True
    result = inputs(documents).evaluate(documents[0])
    (finding,) = only(result.findings, "EPX015")
    assert finding.level is Level.WARN
    assert finding.role == "epp"
    assert not finding.fixable
    assert result.patch == ()


def test_allow_mode_override_with_buffered_bodies_is_not_reported() -> None:
    documents = load_shape("semantic-router")
    assert "EPX015" not in rules_of(inputs(documents).evaluate(documents[0]).findings)


# EPX001 ext-proc-operation: REPLACE the patch's own filter, never another user's ------------------------

DECLARED = {SPLIT_EPP: f"{SPLIT_EPP_IP}:9002"}


def epp_filter(*, name: str | None, operation: str, sub_filter: str | None) -> list[dict[str, Any]]:
    """The split EPP path's filter document (and its cluster), with its install operation changed."""
    documents = load_shape("epp-split")[:2]
    patch = documents[0]["spec"]["configPatches"][0]
    patch["patch"]["operation"] = operation
    if name is None:
        del patch["patch"]["value"]["name"]
    else:
        patch["patch"]["value"]["name"] = name
    network_filter = patch["match"]["listener"]["filterChain"]["filter"]
    if sub_filter is None:
        del network_filter["subFilter"]
    else:
        network_filter["subFilter"] = {"name": sub_filter}
    return documents


OPERATIONS = {
    "insert before the router": (
        epp_filter(name=EXT_PROC, operation="INSERT_BEFORE", sub_filter=ROUTER),
        EXT_PROC,
    ),
    "insert first": (epp_filter(name=EXT_PROC, operation="INSERT_FIRST", sub_filter=None), EXT_PROC),
    "own name, after another user's filter": (
        epp_filter(
            name="envoy.filters.http.ext_proc.granite", operation="INSERT_AFTER", sub_filter=BBR_FILTER
        ),
        "envoy.filters.http.ext_proc.granite",
    ),
    "replace of another user's filter": (
        epp_filter(name=EXT_PROC, operation="REPLACE", sub_filter=BBR_FILTER),
        EXT_PROC,
    ),
    "add without a name": (epp_filter(name=None, operation="ADD", sub_filter=None), EXT_PROC),
}


@pytest.mark.parametrize(("documents", "own"), OPERATIONS.values(), ids=OPERATIONS.keys())
def test_the_epps_filter_is_replaced_under_its_own_name(documents: list[dict[str, Any]], own: str) -> None:
    result = inputs(documents, declared=DECLARED).evaluate(documents[0])
    (finding,) = only(result.findings, "EPX001")
    assert finding.role == "epp"
    assert finding.fixable
    patch = result.fixed["spec"]["configPatches"][0]
    assert patch["patch"]["operation"] == "REPLACE"
    network_filter = patch["match"]["listener"]["filterChain"]["filter"]
    assert network_filter == {"name": HCM, "subFilter": {"name": own}}
    assert BBR_FILTER not in str(result.fixed)
    assert "EPX001" not in rules_of(result.remaining)


def test_an_istio_merge_into_the_gateways_filter_is_not_an_install() -> None:
    documents = load_shape("istio-merge")
    assert "EPX001" not in rules_of(inputs(documents).evaluate(documents[0]).findings)


@pytest.mark.parametrize("shape", ["bbr", "semantic-router", "sidecar"], ids=["bbr", "semantic", "sidecar"])
def test_another_users_insert_is_not_an_operation_finding(shape: str) -> None:
    documents = load_shape(shape)
    result = inputs(documents).evaluate(documents[0])
    assert "EPX001" not in rules_of(result.findings)
    assert result.patch == ()
