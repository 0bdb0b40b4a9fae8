"""Hypothesis over the real shapes: whatever processing modes another user's (or an undecided) ext_proc
filter has, and whatever else its workload holds, `fix` leaves it as it is; the EPP's split path fixes to
no enforce finding under one profile, and a second fix changes nothing."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.policies.shapes import SPLIT_EPP, SPLIT_EPP_IP, envoy_filters, inputs, load_shape

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODE_VALUES = {
    "request_header_mode": ("SEND", "SKIP", "DEFAULT"),
    "response_header_mode": ("SEND", "SKIP", "DEFAULT"),
    "request_body_mode": ("NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED"),
    "response_body_mode": ("NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED"),
    "request_trailer_mode": ("SEND", "SKIP", "DEFAULT"),
    "response_trailer_mode": ("SEND", "SKIP", "DEFAULT"),
}
NOT_EPP = ("bbr", "activator", "semantic-router", "sidecar", "unmarked")

modes = st.fixed_dictionaries(
    {}, optional={field: st.sampled_from(values) for field, values in MODE_VALUES.items()}
)


def mode_holders(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every mapping that holds (or may hold) a processing_mode: filter configs and route overrides."""
    for patch in document["spec"]["configPatches"]:
        value = patch["patch"]["value"]
        if "typed_config" in value:
            yield value["typed_config"]
        for entry in value.get("typed_per_filter_config", {}).values():
            yield entry.setdefault("overrides", {})


@SETTINGS
@given(st.sampled_from(NOT_EPP), st.data(), st.booleans(), st.booleans())
def test_a_shape_that_is_not_the_epps_is_never_changed(
    shape: str, data: st.DataObject, with_split_path: bool, allow_override: bool
) -> None:
    documents = envoy_filters(load_shape(shape))
    for document in documents:
        for holder in mode_holders(document):
            holder["processing_mode"] = data.draw(modes)
            if allow_override and "grpc_service" in holder:
                holder["allow_mode_override"] = True
    before = copy.deepcopy(documents)
    context = [*documents, *(load_shape("epp-split") if with_split_path else [])]
    run = inputs(context, declared={SPLIT_EPP: f"{SPLIT_EPP_IP}:9002"})
    for document, original in zip(documents, before, strict=True):
        result = run.evaluate(document)
        assert result.patch == ()
        assert result.fixed == original
        assert not any(finding.fixable for finding in result.findings)


@SETTINGS
@given(st.data())
def test_the_split_epp_path_is_judged_by_one_profile_and_fixes_for_good(data: st.DataObject) -> None:
    documents = load_shape("epp-split")
    for document in (documents[0], documents[2]):
        for holder in mode_holders(document):
            holder["processing_mode"] = data.draw(modes)
    declared = {SPLIT_EPP: f"{SPLIT_EPP_IP}:9002"}
    run = inputs(documents, declared=declared)
    profiles = {run.subject(document).profile.name for document in documents}
    assert len(profiles) == 1, "every document of one EPP path is judged by the same profile"
    fixed = [run.evaluate(document).fixed for document in documents]
    again = inputs(fixed, declared=declared)
    for document in fixed:
        result = again.evaluate(document)
        assert result.enforced == (), [f.message for f in result.enforced]
        assert result.patch == ()
