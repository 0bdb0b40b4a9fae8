"""The EPP benchmark's gateway: the mode every picker is measured in (a buffer filter ahead of ext_proc,
request bodies STREAMED and sent without waiting for the headers' answer), checked as a config and on a
real Envoy in front of the real EPP and simulator; and its command line's choice of peers."""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.epp_bench import BODY, bench_gateway, http_manager, parse_peers, start_envoy
from cli.demo.gateway import INFERENCE_PATH
from epp.children import Child, free_port, start_child, stop_child, wait_for_port
from tests.envoy_rig import EnvoyStartError, find_envoy
from tests.epp.stack import CLI
from tests.polling import wait_until

EXT_PROC = "envoy.filters.http.ext_proc"


def routes(bootstrap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    hosts = http_manager(bootstrap)["route_config"]["virtual_hosts"]
    return {route["name"]: route for host in hosts for route in host["routes"]}


def test_the_buffer_filter_runs_just_before_ext_proc_which_sends_bodies_without_waiting() -> None:
    bootstrap = bench_gateway(picker_port=9002, listen_port=0, admin_port=0)
    filters = http_manager(bootstrap)["http_filters"]
    names = [f["name"] for f in filters]
    assert names == ["envoy.filters.http.buffer", EXT_PROC, "envoy.filters.http.router"]
    assert filters[1]["typed_config"]["send_body_without_waiting_for_header_response"] is True


def test_the_inference_route_streams_bodies_and_the_baseline_route_skips_ext_proc() -> None:
    by_name = routes(bench_gateway(picker_port=9002, listen_port=0, admin_port=0))
    mode = by_name["inference"]["typed_per_filter_config"][EXT_PROC]["overrides"]["processing_mode"]
    assert (mode["request_header_mode"], mode["request_body_mode"]) == ("SEND", "STREAMED")
    assert by_name["baseline"]["typed_per_filter_config"][EXT_PROC] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
        "disabled": True,
    }
    assert by_name["baseline"]["route"]["prefix_rewrite"] == "/"


@pytest.mark.parametrize(
    ("text", "peers"),
    [("lwepp,minimal", ("lwepp", "minimal")), ("minimal", ("minimal",)), ("none", ())],
    ids=["both", "one", "none"],
)
def test_peers_are_named_on_the_command_line(text: str, peers: tuple[str, ...]) -> None:
    assert parse_peers(text) == peers


def test_an_unknown_peer_is_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="unknown peer"):
        parse_peers("lwepp,grpcio")


def post(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=BODY, headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        return response.status, response.headers.get("x-served-by", "")


def first_pick(url: str) -> tuple[int, str]:
    """The first answer once the EPP picks: until its first scrape of the simulator it has no endpoint it
    can vouch for and answers 503 (bounded wait)."""
    answers: list[tuple[int, str]] = []

    def picked() -> bool:
        try:
            answers.append(post(url))
        except urllib.error.HTTPError as error:
            if error.code != 503:
                raise
            return False
        return True

    wait_until(picked, "the EPP's first pick (after its first scrape)", timeout=30)
    return answers[-1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Child]]:
    """The benchmark's Envoy in front of the real EPP and one simulator: the gateway URL, the
    simulator's port, the EPP."""
    try:
        find_envoy()
    except EnvoyStartError as error:
        pytest.skip(str(error))
    tmp: Path = tmp_path_factory.mktemp("epp-bench-gateway")
    children: list[Child] = []
    try:
        sim_port, epp_port = free_port(), free_port()
        sim = start_child("sim", [*CLI, "sim-model", "--port", str(sim_port), "--name", "sim"], log_dir=tmp)
        children.append(sim)
        argv = [*CLI, "epp", "--host", "127.0.0.1", "--port", str(epp_port)]
        epp = start_child("epp", [*argv, "--endpoints", f"127.0.0.1:{sim_port}"], log_dir=tmp)
        children.append(epp)
        wait_for_port(sim, sim_port)
        wait_for_port(epp, epp_port)
        envoy, url = start_envoy("epp", picker_port=epp_port, workdir=tmp)
        children.append(envoy)
        yield url, sim_port, epp
    finally:
        for child in reversed(children):
            stop_child(child)


@pytest.mark.envoy
def test_the_epp_routes_a_request_whose_body_is_streamed_after_its_headers(
    gateway: tuple[str, int, Child],
) -> None:
    url, _, epp = gateway
    assert first_pick(url + INFERENCE_PATH) == (200, "sim")
    deadline = time.monotonic() + 10
    while " messages=request_headers,request_body " not in epp.log_text():  # the EPP's log is batched
        assert time.monotonic() < deadline, f"no stream with both messages in the EPP's log:\n{epp.tail()}"
        time.sleep(0.1)


@pytest.mark.envoy
def test_the_baseline_route_reaches_the_simulator_the_client_names(gateway: tuple[str, int, Child]) -> None:
    url, sim_port, _ = gateway
    destination = {"x-gateway-destination-endpoint": f"127.0.0.1:{sim_port}"}
    assert post(url + "/baseline" + INFERENCE_PATH, destination) == (200, "sim")
