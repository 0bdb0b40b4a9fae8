"""The EnvoyFilter views, the ext_proc locator and the two Envoy JSON spellings."""

from __future__ import annotations

import pytest

from policies.model import DocumentError, read_envoy_filter
from policies.pieces import locate_ext_proc
from policies.spelling import Spelling, camel_case, choose_key, detect_spelling, find_key, get_field
from tests.policies.filters import EXT_PROC, NAMESPACE, SPELLINGS, Shape, build


@pytest.mark.parametrize("spelling", SPELLINGS, ids=SPELLINGS)
def test_locator_finds_the_filter_cluster_and_route_override_in_either_spelling(spelling: str) -> None:
    envoy_filter = read_envoy_filter(build(Shape(spelling=spelling)))
    assert envoy_filter is not None
    pieces = locate_ext_proc(envoy_filter, EXT_PROC)
    assert pieces is not None
    assert pieces.spelling is Spelling(spelling)
    (piece,) = pieces.filters
    assert piece.cluster_name == "epp-cluster"
    assert piece.patch.index == 0
    assert [c.name for c in pieces.epp_clusters] == ["epp-cluster"]
    (endpoint,) = pieces.epp_clusters[0].endpoints
    assert (endpoint.address, endpoint.port) == ("10.96.45.12", 9002)
    (route,) = pieces.routes
    per_filter = "typedPerFilterConfig" if spelling == "camel" else "typed_per_filter_config"
    assert route.path == f"/spec/configPatches/2/patch/value/{per_filter}/{EXT_PROC}"
    assert [site.is_global for site in pieces.mode_sites] == [True, False]


def test_views_keep_the_document_itself() -> None:
    document = build(Shape())
    envoy_filter = read_envoy_filter(document)
    assert envoy_filter is not None
    assert envoy_filter.raw is document
    assert (envoy_filter.namespace, envoy_filter.name) == (NAMESPACE, "epp-ext-proc")
    assert envoy_filter.api_version == "networking.istio.io/v1alpha3"
    patch = envoy_filter.config_patches[0]
    assert patch.raw is document["spec"]["configPatches"][0]
    assert (patch.apply_to, patch.operation, patch.context) == ("HTTP_FILTER", "REPLACE", "GATEWAY")
    assert patch.sub_filter_name == EXT_PROC


def test_other_kinds_have_no_view_and_non_mappings_are_an_error() -> None:
    assert read_envoy_filter({"kind": "Service", "apiVersion": "v1"}) is None
    with pytest.raises(DocumentError):
        read_envoy_filter(["not", "a", "mapping"])


def test_field_lookup_accepts_both_spellings() -> None:
    assert get_field({"request_body_mode": "NONE"}, "request_body_mode") == "NONE"
    assert get_field({"requestBodyMode": "NONE"}, "request_body_mode") == "NONE"
    assert find_key({"typedConfig": {}}, "typed_config") == "typedConfig"
    assert find_key({}, "typed_config") is None
    assert camel_case("http2_protocol_options") == "http2ProtocolOptions"


@pytest.mark.parametrize(
    ("mapping", "fallback", "expected"),
    [
        ({"requestHeaderMode": "SKIP"}, Spelling.SNAKE, "requestBodyMode"),
        ({"request_header_mode": "SKIP"}, Spelling.CAMEL, "request_body_mode"),
        ({"name": "x"}, Spelling.CAMEL, "requestBodyMode"),
        ({"requestBodyMode": "STREAMED"}, Spelling.SNAKE, "requestBodyMode"),
    ],
    ids=["camel-siblings", "snake-siblings", "no-hint-uses-document", "existing-key"],
)
def test_a_new_field_takes_the_spelling_of_its_siblings_then_of_the_document(
    mapping: dict[str, str], fallback: Spelling, expected: str
) -> None:
    assert choose_key(mapping, "request_body_mode", fallback) == expected


def test_document_spelling_ignores_names_and_type_urls() -> None:
    values = [{"name": "envoy.filters.http.ext_proc", "@type": "x", "typedConfig": {}}]
    assert detect_spelling(values) is Spelling.CAMEL
    assert detect_spelling([{"envoy.filters.http.ext_proc": {"overrides": {}}}]) is Spelling.SNAKE
