"""Properties of the doctor's parsing and analysis over generated counters."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given
from hypothesis import strategies as st

from policies.doctor.diagnosis import DoctorSettings, Verdict, diagnose
from policies.doctor.stats import EnvoyStats, parse_stats, subtract_stats
from policies.profile import ProfileName

EXT_PROC = (
    "streams_started",
    "streams_failed",
    "streams_closed",
    "stream_msgs_sent",
    "stream_msgs_received",
    "failure_mode_allowed",
    "message_timeouts",
    "immediate_responses_sent",
)
CLUSTER = (
    "upstream_rq_total",
    "upstream_cx_total",
    "upstream_cx_protocol_error",
    "upstream_cx_connect_fail",
    "upstream_cx_connect_timeout",
    "upstream_rq_503",
    "ssl.connection_error",
    "upstream_cx_destroy_remote_with_active_rq",
    "membership_total",
)
GATEWAY = ("downstream_rq_total", "downstream_rq_5xx")

hcm_prefixes = st.sampled_from(["outbound_0.0.0.0_80", "gateway.inference_8443", "ingress_http"])
filter_prefixes = st.sampled_from(["", "gie.", "epp.picker."])
cluster_names = st.sampled_from(["epp-cluster", "outbound|9002||gaie-epp.ns.svc.cluster.local"])
counts = st.integers(min_value=0, max_value=50)


@st.composite
def envoy_windows(draw: st.DrawFn) -> tuple[EnvoyStats, DoctorSettings]:
    hcm, filter_prefix, cluster = draw(hcm_prefixes), draw(filter_prefixes), draw(cluster_names)
    values: dict[str, int] = {}
    for counter in EXT_PROC:
        if draw(st.booleans()):
            values[f"http.{hcm}.ext_proc.{filter_prefix}{counter}"] = draw(counts)
    for stat in GATEWAY:
        values[f"http.{hcm}.{stat}"] = draw(counts)
    for stat in CLUSTER:
        if draw(st.booleans()):
            values[f"cluster.{cluster}.{stat}"] = draw(counts)
    values["http.admin.downstream_rq_total"] = draw(counts)
    profile = draw(st.sampled_from(list(ProfileName)))
    return EnvoyStats(MappingProxyType(values)), DoctorSettings(epp_cluster=cluster, profile=profile)


@given(envoy_windows())
def test_any_counters_give_a_verdict_that_agrees_with_the_causes(
    window: tuple[EnvoyStats, DoctorSettings],
) -> None:
    stats, settings = window
    diagnosis = diagnose(stats, settings=settings)
    assert (diagnosis.verdict is Verdict.BROKEN) == bool(diagnosis.causes)
    scores = [cause.score for cause in diagnosis.causes]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < score <= 1 for score in scores)
    for cause in diagnosis.causes:
        assert cause.evidence, "every cause carries the counters that prove it"
        assert cause.fix


@given(envoy_windows())
def test_a_window_without_requests_or_streams_is_never_called_healthy(
    window: tuple[EnvoyStats, DoctorSettings],
) -> None:
    stats, settings = window
    quiet = EnvoyStats(MappingProxyType(dict.fromkeys(stats.values, 0)))
    assert diagnose(quiet, settings=settings).verdict is Verdict.UNKNOWN


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.|-]{0,40}", fullmatch=True), st.integers(0, 2**53)))
def test_stats_text_round_trips_through_the_parser(values: dict[str, int]) -> None:
    text = "".join(f"{name}: {value}\n" for name, value in values.items())
    if values:
        assert dict(parse_stats(text).values) == values


@given(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 100)),
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 100)),
)
def test_deltas_are_never_negative_and_equal_growth_when_counters_grow(
    before: dict[str, int], after: dict[str, int]
) -> None:
    delta = subtract_stats(EnvoyStats(MappingProxyType(before)), EnvoyStats(MappingProxyType(after)))
    assert set(delta.values) == set(after)
    for name, value in delta.values.items():
        assert value >= 0
        if after[name] >= before.get(name, 0):
            assert value == after[name] - before.get(name, 0)
