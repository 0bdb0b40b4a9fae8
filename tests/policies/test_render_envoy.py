"""Rendered bootstraps checked by the real Envoy: `envoy --mode validate`, then a booted gateway."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policies.render.gateway import EXT_PROC_FILTER, RenderOptions, RouteSpec, SocketAddress, render_gateway
from tests.documents import load_document
from tests.envoy_rig import EnvoyRig, EnvoyStartError, find_envoy, run_envoy
from tests.policies.bootstraps import http_filters

pytestmark = pytest.mark.envoy

ROUTER = "envoy.filters.http.router"
VALIDATE_TIMEOUT = 120.0
HTTP_TIMEOUT = 15.0


def envoy_binary() -> str:
    try:
        return find_envoy()
    except EnvoyStartError as error:
        pytest.skip(str(error))


def validate(bootstrap: dict[str, Any], workdir: Path) -> subprocess.CompletedProcess[str]:
    config = workdir / "bootstrap.json"
    config.write_text(json.dumps(bootstrap), "utf-8")
    command = [
        envoy_binary(),
        "--mode",
        "validate",
        "-c",
        str(config),
        "--disable-hot-restart",
        "-l",
        "error",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=VALIDATE_TIMEOUT, check=False)


def loopback_options(**overrides: Any) -> RenderOptions:
    settings: dict[str, Any] = {
        "listen_address": "127.0.0.1",
        "listen_port": 0,
        "admin_port": 0,
        "routes": (RouteSpec("inference", "/"), RouteSpec("baseline", "/baseline", ext_proc_disabled=True)),
    }
    settings.update(overrides)
    return RenderOptions(**settings)


class TestValidate:
    @pytest.mark.parametrize("name", ["seed-corrected.yaml", "seed-bad.yaml"], ids=["corrected", "bad"])
    def test_the_incident_filters_render_to_config_envoy_accepts(self, name: str, tmp_path: Path) -> None:
        rendering = render_gateway(load_document(name), options=loopback_options())
        assert rendering.skipped == ()
        result = validate(rendering.bootstrap, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK" in result.stdout + result.stderr

    def test_the_corrected_filter_replaces_the_gateway_ext_proc_in_place(self) -> None:
        bootstrap = render_gateway(load_document("seed-corrected.yaml"), options=loopback_options()).bootstrap
        filters = http_filters(bootstrap)
        assert [f["name"] for f in filters] == [EXT_PROC_FILTER, ROUTER]
        assert filters[0]["typed_config"]["processing_mode"]["request_header_mode"] == "SKIP"
        assert filters[0]["typed_config"]["message_timeout"] == "5s"  # the filter's, not the placeholder's

    def test_the_bad_filter_inserts_a_second_ext_proc_right_before_the_router(self) -> None:
        bootstrap = render_gateway(load_document("seed-bad.yaml"), options=loopback_options()).bootstrap
        filters = http_filters(bootstrap)
        assert [f["name"] for f in filters] == [EXT_PROC_FILTER, EXT_PROC_FILTER, ROUTER]
        assert filters[1]["typed_config"]["processing_mode"]["request_body_mode"] == "STREAMED"
        epp = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}["epp-cluster"]
        assert epp["type"] == "STRICT_DNS"

    def test_envoy_rejects_a_rendering_with_an_invalid_value(self, tmp_path: Path) -> None:
        """Control: the validation above can fail (a bad enum in the filter's value)."""
        document = load_document("seed-corrected.yaml")
        document["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["processing_mode"][
            "request_body_mode"
        ] = "SOMETIMES"
        result = validate(render_gateway(document, options=loopback_options()).bootstrap, tmp_path)
        assert result.returncode != 0


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyRig]:
    """The corrected filter booted in Envoy; its epp-cluster points at a loopback port with no EPP."""
    envoy_binary()
    options = loopback_options(
        endpoint_overrides={"epp-cluster": (SocketAddress("127.0.0.1", closed_port()),)}
    )
    bootstrap = render_gateway(load_document("seed-corrected.yaml"), options=options).bootstrap
    with run_envoy(bootstrap, workdir=tmp_path_factory.mktemp("gateway")) as envoy:
        yield envoy


