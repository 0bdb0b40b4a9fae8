"""The renderer matches `listener.filterChain.name` and `filter.name` as Istio does, so a match of the wrong
shape renders as a patch that applies to nothing (reported in `Rendering.skipped`), never silently applied."""

from __future__ import annotations

from typing import Any

import pytest

from policies.render import RenderOptions, render_gateway

HCM = "envoy.filters.network.http_connection_manager"
EXT_PROC = "envoy.filters.http.ext_proc"
ROUTER = "envoy.filters.http.router"
OPTIONS = RenderOptions()


def envoy_filter(listener: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "f", "namespace": "ns"},
        "spec": {
            "configPatches": [
                {
                    "applyTo": "HTTP_FILTER",
                    "match": {"context": "GATEWAY", "listener": listener},
                    "patch": {"operation": "INSERT_FIRST", "value": {"name": "added"}},
                }
            ]
        },
    }


def names(rendering: Any) -> list[str]:
    listener = rendering.bootstrap["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return [item["name"] for item in manager["http_filters"]]


def test_the_shape_an_old_fix_wrote_applies_to_nothing() -> None:
    """`filterChain.name` naming the connection manager, the sub-filter without `filter.name`."""
    listener = {"filterChain": {"name": HCM, "filter": {"subFilter": {"name": ROUTER}}}}
    rendering = render_gateway(envoy_filter(listener), options=OPTIONS)
    assert "added" not in names(rendering)
    assert len(rendering.skipped) == 1
    reason = str(rendering.skipped[0])
    assert "applies to nothing" in reason
    assert repr(HCM) in reason


@pytest.mark.parametrize(
    ("listener", "applies"),
    [
        ({"filterChain": {"filter": {"name": HCM}}}, True),
        ({"filterChain": {"filter": {"name": "envoy.http_connection_manager"}}}, True),
        ({"filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy"}}}, False),
        ({"filterChain": {"name": "", "filter": {"name": HCM}}}, True),
        ({"filterChain": {"name": "https-443", "filter": {"name": HCM}}}, False),
        ({"filter_chain": {"name": HCM}}, False),
        ({}, True),
    ],
    ids=["hcm", "deprecated-hcm-name", "tcp-proxy", "empty-chain-name", "other-chain", "snake-case", "none"],
)
def test_filter_chain_and_network_filter_names_must_match(listener: dict[str, Any], applies: bool) -> None:
    rendering = render_gateway(envoy_filter(listener), options=OPTIONS)
    assert (names(rendering)[0] == "added") is applies
    assert bool(rendering.skipped) is not applies
