"""The doctor: name the cause of a broken ext_proc path from Envoy's own counters.

Every cause we know leaves a distinct signature in Envoy's admin stats (measured on Envoy 1.40, see the
design's "Failure signatures" table). `diagnose` reads the counters of one window (one snapshot since Envoy
started, or the delta of two), matches every signature, and ranks the matches by how strongly the evidence
fits. Each cause names the rule that prevents it, the counters that prove it, and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from policies.doctor_filter import Profile
from policies.doctor_stats import ClustersView, EnvoyStats

DEFAULT_EPP_CLUSTER = "epp-cluster"

_EXT_PROC_STAT = re.compile(r"^http\.(?P<hcm>.+?)\.ext_proc\.(?:(?P<filter>.+)\.)?(?P<counter>[a-z0-9_]+)$")
_HCM_REQUESTS = re.compile(r"^http\.(?P<hcm>.+)\.downstream_rq_total$")
_CLUSTER_MEMBERS = re.compile(r"^cluster\.(?P<cluster>.+)\.membership_total$")
# HTTP connection managers that never carry gateway traffic: Envoy's admin, its internal async client,
# and the Istio proxy's own health, agent and Prometheus listeners.
_SIDE_HCMS = re.compile(r"^(admin|async-client|agent)$|(^|_)150(00|20|21|90)$|^inbound_0\.0\.0\.0_150\d\d$")
_EXT_PROC_COUNTERS = frozenset(
    {
        "streams_started",
        "streams_failed",
        "streams_closed",
        "stream_msgs_sent",
        "stream_msgs_received",
        "failure_mode_allowed",
        "message_timeouts",
        "immediate_responses_sent",
        "spurious_msgs_received",
        "server_half_closed",
    }
)


class Verdict(StrEnum):
    HEALTHY = "healthy"
    BROKEN = "broken"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DoctorSettings:
    """What the caller knows about the path: the EPP cluster's name, the profile, the gateway's HCM."""

    epp_cluster: str = DEFAULT_EPP_CLUSTER
    profile: Profile = Profile.HEADERS_EPP
    stat_prefix: str | None = None


Evidence = Mapping[str, int | str]


@dataclass(frozen=True, slots=True)
class Cause:
    """One explanation of the failure; `score` (0..1) says how well the counters fit it."""

    rule: str | None
    cause: str
    evidence: Evidence
    fix: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "cause": self.cause, "evidence": dict(self.evidence), "fix": self.fix}


@dataclass(frozen=True, slots=True)
class Diagnosis:
    verdict: Verdict
    summary: str
    causes: tuple[Cause, ...] = ()
    evidence: Evidence = field(default_factory=lambda: MappingProxyType({}))
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "causes": [cause.to_json() for cause in self.causes]}


@dataclass(frozen=True, slots=True)
class _Counter:
    """A summed counter with the stat names (and values) that make it up."""

    total: int
    parts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class _Window:
    """The counters of one window, grouped by what they describe."""

    stats: EnvoyStats
    settings: DoctorSettings
    ext_proc_names: Mapping[str, tuple[str, ...]]  # counter -> full stat names
    request_hcms: tuple[str, ...]
    cluster_found: bool
    clusters: tuple[str, ...]

    def ext_proc(self, counter: str) -> _Counter:
        names = self.ext_proc_names.get(counter, ())
        return _Counter(sum(self.stats.get(n) for n in names), {n: self.stats.get(n) for n in names})

    @property
    def has_ext_proc(self) -> bool:
        return bool(self.ext_proc_names)

    def gateway(self, stat: str) -> _Counter:
        """A stat of the gateway's connection managers (``downstream_rq_total``, ``downstream_rq_5xx``)."""
        names = [f"http.{hcm}.{stat}" for hcm in self.request_hcms]
        return _Counter(sum(self.stats.get(n) for n in names), {n: self.stats.get(n) for n in names})

    @property
    def requests(self) -> _Counter:
        return self.gateway("downstream_rq_total")

    def cluster_stat(self, stat: str) -> tuple[str, int]:
        name = f"cluster.{self.settings.epp_cluster}.{stat}"
        return name, self.stats.get(name)