def post(port: int, path: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=b'{"model": "m", "prompt": "hi", "max_tokens": 1}',
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def static_clusters(dump: dict[str, Any]) -> dict[str, dict[str, Any]]:
    for config in dump["configs"]:
        if config["@type"].endswith("ClustersConfigDump"):
            return {c["cluster"]["name"]: c["cluster"] for c in config.get("static_clusters", [])}
    raise AssertionError("no ClustersConfigDump in /config_dump")


def loaded_http_filters(dump: dict[str, Any]) -> list[str]:
    for config in dump["configs"]:
        if config["@type"].endswith("ListenersConfigDump"):
            listener = config["static_listeners"][0]["listener"]
            manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
            return [f["name"] for f in manager["http_filters"]]
    raise AssertionError("no ListenersConfigDump in /config_dump")


class TestBootedGateway:
    def test_envoy_loaded_the_epp_cluster_with_http2(self, gateway: EnvoyRig) -> None:
        epp = static_clusters(gateway.config_dump())["epp-cluster"]
        assert epp["type"] == "STATIC"
        options = epp["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        assert "http2_protocol_options" in options["explicit_http_config"]

    def test_envoy_loaded_ext_proc_before_the_router(self, gateway: EnvoyRig) -> None:
        assert loaded_http_filters(gateway.config_dump()) == [EXT_PROC_FILTER, ROUTER]

    def test_the_stat_prefix_names_the_connection_manager_stats(self, gateway: EnvoyRig) -> None:
        assert "http.outbound_0.0.0.0_80.downstream_rq_total" in gateway.stats()

    def test_a_request_on_the_inference_route_opens_an_ext_proc_stream(self, gateway: EnvoyRig) -> None:
        before = gateway.stats()
        status = post(gateway.listener_port(), "/v1/completions")
        after = gateway.stats()
        started = RenderOptions().http_stat("ext_proc.streams_started")
        assert started == "http.outbound_0.0.0.0_80.ext_proc.streams_started"
        assert status == 500  # no EPP listens: failure_mode_allow false fails the request
        assert after.get(started, 0) - before.get(started, 0) == 1
        refused = "cluster.epp-cluster.upstream_cx_connect_fail"
        assert after.get(refused, 0) - before.get(refused, 0) >= 1

    def test_the_baseline_route_bypasses_ext_proc(self, gateway: EnvoyRig) -> None:
        before = gateway.stats()
        status = post(gateway.listener_port(), "/baseline/v1/completions")
        after = gateway.stats()
        started = "http.outbound_0.0.0.0_80.ext_proc.streams_started"
        assert after.get(started, 0) == before.get(started, 0)
        assert status == 503  # ORIGINAL_DST pool without a destination header: no host to pick
        no_host = "cluster.inference-pool.upstream_cx_none_healthy"
        assert after.get(no_host, 0) - before.get(no_host, 0) == 1


def test_the_reference_gateway_alone_never_calls_the_epp(tmp_path: Path) -> None:
    """The ext_proc placeholder is inert: with no patches, requests reach the pool with no ext_proc stream."""
    envoy_binary()
    empty = {"kind": "EnvoyFilter", "spec": {"configPatches": []}}
    bootstrap = render_gateway(empty, options=loopback_options()).bootstrap
    with run_envoy(bootstrap, workdir=tmp_path) as envoy:
        status = post(envoy.listener_port(), "/v1/completions")
        stats = envoy.stats()
    assert status == 503
    assert stats.get("http.outbound_0.0.0.0_80.ext_proc.streams_started", 0) == 0
    assert stats["cluster.inference-pool.upstream_cx_none_healthy"] == 1


def test_the_rig_reports_an_envoy_that_cannot_start(tmp_path: Path) -> None:
    """`run_envoy` raises with Envoy's own reason instead of waiting out its timeout."""
    envoy_binary()
    bootstrap = render_gateway({"kind": "EnvoyFilter"}, options=loopback_options()).bootstrap
    bootstrap["static_resources"]["clusters"][0]["type"] = "NOT_A_TYPE"
    with (
        pytest.raises(EnvoyStartError, match="NOT_A_TYPE"),
        run_envoy(bootstrap, workdir=tmp_path, ready_timeout=60),
    ):
        pass
