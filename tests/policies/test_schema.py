"""EPX008's parser: the quick descriptor walk never passes a value the real Envoy protos reject."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.schema import CLUSTER, EXT_PROC_PER_ROUTE, EXTERNAL_PROCESSOR, first_doubt, parse_error
from tests.policies.filters import Shape, build, respell

DOCUMENT = build(Shape(tls=True))
PROCESSOR = {k: v for k, v in DOCUMENT["spec"]["configPatches"][0]["patch"]["value"]["typed_config"].items()}
PROCESSOR.pop("@type")
CLUSTER_VALUE = DOCUMENT["spec"]["configPatches"][1]["patch"]["value"]
PER_ROUTE = dict(
    DOCUMENT["spec"]["configPatches"][2]["patch"]["value"]["typed_per_filter_config"].popitem()[1]
)
PER_ROUTE.pop("@type")
MESSAGES = {
    "ExternalProcessor": (PROCESSOR, EXTERNAL_PROCESSOR, ext_proc_pb2.ExternalProcessor),
    "Cluster": (CLUSTER_VALUE, CLUSTER, cluster_pb2.Cluster),
    "ExtProcPerRoute": (PER_ROUTE, EXT_PROC_PER_ROUTE, ext_proc_pb2.ExtProcPerRoute),
}


def parses(value: Any, message: Any) -> bool:
    try:
        json_format.ParseDict(value, message())
    except Exception:  # any failure to parse counts, as in the engine
        return False
    return True


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in leaf_paths(v, (*prefix, k))] or [prefix]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in leaf_paths(v, (*prefix, i))] or [prefix]
    return [prefix]


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**33), 2**33),
    st.floats(allow_nan=False),
    st.sampled_from(["", "5s", "1.5s", "10 seconds", "SEND", "NONE", "STATIC", "x"]),
    st.builds(dict),
    st.builds(list),
    st.builds(lambda: {"unknown_field": 1}),
    st.builds(lambda: {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1s"}),
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[dict[str, Any], Any, Any]:
    name = draw(st.sampled_from(sorted(MESSAGES)))
    value, descriptor, message = MESSAGES[name]
    value = copy.deepcopy(value)
    if draw(st.booleans()):
        value = respell(value)
    for _ in range(draw(st.integers(1, 2))):
        paths = [p for p in leaf_paths(value) if p]
        path = draw(st.sampled_from(paths))
        parent = value
        for token in path[:-1]:
            parent = parent[token]
        if draw(st.booleans()) or not isinstance(parent, dict):
            parent[path[-1]] = draw(JUNK)
        else:
            parent[draw(st.sampled_from(["stat_prefix", "statPrefix", "bogus", "type", "name"]))] = draw(JUNK)
    return value, descriptor, message


@settings(max_examples=400, deadline=None)
@given(mutated())
def test_the_walk_never_passes_what_envoy_protos_reject(case: tuple[dict[str, Any], Any, Any]) -> None:
    value, descriptor, message = case
    truth = parses(value, message)
    if first_doubt(value, descriptor) is None:
        assert truth, f"the walk passed a value ParseDict rejects: {value}"
    assert (parse_error(value, descriptor) is None) is truth


@pytest.mark.parametrize("name", sorted(MESSAGES), ids=sorted(MESSAGES))
@pytest.mark.parametrize("spelling", ["snake", "camel"], ids=["snake", "camel"])
def test_valid_values_pass_the_walk_without_protobuf(name: str, spelling: str) -> None:
    value, descriptor, message = MESSAGES[name]
    value = respell(value) if spelling == "camel" else value
    assert parses(value, message)
    assert first_doubt(value, descriptor) is None


BAD = {
    "bad enum": (
        {"processing_mode": {"request_body_mode": "STREAMING"}},
        EXTERNAL_PROCESSOR,
        ("processing_mode", "request_body_mode"),
        "Invalid enum value STREAMING",
    ),
    "unknown field": (
        {"grpc_service": {"envoy_grpc": {"clustername": "x"}}},
        EXTERNAL_PROCESSOR,
        None,
        "clustername",
    ),
    "bad duration": ({"message_timeout": "5m"}, EXTERNAL_PROCESSOR, ("message_timeout",), "Duration"),
    "negative port": (
        {
            "name": "c",
            "load_assignment": {
                "cluster_name": "c",
                "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"port_value": -1}}}}]}
                ],
            },
        },
        CLUSTER,
        (
            "load_assignment",
            "endpoints",
            0,
            "lb_endpoints",
            0,
            "endpoint",
            "address",
            "socket_address",
            "port_value",
        ),
        "out of range",
    ),
    "unknown Any type": (
        {
            "name": "c",
            "transport_socket": {"name": "t", "typed_config": {"@type": "type.googleapis.com/x.Y"}},
        },
        CLUSTER,
        ("transport_socket", "typed_config", "@type"),
        "x.Y",
    ),
    "two discovery types": (
        {"name": "c", "type": "STATIC", "cluster_type": {"name": "x"}},
        CLUSTER,
        None,
        "oneof",
    ),
}


@pytest.mark.parametrize(("value", "descriptor", "path", "reason"), BAD.values(), ids=BAD.keys())
def test_parse_error_names_the_field_path_and_the_reason(
    value: dict[str, Any], descriptor: Any, path: tuple[Any, ...] | None, reason: str
) -> None:
    error = parse_error(value, descriptor)
    assert error is not None
    if path is not None:
        assert error.path == path
    assert reason in error.reason


def test_field_path_reads_like_a_proto_path() -> None:
    error = parse_error(BAD["negative port"][0], CLUSTER)
    assert error is not None
    assert error.field_path == (
        "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value"
    )


def test_any_types_from_other_envoy_packages_resolve_on_demand() -> None:
    raw_buffer = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
    value = {"name": "c", "transport_socket": {"name": "raw", "typed_config": {"@type": raw_buffer}}}
    assert parse_error(value, CLUSTER) is None
    value["transport_socket"]["typed_config"]["@type"] = "type.googleapis.com/envoy.extensions.none.v3.Nope"
    error = parse_error(value, CLUSTER)
    assert error is not None
    assert error.path == ("transport_socket", "typed_config", "@type")
