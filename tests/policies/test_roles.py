"""Whose ext_proc filter is this: the role decided for each real shape, the order of the answers, and
that only the EPP's pieces are ever changed (do no harm)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest

from policies.findings import Level
from policies.policy import Policy, default_policy, load_policy
from policies.resolver import ServiceRef
from policies.role import ROLE_ANNOTATION, Role
from tests.policies.shapes import (
    BBR,
    EXT_PROC,
    SEMANTIC,
    SPLIT_EPP,
    SPLIT_EPP_IP,
    Inputs,
    envoy_filters,
    inference_pool,
    inputs,
    load_shape,
    mark,
    only,
)

# The role of each EnvoyFilter of each shape, judged with the other documents of its file -------------


@dataclass(frozen=True)
class Decided:
    shape: str
    index: int
    """Which EnvoyFilter of the file."""
    roles: tuple[Role, ...]
    """The role of each ext_proc filter, then of each per-route entry."""
    why: str


DECIDED = {
    "bbr filter": Decided(
        "bbr", 0, (Role.OTHER,), "'envoy.filters.http.ext_proc.bbr' names another ext_proc"
    ),
    "activator placeholder filter": Decided(
        "activator", 0, (Role.OTHER,), "'envoy.filters.http.activator.ext_proc' names another ext_proc"
    ),
    "activator route override": Decided(
        "activator", 1, (Role.OTHER,), "'envoy.filters.http.activator.ext_proc' names another ext_proc"
    ),
    "semantic router": Decided(
        "semantic-router", 0, (Role.OTHER,), "semantic-router.intent-system.svc.cluster.local' names another"
    ),
    "sidecar google_grpc": Decided("sidecar", 0, (Role.OTHER,), "google_grpc service"),
    "istio merge towards the picker service": Decided(
        "istio-merge", 0, (Role.EPP,), "tinyllama-epp.models.svc.cluster.local' names an endpoint picker"
    ),
    "split epp filter": Decided(
        "epp-split", 0, (Role.EPP,), "'granite-picker-grpc' names an endpoint picker"
    ),
    "split epp route override": Decided(
        "epp-split",
        2,
        (Role.EPP,),
        "(filter envoy.filters.http.ext_proc of envoyfilter/granite-picker-filter)",
    ),
    "gie form with its inference pool": Decided(
        "gie-epp", 0, (Role.EPP, Role.EPP), "is the endpoint picker of InferencePool gie-demo/vicuna-pool"
    ),
    "unmarked filter": Decided(
        "unmarked", 0, (Role.UNDECIDED,), "nothing says whose ext_proc filter this is"
    ),
}


@pytest.mark.parametrize("case", DECIDED.values(), ids=DECIDED.keys())
def test_each_real_shape_gets_its_role_and_says_why(case: Decided) -> None:
    documents = load_shape(case.shape)
    decisions = inputs(documents).roles(envoy_filters(documents)[case.index])
    assert tuple(decision.role for decision in decisions) == case.roles
    assert all(case.why in decision.why for decision in decisions), [d.why for d in decisions]


def test_a_file_with_only_a_cluster_is_part_of_the_epp_path_its_neighbour_names() -> None:
    documents = load_shape("epp-split")
    subject = inputs(documents).subject(documents[1])
    (cluster,) = subject.pieces.epp_clusters
    assert subject.role_of(cluster).role is Role.EPP


# The order: annotation > policy > InferencePool > --service > heuristic --------------------------------

NEUTRAL_SERVICE = "tinyllama-gate"
"""The Istio merge shape with a Service name that no heuristic reads: only the other answers decide."""


def neutral() -> list[dict[str, Any]]:
    return load_shape("istio-merge", {"tinyllama-epp": NEUTRAL_SERVICE})


def with_policy(text: str) -> Policy:
    return load_policy(text)


@dataclass(frozen=True)
class Order:
    documents: list[dict[str, Any]]
    role: Role
    why: str
    declared: tuple[str, ...] = ()
    policy: Policy | None = None


GATE = f"models/{NEUTRAL_SERVICE}"
POOL = inference_pool(ServiceRef("models", NEUTRAL_SERVICE), name="tinyllama")


def _marked(documents: list[dict[str, Any]], value: str) -> list[dict[str, Any]]:
    return [mark(documents[0], value), *documents[1:]]


ORDER = {
    "heuristic alone cannot tell": Order(neutral(), Role.UNDECIDED, "nothing says"),
    "--service makes it the epp": Order(neutral(), Role.EPP, "was given as the EPP's", declared=(GATE,)),
    "an inference pool answers before --service": Order(
        [*neutral(), POOL], Role.EPP, "endpoint picker of InferencePool models/tinyllama", declared=(GATE,)
    ),
    "the policy answers before an inference pool": Order(
        [*neutral(), POOL],
        Role.OTHER,
        "is in roles.other_services",
        policy=with_policy(f"roles: {{other_services: [{GATE}]}}"),
    ),
    "the policy's epp services": Order(
        neutral(),
        Role.EPP,
        "is in roles.epp_services",
        policy=with_policy(f"roles: {{epp_services: [{GATE}]}}"),
    ),
    "the annotation answers before the policy": Order(
        _marked(neutral(), "epp"),
        Role.EPP,
        f"annotation {ROLE_ANNOTATION}: epp",
        policy=with_policy(f"roles: {{other_services: [{GATE}]}}"),
    ),
    "the annotation answers before a pool and --service": Order(
        _marked([*neutral(), POOL], "other"),
        Role.OTHER,
        f"annotation {ROLE_ANNOTATION}: other",
        declared=(GATE,),
    ),
    "the annotation is read without case or spaces": Order(
        _marked(neutral(), " EPP "), Role.EPP, f"annotation {ROLE_ANNOTATION}: epp"
    ),
    "an invalid annotation value leaves it undecided even with a pool": Order(
        _marked([*neutral(), POOL], "gateway"),
        Role.UNDECIDED,
        "is 'gateway', which is neither 'epp' nor 'other'",
    ),
    "a pool answers before the heuristic of another user": Order(
        [*load_shape("bbr"), inference_pool(BBR, name="chat")],
        Role.EPP,
        "endpoint picker of InferencePool chat-gateway/chat",
    ),
    "--service answers before the heuristic of another user": Order(
        load_shape("semantic-router"), Role.EPP, "was given as the EPP's", declared=(str(SEMANTIC),)
    ),
    "the policy's filter names answer before the heuristic": Order(
        load_shape("bbr"),
        Role.EPP,
        "filter name envoy.filters.http.ext_proc.bbr is in roles.epp_filter_names",
        policy=with_policy("roles: {epp_filter_names: [envoy.filters.http.ext_proc.bbr]}"),
    ),
    "the policy's other filter names": Order(
        load_shape("unmarked"),
        Role.OTHER,
        "filter name envoy.filters.http.ext_proc is in roles.other_filter_names",
        policy=with_policy("roles: {other_filter_names: [envoy.filters.http.ext_proc]}"),
    ),
}


@pytest.mark.parametrize("case", ORDER.values(), ids=ORDER.keys())
def test_the_first_answer_in_the_documented_order_decides_the_role(case: Order) -> None:
    declared = {ServiceRef(*ref.split("/")): "10.96.3.3:9002" for ref in case.declared}
    run = inputs(case.documents, declared=declared, policy=case.policy)
    (decision,) = run.roles(envoy_filters(case.documents)[0])
    assert decision.role is case.role
    assert case.why in decision.why


def test_an_invalid_annotation_is_reported_with_the_value_and_how_to_mark_it() -> None:
    documents = _marked(load_shape("istio-merge"), "yes")
    (warning,) = only(inputs(documents).evaluate(documents[0]).findings, "EPX016")
    assert warning.level is Level.WARN
    assert "'yes', which is neither 'epp' nor 'other'" in warning.message
    assert f"{ROLE_ANNOTATION}: epp" in warning.message
    assert warning.role == "undecided"


# EPX016: exactly the undecided pieces -------------------------------------------------------------------

EVERY_DOCUMENT = [
    (shape, index)
    for shape, count in (
        ("bbr", 1),
        ("activator", 2),
        ("semantic-router", 1),
        ("sidecar", 1),
        ("istio-merge", 1),
        ("epp-split", 3),
        ("gie-epp", 1),
        ("unmarked", 1),
    )
    for index in range(count)
    if (shape, index) != ("epp-split", 1)  # only a cluster: no filter or override to decide
]
EVERY_ID = [f"{shape}-{index}" for shape, index in EVERY_DOCUMENT]


def undecided_paths(run: Inputs, document: dict[str, Any]) -> set[str]:
    subject = run.subject(document)
    paths = {
        piece.patch.value_path
        for piece in subject.pieces.filters
        if subject.role_of(piece).role is Role.UNDECIDED
    }
    paths |= {route.path for route in subject.pieces.routes if subject.role_of(route).role is Role.UNDECIDED}
    return paths


@pytest.mark.parametrize("marked", [False, True], ids=["as-written", "marked-yes"])
@pytest.mark.parametrize(("shape", "index"), EVERY_DOCUMENT, ids=EVERY_ID)
def test_the_role_warning_appears_exactly_for_the_undecided_pieces(
    shape: str, index: int, marked: bool
) -> None:
    documents = envoy_filters(load_shape(shape))
    if marked:
        documents[index] = mark(documents[index], "yes")
    run = inputs(documents)
    warnings = only(run.evaluate(documents[index]).findings, "EPX016")
    assert {warning.path for warning in warnings} == undecided_paths(run, documents[index])
    assert bool(warnings) == (marked or shape == "unmarked")
    for warning in warnings:
        assert warning.level is Level.WARN
        assert not warning.fixable
        assert f"{ROLE_ANNOTATION}: epp" in warning.message
        assert f"{ROLE_ANNOTATION}: other" in warning.message
        assert "roles.epp_services" in warning.message


# Do no harm: `fix` never changes another user's or an undecided document ------------------------------


def _without_trailers(text_shape: str) -> list[dict[str, Any]]:
    documents = load_shape(text_shape)
    mode = documents[0]["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["processing_mode"]
    del mode["request_trailer_mode"]
    mode["response_trailer_mode"] = "SKIP"
    return documents


def _streamed(shape: str) -> list[dict[str, Any]]:
    documents = load_shape(shape)
    config = documents[0]["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]
    config["processing_mode"]["request_body_mode"] = "STREAMED"
    config["processing_mode"]["response_body_mode"] = "STREAMED"
    return documents


def _split_marked(index: int, role: str) -> list[dict[str, Any]]:
    """The split EPP path with one EnvoyFilter marked, its override leaving fields unset (a fix would write
    them for the EPP)."""
    documents = load_shape("epp-split")
    route = documents[2]["spec"]["configPatches"][0]["patch"]["value"]["typed_per_filter_config"][EXT_PROC]
    del route["overrides"]["processing_mode"]["response_header_mode"]
    documents[index] = mark(documents[index], role)
    return documents


UNTOUCHED = {
    "bbr": (load_shape("bbr"), 0),
    "bbr without trailers": (_without_trailers("bbr"), 0),
    "activator placeholder": (load_shape("activator"), 0),
    "activator override": (load_shape("activator"), 1),
    "activator placeholder alone": (load_shape("activator")[:1], 0),
    "semantic router streamed": (_streamed("semantic-router"), 0),
    "sidecar streamed": (_streamed("sidecar"), 0),
    "unmarked": (load_shape("unmarked"), 0),
    "unmarked with a pool for another service": (
        [*load_shape("unmarked"), inference_pool(SPLIT_EPP, name="granite")],
        0,
    ),
    "epp split marked other": (
        [mark(document, "other") for document in load_shape("epp-split")],
        0,
    ),
    "epp split cluster whose users are other": (
        [mark(document, "other") for document in load_shape("epp-split")],
        1,
    ),
    "epp split partial override marked other": (_split_marked(2, "other"), 2),
    "epp split partial override marked undecided": (_split_marked(2, "maybe"), 2),
    "epp split dns cluster marked other": (_split_marked(1, "other"), 1),
    "gie form marked other": ([mark(load_shape("gie-epp")[0], "other"), *load_shape("gie-epp")[1:]], 0),
}


@pytest.mark.parametrize(
    "policy", [default_policy(), load_policy("profile: headers-epp")], ids=["auto", "pinned"]
)
@pytest.mark.parametrize(("documents", "index"), UNTOUCHED.values(), ids=UNTOUCHED.keys())
def test_fix_never_changes_a_document_that_is_not_the_epps(
    documents: list[dict[str, Any]], index: int, policy: Policy
) -> None:
    before = copy.deepcopy(documents)
    declared = {SPLIT_EPP: f"{SPLIT_EPP_IP}:9002"}
    result = inputs(documents, declared=declared, policy=policy).evaluate(envoy_filters(documents)[index])
    assert result.applicable
    assert result.patch == ()
    assert result.fixed == envoy_filters(before)[index]
    assert documents == before
    assert not any(finding.fixable for finding in result.findings)
    assert all(finding.role != "epp" for finding in result.findings)


@pytest.mark.parametrize(
    "shape",
    ["bbr", "activator", "semantic-router", "sidecar"],
    ids=["bbr", "activator", "semantic", "sidecar"],
)
def test_another_users_filter_is_denied_only_for_what_envoy_cannot_run(shape: str) -> None:
    documents = _streamed(shape) if shape in ("semantic-router", "sidecar") else load_shape(shape)
    run = inputs(documents)
    enforced = {
        finding.rule for document in envoy_filters(documents) for finding in run.evaluate(document).enforced
    }
    assert enforced <= {"EPX005", "EPX007", "EPX008", "EPX014"}


@pytest.mark.parametrize("other", ["bbr", "unmarked"], ids=["another user", "undecided"])
def test_in_one_envoyfilter_only_the_epps_patches_are_changed(other: str) -> None:
    """The EPP's path (GIE form, its filter streamed) shares one EnvoyFilter with another ext_proc filter;
    the EnvoyFilter's name ('vicuna-picker-path') then speaks for neither filter."""
    gie_path, *rest = load_shape("gie-epp")
    mode = gie_path["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["processing_mode"]
    mode["request_body_mode"] = "STREAMED"
    mode["request_header_mode"] = "SEND"
    foreign = envoy_filters(load_shape(other))[0]["spec"]["configPatches"]
    gie_path["spec"]["configPatches"] = [*foreign, *gie_path["spec"]["configPatches"]]
    run = inputs([gie_path, *rest])
    expected = Role.OTHER if other == "bbr" else Role.UNDECIDED
    foreign_role, epp_role = run.roles(gie_path)[:2]
    assert foreign_role.role is expected, foreign_role.why
    assert epp_role.role is Role.EPP
    result = run.evaluate(gie_path)
    assert result.changed
    assert result.fixed["spec"]["configPatches"][: len(foreign)] == foreign
    touched = {op.path.split("/")[3] for op in result.patch if op.path.startswith("/spec/configPatches/")}
    assert touched
    assert all(int(index) >= len(foreign) for index in touched)
    fixed_mode = result.fixed["spec"]["configPatches"][len(foreign)]["patch"]["value"]["typed_config"][
        "processing_mode"
    ]
    assert fixed_mode["request_body_mode"] != "STREAMED"
