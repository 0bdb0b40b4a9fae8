"""Hypothesis properties of the engine over generated EnvoyFilters (good and bad variants, both spellings,
unrelated patches and fields mixed in)."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.engine import evaluate
from policies.patch import apply_patch, split_pointer
from policies.policy import Policy, default_policy, load_policy
from policies.rules import RULES
from policies.rules.base import fix_nothing
from tests.policies.filters import CLUSTER_IP, NAMESPACE, SERVICE, SPELLINGS, Shape, build, resolver

HEADER_MODES = ("SEND", "SKIP", "DEFAULT")
BODY_MODES = ("NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED")
MODE_CHOICES = {
    "request_header_mode": HEADER_MODES,
    "request_body_mode": BODY_MODES,
    "response_header_mode": HEADER_MODES,
    "response_body_mode": BODY_MODES,
    "request_trailer_mode": HEADER_MODES,
    "response_trailer_mode": HEADER_MODES,
}
DNS_NAMES = (
    f"{SERVICE}.{NAMESPACE}.svc.cluster.local",
    f"{SERVICE}.{NAMESPACE}.svc",
    f"{SERVICE}.{NAMESPACE}",
    SERVICE,
)
POLICIES = {"headers-epp": default_policy(), "gie-epp": load_policy("profile: gie-epp")}

UNRELATED_PATCHES = (
    {
        "applyTo": "HTTP_FILTER",
        "match": {
            "context": "GATEWAY",
            "listener": {"filterChain": {"filter": {"subFilter": {"name": "x"}}}},
        },
        "patch": {
            "operation": "INSERT_BEFORE",
            "value": {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": "function envoy_on_request(h) end"},
                },
            },
        },
    },
    {
        "applyTo": "CLUSTER",
        "match": {"context": "GATEWAY"},
        "patch": {
            "operation": "ADD",
            "value": {"name": "metrics-sink", "type": "STRICT_DNS", "connect_timeout": "1s"},
        },
    },
    {
        "applyTo": "LISTENER",
        "patch": {"operation": "MERGE", "value": {"per_connection_buffer_limit_bytes": 1024}},
    },
    {"applyTo": "NETWORK_FILTER", "patch": {"operation": "REMOVE"}},
)

OWNED = tuple(
    re.compile(pattern)
    for pattern in (
        r"/metadata/annotations(/extproc-guard\.io~1epp-service)?",
        r"/spec/configPatches/\d+",
        r"/spec/configPatches/\d+/patch/operation",
        r"/spec/configPatches/\d+/match(/listener(/filterChain(/filter(/subFilter(/name)?)?)?)?)?",
        r"/spec/configPatches/\d+/patch/value/typed_?[cC]onfig/processing_?[mM]ode(/\w+)?",
        r"/spec/configPatches/\d+/patch/value/type",
        r"/spec/configPatches/\d+/patch/value/load_?[aA]ssignment/endpoints/\d+/lb_?[eE]ndpoints/\d+"
        r"/endpoint/address/socket_?[aA]ddress/(address|port_?[vV]alue)",
        r"/spec/configPatches/\d+/patch/value/typed_?[eE]xtension_?[pP]rotocol_?[oO]ptions(/.*)?",
        r"/spec/configPatches/\d+/patch/value/transport_?[sS]ocket",
        r"/spec/configPatches/\d+/patch/value/typed_?[pP]er_?[fF]ilter_?[cC]onfig/[^/]+/overrides"
        r"(/processing_?[mM]ode(/\w+)?)?",
    )
)


@st.composite
def modes(draw: st.DrawFn) -> dict[str, str] | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    fields = draw(st.lists(st.sampled_from(sorted(MODE_CHOICES)), unique=True))
    return {field: draw(st.sampled_from(MODE_CHOICES[field])) for field in fields}


@st.composite
def shapes(draw: st.DrawFn, *, fixable: bool) -> Shape:
    cluster_type = draw(st.sampled_from(("STATIC", "STRICT_DNS", "LOGICAL_DNS")))
    address = draw(st.sampled_from((CLUSTER_IP, "10.96.0.99", *DNS_NAMES)))
    annotate = draw(st.booleans())
    if fixable and not annotate and address[0].isdigit():
        annotate = True
    shape = Shape(
        spelling=draw(st.sampled_from(SPELLINGS)),
        operation=draw(st.sampled_from(("REPLACE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "ADD"))),
        sub_filter=draw(st.sampled_from(("envoy.filters.http.ext_proc", "envoy.filters.http.router", None))),
        global_mode=draw(modes()),
        failure_mode_allow=draw(st.booleans()),
        cluster_type=cluster_type,
        address=address,
        http2=draw(st.booleans()),
        tls=draw(st.booleans()),
        route_mode=draw(modes()),
        annotate=annotate,
        replace_verified=draw(st.booleans()),
    )
    if not fixable:
        shape = shape.but(
            cluster_name=draw(st.sampled_from(("epp-cluster", "epp-cluster", "missing-cluster"))),
            port=draw(st.sampled_from((9002, 9002, 9003))),
            timeout=draw(st.sampled_from(("10s", "10s", "ten seconds"))),
        )
    return shape


Extras = dict[str, Any]


@st.composite
def documents(draw: st.DrawFn, *, fixable: bool) -> tuple[dict[str, Any], Extras, Policy]:
    """A generated EnvoyFilter, the unrelated fields planted in it (pointer -> value), and a policy."""
    shape = draw(shapes(fixable=fixable))
    document = build(shape)
    patches = document["spec"]["configPatches"]
    for extra in draw(st.lists(st.sampled_from(UNRELATED_PATCHES), max_size=3)):
        patches.insert(draw(st.integers(0, len(patches))), copy.deepcopy(extra))
    extras: Extras = {"/spec/priority": 10, "/metadata/labels": {"team": "inference"}}
    document["spec"]["priority"] = 10
    document["metadata"]["labels"] = {"team": "inference"}
    for index, patch in enumerate(patches):
        value = patch["patch"].get("value", {})
        if patch["applyTo"] == "HTTP_FILTER" and value.get("name") == "envoy.filters.http.ext_proc":
            config_key = next(k for k in value if k in ("typed_config", "typedConfig"))
            stat = "stat_prefix" if shape.spelling == "snake" else "statPrefix"
            value[config_key][stat] = "epp"
            extras[f"/spec/configPatches/{index}/patch/value/{config_key}/{stat}"] = "epp"
        if patch["applyTo"] == "CLUSTER" and value.get("name") == "epp-cluster":
            family = "dns_lookup_family" if shape.spelling == "snake" else "dnsLookupFamily"
            value[family] = "V4_ONLY"
            extras[f"/spec/configPatches/{index}/patch/value/{family}"] = "V4_ONLY"
        extras[f"/spec/configPatches/{index}/applyTo"] = patch["applyTo"]
    profile = draw(st.sampled_from(sorted(POLICIES)))
    return document, extras, POLICIES[profile]


def lookup(document: Any, path: str) -> Any:
    node = document
    for token in split_pointer(path):
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(documents(fixable=True))
def test_fixed_filter_has_no_enforce_findings_when_the_service_resolves(
    case: tuple[dict[str, Any], Extras, Policy],
) -> None:
    document, _, policy = case
    result = evaluate(document, policy=policy, resolver=resolver())
    assert result.unfixed == ()
    again = evaluate(result.fixed, policy=policy, resolver=resolver())
    assert again.enforced == ()
    assert again.findings == result.remaining


@SETTINGS
@given(documents(fixable=False))
def test_fix_is_idempotent(case: tuple[dict[str, Any], Extras, Policy]) -> None:
    document, _, policy = case
    fixed = evaluate(document, policy=policy, resolver=resolver()).fixed
    again = evaluate(fixed, policy=policy, resolver=resolver())
    assert again.patch == ()
    assert again.fixed == fixed


@SETTINGS
@given(documents(fixable=False))
def test_patch_turns_the_document_into_the_fixed_one_with_our_code_and_jsonpatch(
    case: tuple[dict[str, Any], Extras, Policy],
) -> None:
    document, _, policy = case
    before = copy.deepcopy(document)
    result = evaluate(document, policy=policy, resolver=resolver())
    assert apply_patch(document, result.patch) == result.fixed
    assert jsonpatch.apply_patch(document, [op.to_json() for op in result.patch]) == result.fixed
    assert document == before


@SETTINGS
@given(documents(fixable=False))
def test_fix_touches_only_rule_owned_paths_and_unrelated_fields_survive(
    case: tuple[dict[str, Any], Extras, Policy],
) -> None:
    document, extras, policy = case
    result = evaluate(document, policy=policy, resolver=resolver())
    for op in result.patch:
        assert any(pattern.fullmatch(op.path) for pattern in OWNED), f"{op.op} {op.path} is not rule-owned"
        if op.path.count("/") == 2 and op.path.startswith("/spec/configPatches/"):
            assert op.op == "add"
            assert op.value["applyTo"] == "HTTP_ROUTE"
    for path, value in extras.items():
        assert lookup(result.fixed, path) == value
    kept = [
        p for p in document["spec"]["configPatches"] if p.get("applyTo") in ("LISTENER", "NETWORK_FILTER")
    ]
    fixed_kept = [
        p for p in result.fixed["spec"]["configPatches"] if p.get("applyTo") in ("LISTENER", "NETWORK_FILTER")
    ]
    assert kept == fixed_kept


@SETTINGS
@given(st.lists(st.sampled_from(UNRELATED_PATCHES), max_size=4), st.sampled_from(sorted(POLICIES)))
def test_a_filter_without_ext_proc_content_is_unchanged(patches: list[dict[str, Any]], profile: str) -> None:
    document = build(Shape())
    document["spec"]["configPatches"] = copy.deepcopy(patches)
    before = copy.deepcopy(document)
    result = evaluate(document, policy=POLICIES[profile], resolver=resolver())
    assert not result.applicable
    assert result.findings == ()
    assert result.patch == ()
    assert result.fixed == before


PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"


@st.composite
def other_ext_proc_patches(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Another ext_proc user's HTTP_FILTER patch (body-based routing, an activator), maybe with a route."""
    name = draw(st.sampled_from(("envoy.filters.http.ext_proc.bbr", "envoy.filters.http.activator.ext_proc")))
    cluster = draw(st.sampled_from(("outbound|9004||body-based-router.default.svc.cluster.local", "no-op")))
    config: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
        "failure_mode_allow": draw(st.booleans()),
        "allow_mode_override": draw(st.booleans()),
    }
    mode = draw(modes())
    if mode is not None:
        config["processing_mode"] = mode
    patches: list[dict[str, Any]] = [
        {
            "applyTo": "HTTP_FILTER",
            "match": {
                "listener": {
                    "filterChain": {"filter": {"name": "envoy.filters.network.http_connection_manager"}}
                }
            },
            "patch": {
                "operation": draw(st.sampled_from(("INSERT_FIRST", "INSERT_BEFORE", "ADD", "REPLACE"))),
                "value": {"name": name, "typed_config": config},
            },
        }
    ]
    if draw(st.booleans()):
        override: dict[str, Any] = {"processing_mode": draw(modes()) or {"request_header_mode": "SEND"}}
        patches.append(
            {
                "applyTo": "HTTP_ROUTE",
                "patch": {
                    "operation": "MERGE",
                    "value": {
                        "typed_per_filter_config": {
                            name: {
                                "@type": PER_ROUTE,
                                "overrides": override,
                            }
                        }
                    },
                },
            }
        )
    return patches