def _read_window(stats: EnvoyStats, settings: DoctorSettings) -> _Window:
    ext_proc: dict[str, list[str]] = {}
    hcms_with_ext_proc: set[str] = set()
    all_hcms: set[str] = set()
    clusters: list[str] = []
    for name in stats:
        match = _EXT_PROC_STAT.match(name)
        if match and match["counter"] in _EXT_PROC_COUNTERS:
            hcm = match["hcm"]
            if settings.stat_prefix is None or hcm == settings.stat_prefix:
                ext_proc.setdefault(match["counter"], []).append(name)
                hcms_with_ext_proc.add(hcm)
            continue
        match = _HCM_REQUESTS.match(name)
        if match:
            all_hcms.add(match["hcm"])
            continue
        match = _CLUSTER_MEMBERS.match(name)
        if match:
            clusters.append(match["cluster"])
    if settings.stat_prefix is not None:
        request_hcms = {settings.stat_prefix} & all_hcms
    elif hcms_with_ext_proc:
        request_hcms = hcms_with_ext_proc & all_hcms
    else:
        request_hcms = {hcm for hcm in all_hcms if not _SIDE_HCMS.search(hcm)}
    cluster_found = stats.has(f"cluster.{settings.epp_cluster}.membership_total") or stats.has(
        f"cluster.{settings.epp_cluster}.upstream_rq_total"
    )
    return _Window(
        stats=stats,
        settings=settings,
        ext_proc_names=MappingProxyType({k: tuple(sorted(v)) for k, v in ext_proc.items()}),
        request_hcms=tuple(sorted(request_hcms)),
        cluster_found=cluster_found,
        clusters=tuple(sorted(clusters)),
    )


class _EvidenceBuilder:
    """Collects the counters that prove a cause, by their full Envoy names."""

    def __init__(self, window: _Window, clusters: ClustersView | None) -> None:
        self._window = window
        self._clusters = clusters
        self._items: dict[str, int | str] = {}

    def ext_proc(self, *counters: str) -> _EvidenceBuilder:
        for counter in counters:
            self._items.update(self._window.ext_proc(counter).parts)
        return self

    def requests(self, *stats: str) -> _EvidenceBuilder:
        for stat in ("downstream_rq_total", *stats):
            self._items.update(self._window.gateway(stat).parts)
        return self

    def cluster(self, *stats: str) -> _EvidenceBuilder:
        for stat in stats:
            name, value = self._window.cluster_stat(stat)
            self._items[name] = value
        return self

    def hosts(self, *stats: str) -> _EvidenceBuilder:
        if self._clusters is None:
            return self
        cluster = self._window.settings.epp_cluster
        for host in self._clusters.hosts_of(cluster):
            for stat in stats:
                self._items[f"{cluster}::{host.address}::{stat}"] = host.values.get(stat, 0)
            if host.health_flags:
                self._items[f"{cluster}::{host.address}::health_flags"] = host.health_flags
        return self

    def fact(self, key: str, value: int | str) -> _EvidenceBuilder:
        self._items[key] = value
        return self

    def build(self) -> Evidence:
        return MappingProxyType(dict(self._items))


def _pinned_addresses(window: _Window, clusters: ClustersView | None) -> str:
    if clusters is None:
        return "the pinned address"
    addresses = [host.address for host in clusters.hosts_of(window.settings.epp_cluster)]
    return ", ".join(addresses) if addresses else "the pinned address"


def diagnose(
    stats: EnvoyStats, *, settings: DoctorSettings, clusters: ClustersView | None = None
) -> Diagnosis:
    """Match the window's counters against every known signature; rank the causes, best first."""
    window = _read_window(stats, settings)
    evidence = _EvidenceFactory(window, clusters)
    started = window.ext_proc("streams_started").total
    failed = window.ext_proc("streams_failed").total
    requests = window.requests.total
    notes: list[str] = []
    if not window.cluster_found:
        known = [name for name in window.clusters if "epp" in name.lower()] or list(window.clusters)
        notes.append(
            f"no cluster named {settings.epp_cluster!r} in the stats"
            f" (clusters: {', '.join(known[:8]) or 'none'}); pass --epp-cluster or --filter to name it"
        )
    causes = sorted(
        _match_signatures(window, evidence, clusters),
        key=lambda cause: cause.score,
        reverse=True,
    )
    if causes:
        top = causes[0]
        count = f"{len(causes)} causes, best first" if len(causes) > 1 else "1 cause"
        summary = f"broken ({count})"
        return Diagnosis(Verdict.BROKEN, summary, tuple(causes), top.evidence, tuple(notes))
    if started == 0 and requests == 0:
        summary = "unknown: no requests reached the gateway in this window; send traffic and look again"
        return Diagnosis(
            Verdict.UNKNOWN,
            summary,
            (),
            evidence.new().requests().ext_proc("streams_started").build(),
            tuple(notes),
        )
    if started > 0 and failed == 0:
        healthy = (
            evidence.new()
            .requests()
            .ext_proc("streams_started", "streams_failed", "stream_msgs_sent", "stream_msgs_received")
            .cluster("upstream_rq_total", "upstream_cx_total")
        )
        for name, value in _upstream_traffic(window):
            healthy.fact(name, value)
        if requests > started:
            notes.append(
                f"{requests - started} of {requests} requests did not start an ext_proc stream"
                " (routes without the per-route override?)"
            )
        summary = f"healthy: {started} ext_proc streams started, none failed, for {requests} requests"
        return Diagnosis(Verdict.HEALTHY, summary, (), healthy.build(), tuple(notes))
    summary = "unknown: the counters match no known signature"
    base = evidence.new().requests().ext_proc("streams_started", "streams_failed").build()
    return Diagnosis(Verdict.UNKNOWN, summary, (), base, tuple(notes))


