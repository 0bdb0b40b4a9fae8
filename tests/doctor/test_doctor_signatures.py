"""The signatures beyond the first table, on admin text recorded from a real Envoy 1.40 (record.py):
circuit-breaker overflow on the EPP cluster, an EPP answering out of turn, fail-open hiding a dead EPP in
Istio's InferencePool gateway; and the EPP cluster read from Istio-native configuration (the per-route
override names it), from a config dump or an EnvoyFilter, offline and from a live admin endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from policies.doctor.configdump import is_config_dump, read_config_dump_facts
from policies.doctor.diagnosis import DoctorSettings, Verdict, diagnose
from policies.doctor.filter import read_filter_facts
from policies.doctor.stats import EnvoyStats, parse_clusters, parse_stats
from policies.profile import ProfileName
from policies.spelling import camel_case
from tests.doctor.loopback import serving
from tests.doctor.runner import run_doctor

DATA = Path(__file__).parent / "data"
ISTIO_EPP = "outbound|9002||gaie-epp.llm-d.svc.cluster.local"


def recorded(case: str) -> tuple[EnvoyStats, DoctorSettings]:
    meta = json.loads((DATA / f"{case}.meta.json").read_text())
    profile = ProfileName(meta["profile"]) if meta.get("profile") else ProfileName.HEADERS_EPP
    settings = DoctorSettings(epp_cluster=meta["epp_cluster"], profile=profile)
    return parse_stats((DATA / f"{case}.stats.txt").read_text()), settings


def diagnosed(case: str) -> Any:
    stats, settings = recorded(case)
    clusters = parse_clusters((DATA / f"{case}.clusters.txt").read_text())
    return diagnose(stats, settings=settings, clusters=clusters)


@pytest.mark.parametrize(
    ("case", "verdict", "first_rule", "says"),
    [
        ("epp-cluster-overflow", "broken", None, "circuit breakers"),
        ("epp-answers-out-of-turn", "broken", None, "out of turn"),
        ("fail-open-hides-dead-epp", "broken", "EPX009", "hides a dead EPP"),
        ("istio-native-healthy", "healthy", None, ""),
    ],
    ids=lambda value: value if isinstance(value, str) and "-" in value else None,
)
def test_each_new_recording_names_its_cause_first(
    case: str, verdict: str, first_rule: str | None, says: str
) -> None:
    diagnosis = diagnosed(case)
    assert diagnosis.verdict == Verdict(verdict)
    if verdict == "broken":
        assert diagnosis.causes[0].rule == first_rule
        assert says in diagnosis.causes[0].cause


def test_overflow_is_not_mistaken_for_a_tls_mismatch_and_shows_the_refused_streams() -> None:
    diagnosis = diagnosed("epp-cluster-overflow")
    assert [cause.rule for cause in diagnosis.causes] == [None]
    evidence = diagnosis.causes[0].evidence
    refused = ("upstream_rq_pending_overflow", "upstream_rq_active_overflow")  # which one depends on timing
    assert sum(int(evidence[f"cluster.epp-cluster.{stat}"]) for stat in refused) == 4
    assert evidence["http.outbound_0.0.0.0_80.ext_proc.streams_failed"] == 4
    assert "max_requests" in diagnosis.causes[0].fix


def test_envoys_answers_to_out_of_turn_messages_are_not_blamed_on_the_epp_or_the_pick() -> None:
    diagnosis = diagnosed("epp-answers-out-of-turn")
    assert (
        len(diagnosis.causes) == 1
    )  # not "the EPP answered with an immediate response", not "after the pick"
    assert diagnosis.causes[0].evidence["http.outbound_0.0.0.0_80.ext_proc.spurious_msgs_received"] == 5


def test_fail_open_with_traffic_flowing_ranks_above_the_empty_epp_cluster_it_hides() -> None:
    diagnosis = diagnosed("fail-open-hides-dead-epp")
    assert [cause.rule for cause in diagnosis.causes] == ["EPX009", None]
    first, second = diagnosis.causes
    assert first.evidence["http.outbound_0.0.0.0_80.downstream_rq_2xx"] == 5
    assert first.evidence["http.outbound_0.0.0.0_80.ext_proc.failure_mode_allowed"] == 5
    assert "no healthy endpoint" in second.cause
    assert second.evidence[f"cluster.{ISTIO_EPP}.upstream_cx_none_healthy"] == 5


def test_fail_open_that_does_not_keep_traffic_flowing_keeps_its_old_diagnosis() -> None:
    stats = parse_stats((DATA / "failure-mode-allow-epp-down.stats.txt").read_text())
    diagnosis = diagnose(stats, settings=DoctorSettings())
    assert [cause.rule for cause in diagnosis.causes] == ["EPX009", "EPX006"]
    assert "hides an unreachable EPP" in diagnosis.causes[0].cause


# ---- the EPP cluster from Istio-native configuration


def config_dump() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DATA / "istio-native-healthy.config_dump.json").read_text())
    return document


def camel(node: Any) -> Any:
    """The same JSON with proto field names in JSON (camelCase) spelling, as `istioctl ... -o json` prints."""
    if isinstance(node, list):
        return [camel(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    keep = {"typed_per_filter_config", "typed_extension_protocol_options"}  # their keys are names, not fields
    out = {}
    for key, value in node.items():
        name = key if key.startswith("@") or "." in key or "|" in key else camel_case(key)
        out[name] = {k: camel(v) for k, v in value.items()} if key in keep else camel(value)
    return out


@pytest.mark.parametrize("spelling", ["snake", "camel"])
def test_a_config_dump_names_the_epp_cluster_of_the_route_override_not_the_placeholder(spelling: str) -> None:
    dump = config_dump() if spelling == "snake" else camel(config_dump())
    assert is_config_dump(dump)
    facts = read_config_dump_facts(dump)
    assert facts is not None
    assert facts.cluster_name == ISTIO_EPP
    assert facts.route_override is True
    assert facts.request_body_mode == "FULL_DUPLEX_STREAMED"
    assert facts.failure_mode_allow is True
    assert facts.profile is ProfileName.GIE_EPP


def test_a_config_dump_without_ext_proc_gives_no_facts() -> None:
    dump = config_dump()
    for config in dump["configs"]:
        config.pop("static_listeners", None)
        config.pop("dynamic_listeners", None)
    assert read_config_dump_facts(dump) is None
    assert not is_config_dump({"kind": "EnvoyFilter"})


def test_an_envoyfilter_that_merges_an_override_into_istios_route_names_its_cluster() -> None:
    document = yaml.safe_load(
        """
        apiVersion: networking.istio.io/v1alpha3
        kind: EnvoyFilter
        metadata: {name: epp-route-override, namespace: llm-d}
        spec:
          configPatches:
          - applyTo: HTTP_ROUTE
            match: {context: GATEWAY}
            patch:
              operation: MERGE
              value:
                typedPerFilterConfig:
                  envoy.filters.http.ext_proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides:
                      grpcService:
                        envoyGrpc: {clusterName: "outbound|9002||gaie-epp.llm-d.svc.cluster.local"}
                      processingMode: {requestHeaderMode: SEND, requestBodyMode: FULL_DUPLEX_STREAMED}
        """
    )
    facts = read_filter_facts(document)
    assert facts is not None
    assert (facts.cluster_name, facts.route_override, facts.profile) == (ISTIO_EPP, True, ProfileName.GIE_EPP)


def test_the_filter_flag_takes_a_config_dump(tmp_path: Path) -> None:
    argv = ["--stats", str(DATA / "istio-native-healthy.stats.txt")]
    run = run_doctor([*argv, "--filter", str(DATA / "istio-native-healthy.config_dump.json")])
    assert run.code == 0, run.stdout
    assert f"(epp cluster '{ISTIO_EPP}', profile gie-epp)" in run.stdout


class _Admin:
    """A stand-in admin endpoint serving a recording; `config_dump` None answers 404 there."""

    def __init__(self, case: str, *, config_dump: str | None) -> None:
        self.texts = {
            "stats": (DATA / f"{case}.stats.txt").read_text(),
            "clusters": (DATA / f"{case}.clusters.txt").read_text(),
        }
        if config_dump is not None:
            self.texts["config_dump"] = config_dump
        self.reads: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        endpoint = request.path.strip("/")
        self.reads.append(endpoint)
        if endpoint not in self.texts:
            raise web.HTTPNotFound()
        return web.Response(text=self.texts[endpoint])


@contextlib.asynccontextmanager
async def _serve(admin: _Admin) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/{endpoint}", admin.handle)
    async with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


async def test_live_the_doctor_reads_the_config_dump_when_the_stats_have_no_cluster_of_the_default_name() -> (
    None
):
    admin = _Admin("fail-open-hides-dead-epp", config_dump=json.dumps(config_dump()))
    async with _serve(admin) as url:
        run = await asyncio.to_thread(run_doctor, ["--admin", url])
    assert run.code == 1
    assert admin.reads == ["stats", "clusters", "config_dump"]
    assert f"(epp cluster '{ISTIO_EPP}', profile gie-epp)" in run.stdout
    assert "1. EPX009 failure-mode-allow: failure_mode_allow (fail-open) hides a dead EPP" in run.stdout
    assert "per-route ExtProcPerRoute override" in run.stdout


async def test_live_without_a_config_dump_the_doctor_says_so_and_keeps_the_default_cluster() -> None:
    admin = _Admin("fail-open-hides-dead-epp", config_dump=None)
    async with _serve(admin) as url:
        run = await asyncio.to_thread(run_doctor, ["--admin", url])
    assert "(epp cluster 'epp-cluster'" in run.stdout
    assert "could not read the gateway's config_dump" in run.stdout
    assert "no cluster named 'epp-cluster'" in run.stdout


async def test_live_the_config_dump_is_not_read_when_the_default_cluster_is_there() -> None:
    admin = _Admin("no-http2", config_dump=json.dumps(config_dump()))
    async with _serve(admin) as url:
        run = await asyncio.to_thread(run_doctor, ["--admin", url, "-o", "json"])
    assert admin.reads == ["stats", "clusters"]
    assert json.loads(run.stdout)["causes"][0]["rule"] == "EPX005"
