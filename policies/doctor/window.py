"""One window of Envoy counters, grouped by what they describe: the gateway, ext_proc, the EPP cluster.

Stat names depend on the configuration: ext_proc counters are `http.<hcm prefix>.ext_proc.<counter>`, or
`http.<hcm prefix>.ext_proc.<filter prefix>.<counter>` when the filter sets its own `stat_prefix`; the
HCM prefix may hold dots (`outbound_0.0.0.0_8080`); Istio names clusters `outbound|PORT||HOST`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from policies.doctor.model import DoctorSettings, Evidence
from policies.doctor.stats import ClustersView, EnvoyStats

_EXT_PROC_STAT = re.compile(r"^http\.(?P<hcm>.+?)\.ext_proc\.(?:(?P<filter>.+)\.)?(?P<counter>[a-z0-9_]+)$")
_HCM_REQUESTS = re.compile(r"^http\.(?P<hcm>.+)\.downstream_rq_total$")
_CLUSTER_MEMBERS = re.compile(r"^cluster\.(?P<cluster>.+)\.membership_total$")
# HTTP connection managers that never carry gateway traffic: Envoy's admin, its internal async client,
# and the Istio proxy's own health, agent and Prometheus listeners.
_SIDE_HCMS = re.compile(r"^(admin|async-client|agent)$|(^|_)150(00|20|21|90)$")
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


@dataclass(frozen=True, slots=True)
class Counter:
    """A counter summed over every stat that carries it, with those stats and their values."""

    total: int
    parts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Window:
    """The counters of one window and where to find each kind."""

    stats: EnvoyStats
    settings: DoctorSettings
    clusters: ClustersView | None
    ext_proc_names: Mapping[str, tuple[str, ...]]  # counter -> full stat names
    gateway_hcms: tuple[str, ...]
    cluster_found: bool
    cluster_names: tuple[str, ...]

    def _sum(self, names: tuple[str, ...] | list[str]) -> Counter:
        return Counter(sum(self.stats.get(n) for n in names), {n: self.stats.get(n) for n in names})

    def ext_proc(self, counter: str) -> Counter:
        return self._sum(self.ext_proc_names.get(counter, ()))

    @property
    def has_ext_proc(self) -> bool:
        return bool(self.ext_proc_names)

    def gateway(self, stat: str) -> Counter:
        """A stat of the gateway's connection managers (``downstream_rq_total``, ``downstream_rq_5xx``)."""
        return self._sum([f"http.{hcm}.{stat}" for hcm in self.gateway_hcms])

    def epp_cluster(self, stat: str) -> int:
        return self.stats.get(f"cluster.{self.settings.epp_cluster}.{stat}")

    def other_clusters(self, stat: str) -> list[tuple[str, int]]:
        """Clusters other than the EPP's with a non-zero `stat` (the model-server pool, typically)."""
        found = []
        for cluster in self.cluster_names:
            name = f"cluster.{cluster}.{stat}"
            if cluster != self.settings.epp_cluster and self.stats.get(name) > 0:
                found.append((name, self.stats.get(name)))
        return found

    def pinned_addresses(self) -> str:
        hosts = self.clusters.hosts_of(self.settings.epp_cluster) if self.clusters else ()
        return ", ".join(host.address for host in hosts) or "the pinned address"

    def evidence(self) -> EvidenceBuilder:
        return EvidenceBuilder(self)


def read_window(
    stats: EnvoyStats, *, settings: DoctorSettings, clusters: ClustersView | None = None
) -> Window:
    ext_proc: dict[str, list[str]] = {}
    hcms_with_ext_proc: set[str] = set()
    all_hcms: set[str] = set()
    cluster_names: list[str] = []
    for name in stats:
        match = _EXT_PROC_STAT.match(name)
        if match and match["counter"] in _EXT_PROC_COUNTERS:
            if settings.stat_prefix is None or match["hcm"] == settings.stat_prefix:
                ext_proc.setdefault(match["counter"], []).append(name)
                hcms_with_ext_proc.add(match["hcm"])
        elif match := _HCM_REQUESTS.match(name):
            all_hcms.add(match["hcm"])
        elif match := _CLUSTER_MEMBERS.match(name):
            cluster_names.append(match["cluster"])
    if settings.stat_prefix is not None:
        gateway_hcms = {settings.stat_prefix} & all_hcms
    elif hcms_with_ext_proc:
        gateway_hcms = hcms_with_ext_proc & all_hcms
    else:
        gateway_hcms = {hcm for hcm in all_hcms if not _SIDE_HCMS.search(hcm)}
    prefix = f"cluster.{settings.epp_cluster}."
    return Window(
        stats=stats,
        settings=settings,
        clusters=clusters,
        ext_proc_names=MappingProxyType({k: tuple(sorted(v)) for k, v in ext_proc.items()}),
        gateway_hcms=tuple(sorted(gateway_hcms)),
        cluster_found=stats.has(prefix + "membership_total") or stats.has(prefix + "upstream_rq_total"),
        cluster_names=tuple(sorted(cluster_names)),
    )


