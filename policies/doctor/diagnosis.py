"""The doctor: name the cause of a broken ext_proc path from Envoy's own counters.

Every cause we know leaves a distinct signature in Envoy's admin stats (measured on Envoy 1.40, see the
design's "Failure signatures" table). `diagnose` reads the counters of one window (one snapshot since Envoy
started, or the delta of two), matches every signature, and ranks the matches by how strongly the evidence
fits. Each cause names the rule that prevents it, the counters that prove it, and the fix.

    stats = subtract_stats(parse_stats(before_text), parse_stats(after_text))
    diagnosis = diagnose(stats, settings=DoctorSettings(epp_cluster="epp-cluster"))
    diagnosis.verdict, diagnosis.causes[0].rule   # Verdict.BROKEN, "EPX005"
"""

from __future__ import annotations

from policies.doctor.model import DEFAULT_EPP_CLUSTER, Cause, Diagnosis, DoctorSettings, Evidence, Verdict
from policies.doctor.signatures import match_signatures
from policies.doctor.stats import ClustersView, EnvoyStats
from policies.doctor.window import Counts, Window, count_window, read_window

__all__ = [
    "DEFAULT_EPP_CLUSTER",
    "Cause",
    "Diagnosis",
    "DoctorSettings",
    "Evidence",
    "Verdict",
    "diagnose",
]


def diagnose(
    stats: EnvoyStats, *, settings: DoctorSettings, clusters: ClustersView | None = None
) -> Diagnosis:
    """Match the window's counters against every known signature; rank the causes, best first."""
    window = read_window(stats, settings=settings, clusters=clusters)
    counts = count_window(window)
    notes = _describe_gaps(window, counts)
    causes = match_signatures(window, counts)
    if causes:
        count = f"{len(causes)} causes, best first" if len(causes) > 1 else "1 cause"
        return Diagnosis(Verdict.BROKEN, f"broken ({count})", tuple(causes), causes[0].evidence, notes)
    if counts.started == 0 and counts.requests == 0:
        summary = "unknown: no requests reached the gateway in this window; send traffic and look again"
        evidence = window.evidence().requests().ext_proc("streams_started").build()
        return Diagnosis(Verdict.UNKNOWN, summary, (), evidence, notes)
    if counts.started > 0 and counts.failed == 0:
        return _healthy(window, counts, notes)
    summary = "unknown: the counters match no known signature"
    evidence = window.evidence().requests().ext_proc("streams_started", "streams_failed").build()
    return Diagnosis(Verdict.UNKNOWN, summary, (), evidence, notes)


def _healthy(window: Window, counts: Counts, notes: tuple[str, ...]) -> Diagnosis:
    evidence = (
        window.evidence()
        .requests("downstream_rq_5xx")
        .ext_proc("streams_started", "streams_failed", "stream_msgs_sent", "stream_msgs_received")
        .cluster("upstream_rq_total", "upstream_cx_total")
        .other_clusters("upstream_rq_total")
        .build()
    )
    if counts.requests > counts.started:
        skipped = counts.requests - counts.started
        notes += (
            f"{skipped} of {counts.requests} requests did not start an ext_proc stream"
            " (routes without the per-route override?)",
        )
    summary = (
        f"healthy: {counts.started} ext_proc streams started, none failed, for {counts.requests} requests"
    )
    return Diagnosis(Verdict.HEALTHY, summary, (), evidence, notes)


def _describe_gaps(window: Window, counts: Counts) -> tuple[str, ...]:
    if window.cluster_found:
        return ()
    names = window.cluster_names
    candidates = [name for name in names if "epp" in name.lower()] or list(names)
    listed = ", ".join(candidates[:8]) or "none"
    return (
        f"no cluster named {window.settings.epp_cluster!r} in the stats (clusters: {listed});"
        " pass --epp-cluster or --filter to name it",
    )
