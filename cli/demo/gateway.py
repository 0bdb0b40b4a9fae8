"""The local gateway of the demo and benchmarks: the incident's EnvoyFilter, fixed, rendered for loopback.

The operator's filter (`demo_filter.yaml`) is evaluated by the policy engine with the EPP Service resolved to
a local EPP (127.0.0.1:PORT), so the STATIC epp-cluster of the fix points there; the fixed filter is then
rendered into an Envoy bootstrap with an inference route (ext_proc on, per-route override SEND) and a
baseline route (ext_proc off: the client names the endpoint itself).
"""

from __future__ import annotations

import copy
import importlib.resources
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from policies import Evaluation, ServiceAddress, ServiceRef, StaticResolver, default_policy, evaluate
from policies.render import RenderOptions, RouteSpec, render_gateway

EPP_SERVICE = ServiceRef("llm-d-inference-scheduler", "gaie-inference-scheduling-epp")
EPP_CLUSTER = "epp-cluster"
STAT_PREFIX = "outbound_0.0.0.0_80"
EXT_PROC_STATS = f"http.{STAT_PREFIX}.ext_proc."
INFERENCE_PATH = "/v1/completions"
BASELINE_PREFIX = "/baseline"


@dataclass(frozen=True, slots=True)
class LocalGateway:
    """The fixed filter, what the engine said about the original, and the Envoy bootstrap."""

    envoy_filter: dict[str, Any]
    evaluation: Evaluation
    bootstrap: dict[str, Any]


def load_operator_text() -> str:
    """The incident's EnvoyFilter as the operator generated it, as text (with its comments)."""
    return importlib.resources.files("webhook").joinpath("demo_filter.yaml").read_text("utf-8")


def load_operator_filter() -> dict[str, Any]:
    """The incident's EnvoyFilter as the operator generated it."""
    document: dict[str, Any] = yaml.safe_load(load_operator_text())
    return document


def with_epp_port(document: Mapping[str, Any], epp_port: int) -> dict[str, Any]:
    """The filter with its EPP cluster's port set to `epp_port` (the local EPP's Service port)."""
    working = copy.deepcopy(dict(document))
    for value in _epp_clusters(working):
        for group in value["load_assignment"]["endpoints"]:
            for item in group["lb_endpoints"]:
                item["endpoint"]["address"]["socket_address"]["port_value"] = epp_port
    return working


def operator_text_for_local_epp(*, epp_port: int) -> str:
    """`load_operator_text()` with the EPP cluster's port set to `epp_port`, every comment kept.

    What an operator generating the filter for a Service on that port would have written; `check` and
    `fix` read it like any file. Raises `ValueError` if the text edit does not give that document.
    """
    text, count = re.subn(
        r"^(\s*port_value:\s*)\d+(\s*(#.*)?)$",
        lambda match: f"{match.group(1)}{epp_port}{match.group(2)}",
        load_operator_text(),
        flags=re.MULTILINE,
    )
    if count != 1 or yaml.safe_load(text) != with_epp_port(load_operator_filter(), epp_port):
        raise ValueError("the operator's filter does not have exactly one EPP cluster port to set")
    return text


def fix_for_local_epp(document: Mapping[str, Any], *, epp_port: int) -> Evaluation:
    """Run the policy engine with the EPP Service answering at 127.0.0.1:`epp_port`.

    The Service port is `epp_port` here, so the filter's cluster port is set to it first (what an operator
    generating the filter for this Service would have written).
    """
    working = with_epp_port(document, epp_port)
    return evaluate(working, policy=default_policy(), resolver=local_epp_resolver(epp_port))


def local_epp_resolver(epp_port: int) -> StaticResolver:
    """The EPP Service answering at 127.0.0.1:`epp_port`."""
    return StaticResolver({EPP_SERVICE: ServiceAddress("127.0.0.1", (epp_port,))})


def _epp_clusters(envoy_filter: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The cluster values the filter's patches add under the EPP cluster's name."""
    for entry in envoy_filter["spec"]["configPatches"]:
        value = entry.get("patch", {}).get("value", {})
        if value.get("name") == EPP_CLUSTER:
            yield value


def strip_http2(envoy_filter: Mapping[str, Any]) -> dict[str, Any]:
    """The same filter without HTTP/2 on the EPP cluster: the seed's silent failure."""
    broken = copy.deepcopy(dict(envoy_filter))
    for value in _epp_clusters(broken):
        for key in (
            "typed_extension_protocol_options",
            "typedExtensionProtocolOptions",
            "http2_protocol_options",
        ):
            value.pop(key, None)
    return broken


def render_local(
    envoy_filter: Mapping[str, Any], *, listen_port: int = 0, admin_port: int = 0
) -> dict[str, Any]:
    options = RenderOptions(
        listen_address="127.0.0.1",
        listen_port=listen_port,
        admin_port=admin_port,
        stat_prefix=STAT_PREFIX,
        routes=(
            RouteSpec("inference", "/"),
            RouteSpec("baseline", BASELINE_PREFIX, ext_proc_disabled=True),
        ),
    )
    return render_gateway(envoy_filter, options=options).bootstrap


def build_local_gateway(
    *, epp_port: int, http2: bool = True, listen_port: int = 0, admin_port: int = 0
) -> LocalGateway:
    evaluation = fix_for_local_epp(load_operator_filter(), epp_port=epp_port)
    fixed = evaluation.fixed if http2 else strip_http2(evaluation.fixed)
    return LocalGateway(
        fixed, evaluation, render_local(fixed, listen_port=listen_port, admin_port=admin_port)
    )