@SETTINGS
@given(documents(fixable=False), st.lists(other_ext_proc_patches(), min_size=1, max_size=2), st.data())
def test_another_users_ext_proc_patches_never_change(
    case: tuple[dict[str, Any], Extras, Policy], others: list[list[dict[str, Any]]], data: st.DataObject
) -> None:
    document, _, policy = case
    patches = document["spec"]["configPatches"]
    planted: list[dict[str, Any]] = []
    for group in others:
        for patch in group:
            patches.insert(data.draw(st.integers(0, len(patches))), patch)
            planted.append(copy.deepcopy(patch))
    result = evaluate(document, policy=policy, resolver=resolver())
    fixed_patches = result.fixed["spec"]["configPatches"]
    for patch in planted:
        assert patch in fixed_patches, "another ext_proc user's patch was changed"
    for op in result.patch:
        tokens = split_pointer(op.path)
        if tokens[:2] == ["spec", "configPatches"] and len(tokens) > 2 and tokens[2].isdigit():
            index = int(tokens[2])
            if index < len(patches):
                assert patches[index] not in planted, f"{op.op} {op.path} touches another user's patch"


@SETTINGS
@given(documents(fixable=False), st.sampled_from(("other", "nonsense")))
def test_a_filter_marked_other_or_undecided_is_never_changed(
    case: tuple[dict[str, Any], Extras, Policy], role: str
) -> None:
    document, _, policy = case
    document["metadata"].setdefault("annotations", {})["extproc-guard.io/role"] = role
    result = evaluate(document, policy=policy, resolver=resolver())
    assert result.patch == ()
    assert result.fixed == document


@SETTINGS
@given(documents(fixable=False))
def test_checking_only_the_rules_with_a_fix_gives_the_same_patch_and_fixable_findings(
    case: tuple[dict[str, Any], Extras, Policy],
) -> None:
    document, _, policy = case
    full = evaluate(document, policy=policy, resolver=resolver())
    fixing = evaluate(document, policy=policy, resolver=resolver(), fixing_only=True)
    fixable_rules = {rule.id for rule in RULES if rule.fix is not fix_nothing}
    assert fixing.patch == full.patch
    assert fixing.fixed == full.fixed
    assert fixing.findings == tuple(f for f in full.findings if f.rule in fixable_rules)
    assert fixing.remaining == tuple(f for f in full.remaining if f.rule in fixable_rules)