def _upstream_traffic(window: _Window, stat: str = "upstream_rq_total") -> list[tuple[str, int]]:
    """Clusters other than the EPP's with a non-zero `stat` in the window (the model-server pool)."""
    result = []
    for cluster in window.clusters:
        if cluster == window.settings.epp_cluster:
            continue
        name = f"cluster.{cluster}.{stat}"
        if window.stats.get(name) > 0:
            result.append((name, window.stats.get(name)))
    return result


@dataclass(frozen=True, slots=True)
class _EvidenceFactory:
    window: _Window
    clusters: ClustersView | None

    def new(self) -> _EvidenceBuilder:
        return _EvidenceBuilder(self.window, self.clusters)


def _match_signatures(
    window: _Window, evidence: _EvidenceFactory, clusters: ClustersView | None
) -> list[Cause]:
    settings = window.settings
    cluster = settings.epp_cluster
    started = window.ext_proc("streams_started").total
    failed = window.ext_proc("streams_failed").total
    timeouts = window.ext_proc("message_timeouts").total
    allowed = window.ext_proc("failure_mode_allowed").total
    sent = window.ext_proc("stream_msgs_sent").total
    requests = window.requests.total
    _, protocol_errors = window.cluster_stat("upstream_cx_protocol_error")
    _, connect_fails = window.cluster_stat("upstream_cx_connect_fail")
    _, connect_timeouts = window.cluster_stat("upstream_cx_connect_timeout")
    _, cx_total = window.cluster_stat("upstream_cx_total")
    _, rq_503 = window.cluster_stat("upstream_rq_503")
    _, ssl_errors = window.cluster_stat("ssl.connection_error")
    _, remote_resets = window.cluster_stat("upstream_cx_destroy_remote_with_active_rq")
    stream_trouble = failed + allowed
    causes: list[Cause] = []
    root_found = False

    if protocol_errors > 0:
        root_found = True
        causes.append(
            Cause(
                rule="EPX005",
                cause=(
                    f"the EPP cluster {cluster!r} speaks HTTP/1.1 to a gRPC server:"
                    f" {protocol_errors} upstream protocol errors while the cluster counts requests;"
                    " the EPP never sees a call"
                ),
                evidence=evidence.new()
                .cluster("upstream_cx_protocol_error", "upstream_rq_total", "upstream_cx_total")
                .ext_proc("streams_started", "streams_failed", "failure_mode_allowed")
                .build(),
                fix=(
                    "add HTTP/2 to the EPP cluster: typed_extension_protocol_options"
                    " envoy.extensions.upstreams.http.v3.HttpProtocolOptions with"
                    " explicit_http_config.http2_protocol_options: {}"
                ),
                score=0.95 if stream_trouble > 0 else 0.7,
            )
        )

    if ssl_errors > 0:
        root_found = True
        causes.append(
            Cause(
                rule="EPX010",
                cause=(
                    f"the EPP cluster {cluster!r} starts TLS but the EPP answers in plaintext:"
                    f" {ssl_errors} TLS connection errors"
                ),
                evidence=evidence.new()
                .cluster("ssl.connection_error", "upstream_cx_total")
                .ext_proc("streams_started", "streams_failed")
                .build(),
                fix="remove the cluster's transport_socket (the headers-epp profile speaks plaintext h2c)",
                score=0.9 if stream_trouble > 0 else 0.7,
            )
        )

    unreachable = connect_fails + connect_timeouts
    if unreachable > 0 and protocol_errors == 0:
        root_found = True
        where = _pinned_addresses(window, clusters)
        if allowed > 0:
            causes.append(
                Cause(
                    rule="EPX009",
                    cause=(
                        f"failure_mode_allow: true hides an unreachable EPP: {allowed} requests passed"
                        f" ext_proc without a pick while {unreachable} connects to {where} failed"
                    ),
                    evidence=evidence.new()
                    .ext_proc("failure_mode_allowed", "streams_started", "streams_failed")
                    .cluster("upstream_cx_connect_fail", "upstream_cx_connect_timeout")
                    .hosts("cx_connect_fail")
                    .build(),
                    fix=(
                        "set failure_mode_allow: false so a broken EPP shows as 5xx, then bring the EPP"
                        f" back at {where} (or re-pin the cluster to the Service's live ClusterIP)"
                    ),
                    score=0.95,
                )
            )
        causes.append(
            Cause(
                rule="EPX006",
                cause=(
                    f"nothing accepts connections at the EPP cluster's pinned address {where}:"
                    f" {unreachable} connects failed (EPP down, or the Service's ClusterIP changed)"
                ),
                evidence=evidence.new()
                .cluster("upstream_cx_connect_fail", "upstream_cx_connect_timeout", "upstream_cx_total")
                .ext_proc("streams_started", "streams_failed")
                .hosts("cx_connect_fail", "cx_total")
                .build(),
                fix=(
                    "pin the cluster's STATIC address to the EPP Service's live ClusterIP and port"
                    " (`extproc-guard fix --service NS/NAME=IP:PORT`), and check the EPP pods are ready"
                ),
                score=0.4 if ssl_errors > 0 else (0.9 if failed > 0 else 0.6) if allowed == 0 else 0.6,
            )
        )

    plaintext_to_tls = (
        failed > 0
        and cx_total > 0
        and protocol_errors == 0
        and unreachable == 0
        and ssl_errors == 0
        and (rq_503 > 0 or remote_resets > 0)
    )
    if plaintext_to_tls:
        root_found = True
        tls_fix = (
            "add an UpstreamTlsContext transport_socket to the EPP cluster (the GIE EPP serves TLS;"
            " Istio uses tls SIMPLE with insecureSkipVerify)"
        )
        causes.append(
            Cause(
                rule="EPX010",
                cause=(
                    f"the EPP cluster {cluster!r} speaks plaintext to an EPP that serves TLS:"
                    f" connections open ({cx_total}) and close before any answer ({rq_503} upstream 503s),"
                    " no protocol error"
                ),
                evidence=evidence.new()
                .cluster(
                    "upstream_rq_503",
                    "upstream_cx_total",
                    "upstream_cx_destroy_remote_with_active_rq",
                    "upstream_cx_protocol_error",
                )
                .ext_proc("streams_started", "streams_failed")
                .build(),
                fix=tls_fix,
                score=0.85 if settings.profile is Profile.GIE_EPP or rq_503 >= failed else 0.7,
            )
        )

    if timeouts > 0:
        root_found = True
        if settings.profile is Profile.GIE_EPP:
            fix = (
                "set request_body_mode: FULL_DUPLEX_STREAMED with request_trailer_mode: SEND (global and"
                " per-route override): the GIE EPP answers request headers only after the body"
            )
        else:
            fix = (
                "use an EPP that decides on request headers with body mode NONE, or, for the GIE EPP, set"
                " request_body_mode: FULL_DUPLEX_STREAMED with request_trailer_mode: SEND"
            )
        causes.append(
            Cause(
                rule="EPX013",
                cause=(
                    f"the EPP did not answer within message_timeout on {timeouts} of {started} streams:"
                    " it waits for a request body that body mode NONE never sends"
                ),
                evidence=evidence.new()
                .ext_proc("message_timeouts", "streams_started", "stream_msgs_sent", "stream_msgs_received")
                .requests()
                .build(),
                fix=fix,
                score=0.9 if timeouts * 2 >= started else 0.6,
            )
        )

    if allowed > 0 and not any(cause.rule == "EPX009" for cause in causes):
        causes.append(
            Cause(
                rule="EPX009",
                cause=(
                    f"failure_mode_allow: true let {allowed} requests pass a failing ext_proc stream"
                    " without a pick"
                ),
                evidence=evidence.new().ext_proc("failure_mode_allowed", "streams_failed").build(),
                fix="set failure_mode_allow: false so a broken EPP shows as 5xx instead of unpicked traffic",
                score=0.5 if root_found else 0.9,
            )
        )
        root_found = True

    clean_streams = started > 0 and failed == 0 and timeouts == 0 and allowed == 0
    if clean_streams and settings.profile is Profile.HEADERS_EPP and sent >= 2 * started:
        causes.append(
            Cause(
                rule="EPX011",
                cause=(
                    f"each ext_proc stream sends {sent / started:g} messages ({sent} for {started} streams):"
                    " a processing_mode leaves fields unset, so Envoy's default SEND applies to response"
                    " headers too"
                ),
                evidence=evidence.new()
                .ext_proc("stream_msgs_sent", "streams_started", "stream_msgs_received")
                .build(),
                fix=(
                    "write every processing_mode field explicitly in the per-route override"
                    " (request_header_mode SEND, response_header_mode SKIP, body modes NONE, trailers SKIP)"
                ),
                score=0.8 if sent == 2 * started else 0.65,
            )
        )

    if started == 0 and requests > 0:
        no_filter = not window.has_ext_proc
        evidence_items = (
            evidence.new()
            .requests("downstream_rq_5xx")
            .ext_proc("streams_started")
            .fact("ext_proc counters in the stats", "none" if no_filter else "present")
        )
        override = Cause(
            rule="EPX004",
            cause=(
                f"{requests} requests reached the gateway and none started an ext_proc stream: global"
                " request_header_mode SKIP with no per-route override that sets SEND"
            ),
            evidence=evidence_items.build(),
            fix=(
                "add an HTTP_ROUTE MERGE patch with ExtProcPerRoute overrides.processing_mode"
                " request_header_mode: SEND, request_body_mode: NONE (all fields explicit)"
            ),
            score=0.6 if no_filter else 0.85,
        )
        missing = Cause(
            rule="EPX012",
            cause=(
                f"{requests} requests reached the gateway and Envoy has no ext_proc filter at all: the"
                " REPLACE patch found no envoy.filters.http.ext_proc to replace"
            ),
            evidence=evidence_items.build(),
            fix=(
                "make sure the gateway has an ext_proc filter to replace (InferencePool attached and"
                " ENABLE_GATEWAY_API_INFERENCE_EXTENSION on), or insert the filter instead of replacing it"
            ),
            score=0.85 if no_filter else 0.3,
        )
        causes.extend([override, missing] if not no_filter else [missing, override])

    immediate = window.ext_proc("immediate_responses_sent").total
    epp_immediate = max(immediate - failed - timeouts, 0)
    if epp_immediate > 0:
        root_found = True
        causes.append(
            Cause(
                rule=None,
                cause=(
                    f"the EPP answered {epp_immediate} of {started} streams itself with an immediate response"
                    " instead of a pick (no ready endpoint in its pool?)"
                ),
                evidence=evidence.new()
                .ext_proc("immediate_responses_sent", "streams_started", "streams_failed", "message_timeouts")
                .requests("downstream_rq_5xx")
                .build(),
                fix=(
                    "read the EPP's log for the reason; check that the InferencePool's model-server pods are"
                    " ready and that the EPP can scrape their metrics"
                ),
                score=0.7 if epp_immediate * 2 >= started else 0.4,
            )
        )

    five_xx = window.gateway("downstream_rq_5xx").total
    clean = started > 0 and failed == 0 and timeouts == 0 and allowed == 0 and epp_immediate == 0
    if clean and five_xx > 0 and five_xx * 2 >= requests:
        root_found = True
        upstream = evidence.new().requests("downstream_rq_5xx").ext_proc("streams_started", "streams_failed")
        for name, value in _upstream_traffic(window, "upstream_cx_connect_fail"):
            upstream.fact(name, value)
        causes.append(
            Cause(
                rule=None,
                cause=(
                    f"ext_proc streams succeed but {five_xx} of {requests} requests fail after the pick:"
                    " the picked endpoint is unreachable, or the route ignores the EPP's header"
                ),
                evidence=upstream.build(),
                fix=(
                    "check that the pool cluster is ORIGINAL_DST reading x-gateway-destination-endpoint and"
                    " that the endpoints the EPP picks accept connections"
                ),
                score=0.5,
            )
        )

    if failed > 0 and not root_found:
        generic = evidence.new().ext_proc("streams_started", "streams_failed")
        if window.cluster_found:
            generic.cluster("upstream_rq_total", "upstream_cx_total")
            detail = "show no known cause"
        else:
            detail = f"are not in the stats (no cluster named {cluster!r})"
        causes.append(
            Cause(
                rule=None,
                cause=f"{failed} of {started} ext_proc streams failed; the EPP cluster's counters {detail}",
                evidence=generic.build(),
                fix=(
                    "name the EPP cluster (--epp-cluster or --filter) so its counters can be read, and read"
                    " the EPP's own log"
                ),
                score=0.3,
            )
        )
    return causes
