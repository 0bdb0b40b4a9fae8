"""The profile an EPP filter is judged by: the policy's pin, else `gie-epp` when an InferencePool names its
Service or the path is already in FULL_DUPLEX_STREAMED form, else `headers-epp`; and a correct GIE-form
path is never rewritten to body NONE or stripped of its TLS, whether it is one document or several."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from policies.policy import Policy, default_policy, load_policy
from policies.profile import ProfileName
from tests.policies.shapes import (
    GIE_EPP,
    MERGE_EPP,
    SPLIT_EPP,
    SPLIT_EPP_IP,
    envoy_filters,
    inference_pool,
    inputs,
    load_shape,
)

GIE_IP = "10.96.77.20:9002"


def gie(*, pool: bool = True, service: bool = True) -> list[dict[str, Any]]:
    """The GIE-form fixture, with or without its InferencePool and its Service document."""
    documents = load_shape("gie-epp")
    return [
        document
        for document in documents
        if (pool or document["kind"] != "InferencePool") and (service or document["kind"] != "Service")
    ]


def split_gie(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The GIE path as three EnvoyFilters (filter, cluster, override), each with its epp-service note."""
    (path,) = envoy_filters(documents)
    patches = path["spec"]["configPatches"]
    parts = []
    for suffix, patch in zip(("filter", "cluster", "routes"), patches, strict=True):
        part = copy.deepcopy(path)
        part["metadata"]["name"] = f"vicuna-picker-{suffix}"
        part["spec"]["configPatches"] = [copy.deepcopy(patch)]
        parts.append(part)
    return [*parts, *(document for document in documents if document["kind"] != "EnvoyFilter")]


CHOICES = {
    "pinned headers-epp": (
        gie(),
        load_policy("profile: headers-epp"),
        ProfileName.HEADERS_EPP,
        "the policy pins",
    ),
    "pinned gie-epp": (load_shape("epp-split"), load_policy("profile: gie-epp"), ProfileName.GIE_EPP, "pins"),
    "inference pool of its service": (
        gie(),
        default_policy(),
        ProfileName.GIE_EPP,
        "its Service is the endpoint picker of InferencePool gie-demo/vicuna-pool",
    ),
    "inference pool of its istio cluster's service": (
        [*load_shape("istio-merge"), inference_pool(MERGE_EPP, name="tinyllama")],
        default_policy(),
        ProfileName.GIE_EPP,
        "InferencePool models/tinyllama",
    ),
    "already full duplex": (
        gie(pool=False),
        default_policy(),
        ProfileName.GIE_EPP,
        "already in FULL_DUPLEX_STREAMED form",
    ),
    "default": (
        load_shape("epp-split"),
        default_policy(),
        ProfileName.HEADERS_EPP,
        "no InferencePool names its Service and the filter is not in FULL_DUPLEX_STREAMED form",
    ),
}


@pytest.mark.parametrize(("documents", "policy", "profile", "why"), CHOICES.values(), ids=CHOICES.keys())
def test_the_profile_is_chosen_per_epp_filter_and_says_why(
    documents: list[dict[str, Any]], policy: Policy, profile: ProfileName, why: str
) -> None:
    choice = inputs(documents, policy=policy).subject(documents[0]).profile_choice
    assert choice.profile.name is profile
    assert why in choice.why


def full_duplex_sites(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for patch in document["spec"]["configPatches"]:
        value = patch["patch"]["value"]
        if "typed_config" in value:
            yield value["typed_config"]["processing_mode"]
        for entry in value.get("typed_per_filter_config", {}).values():
            yield entry["overrides"]["processing_mode"]


GIE_FORMS = {
    "with pool and service": (gie(), {}),
    "with the service document only": (gie(pool=False), {}),
    "with --service only": (gie(pool=False, service=False), {GIE_EPP: GIE_IP}),
    "split, with pool and service": (split_gie(gie()), {}),
    "split, with the service document only": (split_gie(gie(pool=False)), {}),
    "split, with --service only": (split_gie(gie(pool=False, service=False)), {GIE_EPP: GIE_IP}),
}


@pytest.mark.parametrize(("documents", "declared"), GIE_FORMS.values(), ids=GIE_FORMS.keys())
def test_a_correct_gie_form_path_is_never_rewritten(
    documents: list[dict[str, Any]], declared: dict[Any, str]
) -> None:
    run = inputs(documents, declared=declared)
    for document in envoy_filters(documents):
        result = run.evaluate(document)
        assert result.enforced == (), [f.message for f in result.enforced]
        assert result.patch == (), f"envoyfilter/{document['metadata']['name']}: {result.patch}"


def test_a_gie_form_filter_that_sends_headers_globally_keeps_its_full_duplex_bodies() -> None:
    documents = gie(pool=False)
    mode = documents[0]["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["processing_mode"]
    mode["request_header_mode"] = "SEND"
    result = inputs(documents).evaluate(documents[0])
    assert result.changed
    for site in full_duplex_sites(result.fixed):
        assert site["request_body_mode"] == site["response_body_mode"] == "FULL_DUPLEX_STREAMED"
        assert site["request_trailer_mode"] == site["response_trailer_mode"] == "SEND"
    assert result.unfixed == ()


def test_a_split_gie_override_in_headers_form_is_brought_to_the_pools_profile() -> None:
    """The override document names no cluster: its profile comes from the filter it configures."""
    documents = split_gie(gie())
    route = documents[2]["spec"]["configPatches"][0]["patch"]["value"]["typed_per_filter_config"]
    route["envoy.filters.http.ext_proc"]["overrides"]["processing_mode"] = {
        "request_header_mode": "SEND",
        "request_body_mode": "NONE",
        "response_header_mode": "SKIP",
        "response_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    subject = inputs(documents).subject(documents[2])
    assert subject.profile.name is ProfileName.GIE_EPP
    assert "InferencePool gie-demo/vicuna-pool" in subject.profile_choice.why
    fixed = inputs(documents).evaluate(documents[2]).fixed
    (site,) = full_duplex_sites(fixed)
    assert site["request_body_mode"] == "FULL_DUPLEX_STREAMED"


def test_the_seed_form_is_kept_when_the_policy_pins_headers_epp() -> None:
    documents = load_shape("epp-split")
    run = inputs(
        documents, declared={SPLIT_EPP: f"{SPLIT_EPP_IP}:9002"}, policy=load_policy("profile: headers-epp")
    )
    fixed = run.evaluate(documents[0]).fixed
    (site,) = full_duplex_sites(fixed)
    assert site["request_body_mode"] == "NONE"
