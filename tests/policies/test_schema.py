"""EPX008's parser: the quick descriptor walk never passes a value the real Envoy protos reject."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.schema import CLUSTER, EXT_PROC_PER_ROUTE, EXTERNAL_PROCESSOR, first_doubt, parse_error
from tests.policies.filters import Shape, build, respell

ROOT = Path(__file__).resolve().parents[2]
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


FRESH_PROBE = """\
import json, sys
from policies import schema
value = json.loads(sys.argv[1])
before = sorted(name for name in sys.modules if name.startswith(("envoy.", "google.protobuf")))
descriptor = schema.CLUSTER if "name" in value else schema.EXTERNAL_PROCESSOR
doubt, error = schema.first_doubt(value, descriptor), schema.parse_error(value, descriptor)
print(json.dumps({"before": before, "doubt": doubt, "error": None if error is None else list(error.path)}))
"""
HTTP2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def in_a_fresh_interpreter(value: dict[str, Any]) -> dict[str, Any]:
    """What `FRESH_PROBE` finds for `value` in a process that has loaded no proto module yet."""
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROBE, json.dumps(value)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_importing_the_parser_loads_no_proto_module() -> None:
    assert in_a_fresh_interpreter(PROCESSOR)["before"] == []


def test_parse_dict_knows_the_any_types_the_walk_has_not_met_yet() -> None:
    """The walk stops being sure at the Struct before the Any, so the Any's module is not loaded by the
    walk; ParseDict must still resolve it, as it did when every known module loaded with the parser."""
    value = {
        "name": "epp-cluster",
        "metadata": {"filter_metadata": {"team": {"owner": "a"}}},
        "typed_extension_protocol_options": HTTP2_OPTIONS,
    }
    assert parse_error(value, CLUSTER) is None  # here, where everything is loaded
    fresh = in_a_fresh_interpreter(value)
    assert fresh["doubt"] == ["metadata", "filter_metadata", "team"]  # ParseDict ran
    assert fresh["error"] is None


ANY_TYPES = {
    "http options": "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "upstream tls": "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "nested in cluster": "envoy.config.cluster.v3.Cluster.RoundRobinLbConfig",
    "struct": "google.protobuf.Struct",
    "xds typed struct": "xds.type.v3.TypedStruct",
    "udpa typed struct": "udpa.type.v1.TypedStruct",
    "core": "envoy.config.core.v3.Http2ProtocolOptions",
    "unknown": "envoy.extensions.none.v3.Nope",
}
ANY_HOSTS = {
    "cluster": lambda any_value: {"name": "c", "transport_socket": {"name": "t", "typed_config": any_value}},
    "ext_proc": lambda any_value: {"processing_request_modifier": {"name": "m", "typed_config": any_value}},
}


@pytest.mark.parametrize("host", ANY_HOSTS.values(), ids=ANY_HOSTS.keys())
@pytest.mark.parametrize("full_name", ANY_TYPES.values(), ids=ANY_TYPES.keys())
def test_an_any_type_resolves_as_it_does_once_every_known_module_is_loaded(
    full_name: str, host: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    value = host({"@type": f"type.googleapis.com/{full_name}"})
    descriptor = CLUSTER if "name" in value else EXTERNAL_PROCESSOR
    doubt, error = first_doubt(value, descriptor), parse_error(value, descriptor)
    fresh = in_a_fresh_interpreter(value)
    assert fresh["doubt"] == (None if doubt is None else list(doubt))
    assert fresh["error"] == (None if error is None else list(error.path))