@dataclass(frozen=True, slots=True)
class Counts:
    """The numbers the signatures compare, read once from a window."""

    requests: int
    five_xx: int
    started: int
    failed: int
    timeouts: int
    allowed: int
    sent: int
    epp_immediate: int  # immediate responses the EPP sent itself (not Envoy's own error replies)
    protocol_errors: int
    unreachable: int  # connect failures and connect timeouts
    cx_total: int
    rq_503: int
    ssl_errors: int
    remote_resets: int
    two_xx: int = 0  # requests the gateway answered 2xx
    spurious: int = 0  # answers the EPP sent that Envoy had not asked for
    overflow: int = 0  # ext_proc streams the EPP cluster's circuit breakers refused
    no_healthy: int = 0  # ext_proc streams that found no healthy endpoint in the EPP cluster

    @property
    def clean_streams(self) -> bool:
        return (
            self.started > 0
            and self.failed == 0
            and self.timeouts == 0
            and self.allowed == 0
            and self.spurious == 0
        )


def count_window(window: Window) -> Counts:
    failed = window.ext_proc("streams_failed").total
    timeouts = window.ext_proc("message_timeouts").total
    immediate = window.ext_proc("immediate_responses_sent").total
    spurious = window.ext_proc("spurious_msgs_received").total
    return Counts(
        requests=window.gateway("downstream_rq_total").total,
        five_xx=window.gateway("downstream_rq_5xx").total,
        started=window.ext_proc("streams_started").total,
        failed=failed,
        timeouts=timeouts,
        allowed=window.ext_proc("failure_mode_allowed").total,
        sent=window.ext_proc("stream_msgs_sent").total,
        epp_immediate=max(immediate - failed - timeouts - spurious, 0),
        protocol_errors=window.epp_cluster("upstream_cx_protocol_error"),
        unreachable=window.epp_cluster("upstream_cx_connect_fail")
        + window.epp_cluster("upstream_cx_connect_timeout"),
        cx_total=window.epp_cluster("upstream_cx_total"),
        rq_503=window.epp_cluster("upstream_rq_503"),
        ssl_errors=window.epp_cluster("ssl.connection_error"),
        remote_resets=window.epp_cluster("upstream_cx_destroy_remote_with_active_rq"),
        two_xx=window.gateway("downstream_rq_2xx").total,
        spurious=spurious,
        overflow=window.epp_cluster("upstream_rq_pending_overflow")
        + window.epp_cluster("upstream_rq_active_overflow"),
        no_healthy=window.epp_cluster("upstream_cx_none_healthy"),
    )


class EvidenceBuilder:
    """Collects the counters that prove a cause, under their full Envoy names."""

    def __init__(self, window: Window) -> None:
        self._window = window
        self._items: dict[str, int | str] = {}

    def ext_proc(self, *counters: str) -> EvidenceBuilder:
        for counter in counters:
            self._items.update(self._window.ext_proc(counter).parts)
        return self

    def requests(self, *stats: str) -> EvidenceBuilder:
        for stat in ("downstream_rq_total", *stats):
            self._items.update(self._window.gateway(stat).parts)
        return self

    def cluster(self, *stats: str) -> EvidenceBuilder:
        for stat in stats:
            self._items[f"cluster.{self._window.settings.epp_cluster}.{stat}"] = self._window.epp_cluster(
                stat
            )
        return self

    def other_clusters(self, stat: str) -> EvidenceBuilder:
        self._items.update(self._window.other_clusters(stat))
        return self

    def hosts(self, *stats: str) -> EvidenceBuilder:
        """Per-host counters of the EPP cluster from /clusters, when it was read."""
        if self._window.clusters is None:
            return self
        cluster = self._window.settings.epp_cluster
        for host in self._window.clusters.hosts_of(cluster):
            for stat in stats:
                self._items[f"{cluster}::{host.address}::{stat}"] = host.values.get(stat, 0)
            if host.health_flags:
                self._items[f"{cluster}::{host.address}::health_flags"] = host.health_flags
        return self

    def fact(self, key: str, value: int | str) -> EvidenceBuilder:
        self._items[key] = value
        return self

    def build(self) -> Evidence:
        return MappingProxyType(dict(self._items))
