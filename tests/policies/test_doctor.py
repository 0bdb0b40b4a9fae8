"""The doctor's pure analysis on admin text recorded from a real Envoy 1.40 (tests/doctor/record.py).

Every `*.stats.txt` / `*.clusters.txt` pair in tests/doctor/data was printed by a real Envoy booted from the
rendered corrected EnvoyFilter, edited for one row of the failure-signature table, after five requests.
`hand-edited-istio-gateway.*` is the `no-ext-proc-filter` recording renamed by hand to an Istio gateway's
names (connection manager `outbound_0.0.0.0_8080`, cluster `outbound|9002||gaie-epp...`) with traffic
added on the proxy's own health (15021) and agent connection managers.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

import pytest

from policies.catalog import RULE_IDS
from policies.doctor.diagnosis import DoctorSettings, Verdict, diagnose
from policies.doctor.filter import read_filter_facts
from policies.doctor.stats import (
    EnvoyStats,
    StatsFormatError,
    parse_clusters,
    parse_stats,
    subtract_stats,
)
from policies.profile import ProfileName
from tests.documents import SEED_CORRECTED

DATA = Path(__file__).parent.parent / "doctor" / "data"
ISTIO_CLUSTER = "outbound|9002||gaie-epp.llm-d.svc.cluster.local"


def load_stats(case: str) -> EnvoyStats:
    return parse_stats((DATA / f"{case}.stats.txt").read_text())


def settings_for(case: str) -> DoctorSettings:
    meta = json.loads((DATA / f"{case}.meta.json").read_text())
    return DoctorSettings(epp_cluster=meta["epp_cluster"])


def with_changes(stats: EnvoyStats, changes: dict[str, int]) -> EnvoyStats:
    values = dict(stats.values)
    for name, increment in changes.items():
        values[name] = values.get(name, 0) + increment
    return EnvoyStats(MappingProxyType(values))


RECORDED = [
    ("healthy", "healthy", None),
    ("no-http2", "broken", "EPX005"),
    ("plaintext-to-tls-epp", "broken", "EPX010"),
    ("body-none-epp-waits", "broken", "EPX013"),
    ("tls-cluster-plaintext-epp", "broken", "EPX010"),
    ("epp-has-no-endpoint", "broken", None),
    ("epp-picks-dead-endpoint", "broken", None),
    ("partial-override", "broken", "EPX011"),
    ("failure-mode-allow-epp-down", "broken", "EPX009"),
    ("no-route-override", "broken", "EPX004"),
    ("no-ext-proc-filter", "broken", "EPX012"),
    ("epp-not-listening", "broken", "EPX006"),
    ("istio-names-healthy", "healthy", None),
    ("istio-names-no-http2", "broken", "EPX005"),
]


@pytest.mark.parametrize(("case", "verdict", "first_rule"), RECORDED, ids=[row[0] for row in RECORDED])
def test_each_recorded_signature_names_its_cause_first(
    case: str, verdict: str, first_rule: str | None
) -> None:
    clusters = parse_clusters((DATA / f"{case}.clusters.txt").read_text())
    diagnosis = diagnose(load_stats(case), settings=settings_for(case), clusters=clusters)
    assert diagnosis.verdict == Verdict(verdict)
    assert (diagnosis.causes[0].rule if diagnosis.causes else None) == first_rule
    assert {cause.rule for cause in diagnosis.causes} <= {*RULE_IDS, None}


@pytest.mark.parametrize(("case", "verdict", "first_rule"), RECORDED, ids=[row[0] for row in RECORDED])
def test_stats_alone_without_clusters_give_the_same_first_cause(
    case: str, verdict: str, first_rule: str | None
) -> None:
    diagnosis = diagnose(load_stats(case), settings=settings_for(case))
    assert diagnosis.verdict == Verdict(verdict)
    assert (diagnosis.causes[0].rule if diagnosis.causes else None) == first_rule


def test_no_http2_evidence_carries_the_protocol_errors_and_the_failed_streams() -> None:
    diagnosis = diagnose(load_stats("no-http2"), settings=DoctorSettings())
    evidence = diagnosis.causes[0].evidence
    assert evidence["cluster.epp-cluster.upstream_cx_protocol_error"] == 5
    assert evidence["http.outbound_0.0.0.0_80.ext_proc.streams_failed"] == 5
    assert "http2_protocol_options" in diagnosis.causes[0].fix


def test_unreachable_epp_evidence_names_the_pinned_address_from_clusters() -> None:
    clusters = parse_clusters((DATA / "epp-not-listening.clusters.txt").read_text())
    (host,) = clusters.hosts_of("epp-cluster")
    diagnosis = diagnose(load_stats("epp-not-listening"), settings=DoctorSettings(), clusters=clusters)
    cause = diagnosis.causes[0]
    assert host.address in cause.cause
    assert cause.evidence[f"epp-cluster::{host.address}::cx_connect_fail"] == 5


def test_failure_mode_allow_ranks_above_the_unreachable_epp_it_hides() -> None:
    diagnosis = diagnose(load_stats("failure-mode-allow-epp-down"), settings=DoctorSettings())
    assert [cause.rule for cause in diagnosis.causes] == ["EPX009", "EPX006"]
    assert diagnosis.causes[0].evidence["http.outbound_0.0.0.0_80.ext_proc.failure_mode_allowed"] == 5


def test_istio_cluster_name_and_filter_stat_prefix_are_read_through() -> None:
    diagnosis = diagnose(
        load_stats("istio-names-no-http2"), settings=DoctorSettings(epp_cluster=ISTIO_CLUSTER)
    )
    evidence = diagnosis.causes[0].evidence
    assert evidence[f"cluster.{ISTIO_CLUSTER}.upstream_cx_protocol_error"] == 5
    assert evidence["http.gateway.inference_8443.ext_proc.gie.streams_failed"] == 5


def test_a_wrong_cluster_name_is_said_plainly_instead_of_guessing_a_cause() -> None:
    diagnosis = diagnose(load_stats("istio-names-no-http2"), settings=DoctorSettings())
    assert diagnosis.verdict is Verdict.BROKEN
    assert diagnosis.causes[0].rule is None
    assert any(ISTIO_CLUSTER in note for note in diagnosis.notes)


def test_healthy_path_says_so_with_streams_and_pool_traffic_as_evidence() -> None:
    diagnosis = diagnose(load_stats("healthy"), settings=DoctorSettings())
    assert diagnosis.causes == ()
    assert diagnosis.evidence["http.outbound_0.0.0.0_80.ext_proc.streams_started"] == 5
    assert diagnosis.evidence["http.outbound_0.0.0.0_80.downstream_rq_total"] == 5
    assert diagnosis.evidence["cluster.inference-pool.upstream_rq_total"] == 5


def test_istio_gateway_health_and_agent_traffic_is_not_counted_as_gateway_requests() -> None:
    stats = parse_stats((DATA / "hand-edited-istio-gateway.stats.txt").read_text())
    clusters = parse_clusters((DATA / "hand-edited-istio-gateway.clusters.txt").read_text())
    diagnosis = diagnose(stats, settings=DoctorSettings(epp_cluster=ISTIO_CLUSTER), clusters=clusters)
    assert diagnosis.causes[0].rule == "EPX012"
    assert diagnosis.causes[0].evidence == {
        "http.outbound_0.0.0.0_8080.downstream_rq_total": 5,
        "http.outbound_0.0.0.0_8080.downstream_rq_5xx": 5,
        "ext_proc counters in the stats": "none",
    }


def test_stat_prefix_setting_picks_the_connection_manager() -> None:
    stats = parse_stats((DATA / "hand-edited-istio-gateway.stats.txt").read_text())
    diagnosis = diagnose(
        stats, settings=DoctorSettings(epp_cluster=ISTIO_CLUSTER, stat_prefix="inbound_0.0.0.0_15021")
    )
    assert diagnosis.causes[0].evidence["http.inbound_0.0.0.0_15021.downstream_rq_total"] == 40


def test_the_same_snapshot_twice_is_a_window_without_traffic_so_the_verdict_is_unknown() -> None:
    stats = load_stats("no-http2")
    diagnosis = diagnose(subtract_stats(stats, stats), settings=DoctorSettings())
    assert diagnosis.verdict is Verdict.UNKNOWN
    assert diagnosis.causes == ()


def test_old_failures_do_not_mislead_a_delta_whose_window_is_healthy() -> None:
    before = load_stats("no-http2")
    after = with_changes(
        before,
        {
            "http.outbound_0.0.0.0_80.downstream_rq_total": 5,
            "http.outbound_0.0.0.0_80.ext_proc.streams_started": 5,
            "http.outbound_0.0.0.0_80.ext_proc.stream_msgs_sent": 5,
            "cluster.epp-cluster.upstream_rq_total": 5,
        },
    )
    assert diagnose(after, settings=DoctorSettings()).verdict is Verdict.BROKEN
    assert diagnose(subtract_stats(before, after), settings=DoctorSettings()).verdict is Verdict.HEALTHY


def test_a_counter_that_went_down_counts_from_zero_after_a_restart() -> None:
    before = EnvoyStats(MappingProxyType({"a": 10, "b": 3}))
    after = EnvoyStats(MappingProxyType({"a": 4, "b": 7, "c": 1}))
    assert dict(subtract_stats(before, after).values) == {"a": 4, "b": 4, "c": 1}


@pytest.mark.parametrize(
    ("profile", "expected"),
    [(ProfileName.GIE_EPP, "FULL_DUPLEX_STREAMED"), (ProfileName.HEADERS_EPP, "decides on request headers")],
    ids=["gie-epp", "headers-epp"],
)
def test_body_wait_fix_follows_the_profile(profile: ProfileName, expected: str) -> None:
    diagnosis = diagnose(load_stats("body-none-epp-waits"), settings=DoctorSettings(profile=profile))
    assert expected in diagnosis.causes[0].fix


def test_partial_override_is_not_blamed_under_the_gie_profile_that_sends_more_messages() -> None:
    diagnosis = diagnose(load_stats("partial-override"), settings=DoctorSettings(profile=ProfileName.GIE_EPP))
    assert diagnosis.verdict is Verdict.HEALTHY


def test_json_shape_is_verdict_and_causes_only() -> None:
    document = diagnose(load_stats("no-http2"), settings=DoctorSettings()).to_json()
    assert set(document) == {"verdict", "causes"}
    assert set(document["causes"][0]) == {"rule", "cause", "evidence", "fix"}
    json.dumps(document)


# ---- parsing


def test_recorded_stats_keep_counters_and_drop_histograms() -> None:
    stats = load_stats("healthy")
    assert stats.get("http.outbound_0.0.0.0_80.ext_proc.streams_started") == 5
    assert not stats.has("http.outbound_0.0.0.0_80.downstream_rq_time")


def test_json_stats_format_is_read_like_text() -> None:
    text = json.dumps(
        {"stats": [{"name": "cluster.epp-cluster.upstream_rq_total", "value": 3}, {"histograms": {}}]}
    )
    assert parse_stats(text).get("cluster.epp-cluster.upstream_rq_total") == 3


GARBAGE = [
    ("empty", ""),
    ("prose", "the gateway is broken\n"),
    ("clusters-text", (DATA / "healthy.clusters.txt").read_text()),
    ("prometheus", "# TYPE envoy_cluster_upstream_rq_total counter\nenvoy_cluster_upstream_rq_total{} 3\n"),
    ("bad-value", "cluster.epp-cluster.upstream_rq_total: lots\n"),
    ("json-without-stats", '{"config": 1}'),
    ("broken-json", '{"stats": ['),
]


@pytest.mark.parametrize("text", [row[1] for row in GARBAGE], ids=[row[0] for row in GARBAGE])
def test_garbage_is_refused_with_one_line(text: str) -> None:
    with pytest.raises(StatsFormatError) as raised:
        parse_stats(text)
    assert "\n" not in str(raised.value)


def test_clusters_text_gives_hosts_with_counters_and_health() -> None:
    clusters = parse_clusters((DATA / "istio-names-healthy.clusters.txt").read_text())
    (host,) = clusters.hosts_of(ISTIO_CLUSTER)
    assert host.address.startswith("127.0.0.1:")
    assert host.values["rq_total"] == 5
    assert host.health_flags == "healthy"


def test_clusters_text_reads_ipv6_hosts() -> None:
    text = "epp::[fd00::1]:9002::cx_connect_fail::2\nepp::[fd00::1]:9002::health_flags::healthy\n"
    (host,) = parse_clusters(text).hosts_of("epp")
    assert host.address == "[fd00::1]:9002"
    assert host.values["cx_connect_fail"] == 2


@pytest.mark.parametrize(
    "text",
    ["", "not clusters output\n", (DATA / "healthy.stats.txt").read_text()],
    ids=["empty", "prose", "stats-text"],
)
def test_clusters_garbage_is_refused(text: str) -> None:
    with pytest.raises(StatsFormatError):
        parse_clusters(text)


# ---- the EnvoyFilter


def corrected() -> dict[str, object]:
    import yaml

    document = yaml.safe_load(SEED_CORRECTED.read_text())
    assert isinstance(document, dict)
    return document


def test_filter_gives_the_epp_cluster_name_and_the_headers_profile() -> None:
    facts = read_filter_facts(corrected())
    assert facts is not None
    assert (facts.cluster_name, facts.profile, facts.request_body_mode) == (
        "epp-cluster",
        ProfileName.HEADERS_EPP,
        "NONE",
    )


def test_filter_in_camel_case_with_tls_cluster_is_the_gie_profile() -> None:
    document = {
        "kind": "EnvoyFilter",
        "metadata": {"name": "f"},
        "spec": {
            "configPatches": [
                {
                    "applyTo": "HTTP_FILTER",
                    "patch": {
                        "value": {
                            "name": "envoy.filters.http.ext_proc",
                            "typedConfig": {"grpcService": {"envoyGrpc": {"clusterName": ISTIO_CLUSTER}}},
                        }
                    },
                },
                {
                    "applyTo": "CLUSTER",
                    "patch": {"value": {"name": ISTIO_CLUSTER, "transportSocket": {"name": "tls"}}},
                },
            ]
        },
    }
    facts = read_filter_facts(document)
    assert facts is not None
    assert (facts.cluster_name, facts.profile) == (ISTIO_CLUSTER, ProfileName.GIE_EPP)


@pytest.mark.parametrize(
    "document",
    [{"kind": "Service"}, {"kind": "EnvoyFilter", "spec": {"configPatches": []}}, {"kind": "EnvoyFilter"}],
    ids=["other-kind", "no-patches", "no-spec"],
)
def test_documents_without_ext_proc_give_no_facts(document: dict[str, object]) -> None:
    assert read_filter_facts(document) is None


@pytest.mark.parametrize(
    ("case", "words", "pool_evidence"),
    [
        ("epp-has-no-endpoint", "immediate response", None),
        ("epp-picks-dead-endpoint", "fail after the pick", "cluster.inference-pool.upstream_cx_connect_fail"),
    ],
    ids=["epp-answers-503-itself", "picked-endpoint-unreachable"],
)
def test_failures_beyond_the_ext_proc_stream_are_named_without_a_rule(
    case: str, words: str, pool_evidence: str | None
) -> None:
    diagnosis = diagnose(load_stats(case), settings=DoctorSettings())
    (cause,) = diagnosis.causes
    assert cause.rule is None
    assert words in cause.cause
    assert cause.evidence["http.outbound_0.0.0.0_80.downstream_rq_5xx"] == 5
    if pool_evidence is not None:
        assert cause.evidence[pool_evidence] == 5


def test_tls_errors_rank_the_tls_mismatch_above_the_failed_connects_they_cause() -> None:
    diagnosis = diagnose(load_stats("tls-cluster-plaintext-epp"), settings=DoctorSettings())
    assert [cause.rule for cause in diagnosis.causes] == ["EPX010", "EPX006"]
    assert diagnosis.causes[0].evidence["cluster.epp-cluster.ssl.connection_error"] == 5


def test_json_stats_from_the_same_envoy_give_the_same_counters_and_verdict() -> None:
    text = load_stats("healthy")
    as_json = parse_stats((DATA / "healthy.stats.json").read_text())
    assert set(as_json.values) == set(text.values)
    gateway = [name for name in text.values if name.startswith(("http.outbound_0.0.0.0_80.", "cluster."))]
    assert {name: as_json.get(name) for name in gateway} == {name: text.get(name) for name in gateway}
    assert diagnose(as_json, settings=DoctorSettings()).verdict is Verdict.HEALTHY


@pytest.mark.parametrize(
    ("case", "rules"),
    [("no-route-override", ["EPX004"]), ("no-ext-proc-filter", ["EPX012", "EPX004"])],
    ids=["filter-installed-without-override", "filter-missing"],
)
def test_zero_ext_proc_counters_rule_out_a_missing_filter(case: str, rules: list[str]) -> None:
    diagnosis = diagnose(load_stats(case), settings=DoctorSettings())
    assert [cause.rule for cause in diagnosis.causes] == rules
