"""Each row of the failure-signature table, reproduced with a real Envoy and diagnosed by `doctor --admin`.

For every case the rig renders the corrected EnvoyFilter (edited for the case), boots Envoy, starts the EPP
variant the case needs and sends five requests; then `doctor` reads Envoy's live admin endpoint.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.doctor.rig import CASES, Case, booted_case
from tests.doctor.runner import run_doctor

pytestmark = pytest.mark.envoy

# What the client sees in each case (the table's "client sees" column); a list when the five differ
# (sorted: under concurrency which request gets through is not fixed).
CLIENT_SEES: dict[str, int | list[int]] = {
    "healthy": 200,
    "no-http2": 500,
    "plaintext-to-tls-epp": 500,
    "body-none-epp-waits": 504,
    "tls-cluster-plaintext-epp": 500,
    "epp-has-no-endpoint": 503,
    "epp-picks-dead-endpoint": 503,
    "partial-override": 200,
    "failure-mode-allow-epp-down": 503,
    "no-route-override": 503,
    "no-ext-proc-filter": 503,
    "epp-not-listening": 500,
    "istio-names-healthy": 200,
    "istio-names-no-http2": 500,
    "epp-cluster-overflow": [200, 500, 500, 500, 500],
    "istio-native-healthy": 200,
    "epp-answers-out-of-turn": 500,
    "fail-open-hides-dead-epp": 200,
}

# Causes that no rule prevents are told apart by what they say.
RULELESS_WORDS = {
    "epp-has-no-endpoint": "immediate response",
    "epp-picks-dead-endpoint": "fail after the pick",
    "epp-cluster-overflow": "circuit breakers",
    "epp-answers-out-of-turn": "out of turn",
}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_doctor_names_the_cause_of_each_live_case_first(case: Case) -> None:
    async with booted_case(case) as rig:
        argv = ["--admin", rig.admin_url, "--epp-cluster", case.epp_cluster, "-o", "json"]
        argv += ["--profile", case.profile] if case.profile else []
        run = await asyncio.to_thread(run_doctor, argv)
    sees = CLIENT_SEES[case.name]
    assert sorted(rig.statuses) == (sees if isinstance(sees, list) else [sees] * 5)
    document = json.loads(run.stdout)
    assert document["verdict"] == case.verdict
    assert (document["causes"][0]["rule"] if document["causes"] else None) == case.first_rule
    if case.name in RULELESS_WORDS:
        assert RULELESS_WORDS[case.name] in document["causes"][0]["cause"]
    assert run.code == (0 if case.verdict == "healthy" else 1)


@pytest.mark.parametrize(
    "name", ["no-http2", "plaintext-to-tls-epp"], ids=["no-http2", "plaintext-to-tls-epp"]
)
async def test_the_epp_never_sees_a_call_while_envoy_counts_requests(name: str) -> None:
    case = next(case for case in CASES if case.name == name)
    async with booted_case(case) as rig:
        rq_total = int(_stat(rig.read_admin("stats"), "cluster.epp-cluster.upstream_rq_total"))
    assert rig.epp.servicer is not None
    assert rig.epp.servicer.streams == 0
    assert rq_total == 5


async def test_doctor_reads_the_cluster_name_from_the_filter_on_a_live_istio_gateway(tmp_path: Path) -> None:
    case = next(case for case in CASES if case.name == "istio-names-no-http2")
    async with booted_case(case) as rig:
        envoy_filter = tmp_path / "filter.json"
        envoy_filter.write_text(json.dumps(rig.filter_document))
        run = await asyncio.to_thread(run_doctor, ["--admin", rig.admin_url, "--filter", str(envoy_filter)])
    assert run.code == 1
    assert "1. EPX005 epp-cluster-http2:" in run.stdout
    assert f"cluster.{case.epp_cluster}.upstream_cx_protocol_error = 5" in run.stdout


async def test_watch_on_a_live_gateway_without_new_traffic_is_unknown_not_the_old_failure() -> None:
    case = next(case for case in CASES if case.name == "no-http2")
    async with booted_case(case) as rig:
        once = await asyncio.to_thread(run_doctor, ["--admin", rig.admin_url])
        watched = await asyncio.to_thread(run_doctor, ["--admin", rig.admin_url, "--watch", "0.5"])
    assert once.code == 1
    assert watched.code == 3
    assert "verdict: unknown" in watched.stdout


def _stat(text: str, name: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return value
    raise KeyError(name)


async def test_doctor_finds_the_epp_cluster_of_a_live_istio_gateway_in_its_config_dump() -> None:
    """No --epp-cluster, no --filter: the stats have no `epp-cluster`, so the doctor reads the gateway's
    /config_dump, where the InferencePool route's override names `outbound|9002||...`."""
    case = next(case for case in CASES if case.name == "fail-open-hides-dead-epp")
    async with booted_case(case) as rig:
        run = await asyncio.to_thread(run_doctor, ["--admin", rig.admin_url])
    assert run.code == 1
    assert f"(epp cluster '{case.epp_cluster}', profile gie-epp)" in run.stdout
    assert "1. EPX009 failure-mode-allow: failure_mode_allow (fail-open) hides a dead EPP" in run.stdout
    assert f"cluster.{case.epp_cluster}.upstream_cx_none_healthy = 5" in run.stdout
