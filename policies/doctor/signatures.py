"""The failure signatures: one matcher per known cause, in the order the design's table lists them.

A matcher reads a window's counts and returns the causes it recognises (usually none or one), each with
the rule that prevents it, the counters that prove it, the fix and a score. Matchers later in `SIGNATURES`
see the causes already found, so a symptom (failure_mode_allow letting traffic through, streams failing for
no known reason) ranks below the root cause that explains it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from policies.doctor.model import Cause
from policies.doctor.window import Counts, Window
from policies.profile import ProfileName

Matcher = Callable[[Window, Counts, Sequence[Cause]], list[Cause]]

HTTP2_FIX = (
    "add HTTP/2 to the EPP cluster: typed_extension_protocol_options"
    " envoy.extensions.upstreams.http.v3.HttpProtocolOptions with"
    " explicit_http_config.http2_protocol_options: {}"
)
ADD_TLS_FIX = (
    "add an UpstreamTlsContext transport_socket to the EPP cluster (the GIE EPP serves TLS;"
    " Istio uses tls SIMPLE with insecureSkipVerify)"
)
REMOVE_TLS_FIX = "remove the cluster's transport_socket (the headers-epp profile's EPP speaks plaintext h2c)"
REPIN_FIX = (
    "pin the cluster's STATIC address to the EPP Service's live ClusterIP and port"
    " (`extproc-guard fix --service NS/NAME=IP:PORT`), and check the EPP pods are ready"
)
GIE_BODY_FIX = (
    "set request_body_mode: FULL_DUPLEX_STREAMED with request_trailer_mode: SEND (global and per-route"
    " override): the GIE EPP answers request headers only after the body"
)
HEADERS_BODY_FIX = (
    "use an EPP that decides on request headers with body mode NONE, or, for the GIE EPP, set"
    " request_body_mode: FULL_DUPLEX_STREAMED with request_trailer_mode: SEND"
)
OVERFLOW_FIX = (
    "raise the EPP cluster's circuit breakers (circuit_breakers.thresholds max_requests and"
    " max_pending_requests; for Istio's outbound cluster, a DestinationRule on the EPP Service with"
    " trafficPolicy.connectionPool.http.http2MaxRequests and http1MaxPendingRequests): every request in"
    " flight holds one ext_proc stream, so the limit must cover the gateway's concurrent requests"
)
SPURIOUS_FIX = (
    "make the EPP answer each message once and in order: request headers first, then each body chunk (in"
    " FULL_DUPLEX_STREAMED no streamed body before the headers answer; with body NONE no body answer at"
    " all); and make the EPP and the filter agree on the processing mode (EPX013)"
)
FAIL_OPEN_FIX = (
    "bring the EPP back (its Service has no ready endpoint, or the address does not answer: check the EPP"
    " pods and their gRPC health `readiness`); until then requests go where the cluster's fallback load"
    " balancing sends them. Set failure_mode_allow: false (InferencePool failureMode: FailClose) to see a"
    " dead EPP as 5xx instead"
)
NO_HEALTHY_FIX = (
    "check that the EPP pods are ready (the GIE EPP's gRPC health `readiness` is NOT_SERVING until it has"
    " listed its endpoints) and that the EPP Service's selector and port match them"
)


def match_no_http2(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    if counts.protocol_errors == 0:
        return []
    cause = (
        f"the EPP cluster {window.settings.epp_cluster!r} speaks HTTP/1.1 to a gRPC server:"
        f" {counts.protocol_errors} upstream protocol errors while the cluster counts requests;"
        " the EPP never sees a call"
    )
    evidence = (
        window.evidence()
        .cluster("upstream_cx_protocol_error", "upstream_rq_total", "upstream_cx_total")
        .ext_proc("streams_started", "streams_failed", "failure_mode_allowed")
        .build()
    )
    score = 0.95 if counts.failed + counts.allowed > 0 else 0.7
    return [Cause("EPX005", cause, evidence, HTTP2_FIX, score)]


def match_tls_cluster_plaintext_epp(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    if counts.ssl_errors == 0:
        return []
    cause = (
        f"the EPP cluster {window.settings.epp_cluster!r} starts TLS but the EPP answers in plaintext:"
        f" {counts.ssl_errors} TLS connection errors"
    )
    evidence = (
        window.evidence()
        .cluster("ssl.connection_error", "upstream_cx_connect_fail", "upstream_cx_total")
        .ext_proc("streams_started", "streams_failed")
        .build()
    )
    score = 0.9 if counts.failed + counts.allowed > 0 else 0.7
    return [Cause("EPX010", cause, evidence, REMOVE_TLS_FIX, score)]


def match_unreachable_epp(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    """EPP down or its pinned ClusterIP stale (EPX006); failure_mode_allow hides that (EPX009)."""
    if counts.unreachable == 0 or counts.protocol_errors > 0:
        return []
    where = window.pinned_addresses()
    causes = []
    if counts.allowed > 0 and not any(cause.rule == "EPX009" for cause in found):
        cause = (
            f"failure_mode_allow: true hides an unreachable EPP: {counts.allowed} requests passed ext_proc"
            f" without a pick while {counts.unreachable} connects to {where} failed"
        )
        evidence = (
            window.evidence()
            .ext_proc("failure_mode_allowed", "streams_started", "streams_failed")
            .cluster("upstream_cx_connect_fail", "upstream_cx_connect_timeout")
            .hosts("cx_connect_fail")
            .build()
        )
        fix = (
            "set failure_mode_allow: false so a broken EPP shows as 5xx, then bring the EPP back at"
            f" {where} (or re-pin the cluster to the Service's live ClusterIP)"
        )
        causes.append(Cause("EPX009", cause, evidence, fix, 0.95))
    cause = (
        f"nothing accepts connections at the EPP cluster's pinned address {where}: {counts.unreachable}"
        " connects failed (EPP down, or the Service's ClusterIP changed)"
    )
    evidence = (
        window.evidence()
        .cluster("upstream_cx_connect_fail", "upstream_cx_connect_timeout", "upstream_cx_total")
        .ext_proc("streams_started", "streams_failed")
        .hosts("cx_connect_fail", "cx_total")
        .build()
    )
    if counts.ssl_errors > 0:
        score = 0.4  # failed TLS handshakes count as connect failures too
    elif counts.allowed > 0:
        score = 0.6
    else:
        score = 0.9 if counts.failed > 0 else 0.6
    causes.append(Cause("EPX006", cause, evidence, REPIN_FIX, score))
    return causes


def match_plaintext_cluster_tls_epp(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    """Connections open and die before an answer, with no protocol error: the EPP expected a TLS hello."""
    if not (
        counts.failed > 0
        and counts.cx_total > 0
        and counts.protocol_errors == 0
        and counts.unreachable == 0
        and counts.ssl_errors == 0
        and counts.overflow == 0  # streams the circuit breakers refuse count as 503s too
        and counts.no_healthy == 0
        and (counts.rq_503 > 0 or counts.remote_resets > 0)
    ):
        return []
    cause = (
        f"the EPP cluster {window.settings.epp_cluster!r} speaks plaintext to an EPP that serves TLS:"
        f" connections open ({counts.cx_total}) and close before any answer ({counts.rq_503} upstream 503s),"
        " no protocol error"
    )
    evidence = (
        window.evidence()
        .cluster(
            "upstream_rq_503",
            "upstream_cx_total",
            "upstream_cx_destroy_remote_with_active_rq",
            "upstream_cx_protocol_error",
        )
        .ext_proc("streams_started", "streams_failed")
        .build()
    )
    strong = window.settings.profile is ProfileName.GIE_EPP or counts.rq_503 >= counts.failed
    return [Cause("EPX010", cause, evidence, ADD_TLS_FIX, 0.85 if strong else 0.7)]


def match_fail_open_traffic_flows(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    """Fail-open with traffic still served: nobody notices the EPP is gone (the Istio InferencePool shape,
    where the pool cluster's override_host policy falls back to round robin without a pick)."""
    if counts.allowed == 0 or counts.two_xx == 0:
        return []
    if counts.no_healthy:
        why = f"the EPP cluster had no healthy endpoint for {counts.no_healthy} streams"
    elif counts.unreachable:
        why = f"{counts.unreachable} connects to {window.pinned_addresses()} failed"
    else:
        why = f"{counts.failed} ext_proc streams failed"
    cause = (
        f"failure_mode_allow (fail-open) hides a dead EPP: {counts.allowed} requests passed ext_proc without"
        f" a pick while the gateway answered {counts.two_xx} of {counts.requests} with 2xx ({why}); the"
        " pool's fallback load balancing routed them, not the EPP"
    )
    evidence = (
        window.evidence()
        .ext_proc("failure_mode_allowed", "streams_started", "streams_failed")
        .requests("downstream_rq_2xx")
        .cluster("upstream_cx_none_healthy", "upstream_cx_connect_fail", "upstream_rq_503")
        .other_clusters("upstream_rq_total")
        .build()
    )
    return [Cause("EPX009", cause, evidence, FAIL_OPEN_FIX, 0.97)]


def match_no_healthy_epp_endpoint(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    if counts.no_healthy == 0:
        return []
    cause = (
        f"the EPP cluster {window.settings.epp_cluster!r} has no healthy endpoint: {counts.no_healthy}"
        " ext_proc streams found none (the EPP Service has no ready pod, or every endpoint fails its health"
        " checks)"
    )
    evidence = (
        window.evidence()
        .cluster("upstream_cx_none_healthy", "membership_healthy", "membership_total", "upstream_rq_503")
        .ext_proc("streams_started", "streams_failed", "failure_mode_allowed")
        .build()
    )
    score = 0.9 if counts.failed > 0 and counts.allowed == 0 else 0.6
    return [Cause(None, cause, evidence, NO_HEALTHY_FIX, score)]


def match_epp_cluster_overflow(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    """The EPP cluster's circuit breakers refuse streams: gRPC UNAVAILABLE "overflow" at the filter."""
    if counts.overflow == 0:
        return []
    outcome = f", and {counts.five_xx} of {counts.requests} requests failed" if counts.five_xx else ""
    cause = (
        f"the EPP cluster {window.settings.epp_cluster!r} refused {counts.overflow} ext_proc streams at its"
        " circuit breakers (more requests in flight than max_requests and max_pending_requests allow)"
        f"{outcome}"
    )
    evidence = (
        window.evidence()
        .cluster("upstream_rq_pending_overflow", "upstream_rq_active_overflow", "upstream_rq_total")
        .ext_proc("streams_started", "streams_failed", "failure_mode_allowed")
        .requests("downstream_rq_5xx")
        .build()
    )
    score = 0.95 if counts.failed + counts.allowed > 0 else 0.7
    return [Cause(None, cause, evidence, OVERFLOW_FIX, score)]


def match_spurious_messages(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    """The EPP sent answers Envoy did not ask for: Envoy gives up on the stream at the first one."""
    if counts.spurious == 0:
        return []
    outcome = f"; {counts.five_xx} of {counts.requests} requests failed" if counts.five_xx else ""
    cause = (
        f"the EPP answered out of turn on {counts.spurious} streams (messages Envoy did not ask for, or not"
        f" yet): Envoy drops the stream at the first such answer{outcome}"
    )
    evidence = (
        window.evidence()
        .ext_proc("spurious_msgs_received", "streams_started", "stream_msgs_sent", "immediate_responses_sent")
        .requests("downstream_rq_5xx")
        .build()
    )
    score = 0.9 if counts.five_xx or counts.failed else 0.6
    return [Cause(None, cause, evidence, SPURIOUS_FIX, score)]


def match_body_wait(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    if counts.timeouts == 0:
        return []
    cause = (
        f"the EPP did not answer within message_timeout on {counts.timeouts} of {counts.started} streams:"
        " it waits for a request body that body mode NONE never sends"
    )
    evidence = (
        window.evidence()
        .ext_proc("message_timeouts", "streams_started", "stream_msgs_sent", "stream_msgs_received")
        .requests()
        .build()
    )
    fix = GIE_BODY_FIX if window.settings.profile is ProfileName.GIE_EPP else HEADERS_BODY_FIX
    return [Cause("EPX013", cause, evidence, fix, 0.9 if counts.timeouts * 2 >= counts.started else 0.6)]


def match_failure_mode_allow(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    """Traffic let through a failing stream; a symptom when another cause already explains the failure."""
    if counts.allowed == 0 or any(cause.rule == "EPX009" for cause in found):
        return []
    cause = (
        f"failure_mode_allow: true let {counts.allowed} requests pass a failing ext_proc stream"
        " without a pick"
    )
    evidence = window.evidence().ext_proc("failure_mode_allowed", "streams_failed").build()
    fix = "set failure_mode_allow: false so a broken EPP shows as 5xx instead of unpicked traffic"
    return [Cause("EPX009", cause, evidence, fix, 0.5 if found else 0.9)]


def match_partial_override(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    """Two messages per stream on a headers-only path: response headers go to the EPP too."""
    if window.settings.profile is not ProfileName.HEADERS_EPP or not counts.clean_streams:
        return []
    if counts.sent < 2 * counts.started:
        return []
    cause = (
        f"each ext_proc stream sends {counts.sent / counts.started:g} messages ({counts.sent} for"
        f" {counts.started} streams): a processing_mode leaves fields unset, so Envoy's default SEND applies"
        " to response headers too"
    )
    evidence = (
        window.evidence().ext_proc("stream_msgs_sent", "streams_started", "stream_msgs_received").build()
    )
    fix = (
        "write every processing_mode field explicitly in the per-route override"
        " (request_header_mode SEND, response_header_mode SKIP, body modes NONE, trailers SKIP)"
    )
    return [Cause("EPX011", cause, evidence, fix, 0.8 if counts.sent == 2 * counts.started else 0.65)]


def match_ext_proc_never_runs(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    """Requests and no stream: no per-route SEND (EPX004), or no ext_proc filter at all (EPX012)."""
    if counts.started > 0 or counts.requests == 0:
        return []
    if counts.failed > 0 or counts.allowed > 0:  # streams that failed to open are not counted as started
        return []
    no_filter = not window.has_ext_proc
    evidence = (
        window.evidence()
        .requests("downstream_rq_5xx")
        .ext_proc("streams_started")
        .fact("ext_proc counters in the stats", "none" if no_filter else "present")
        .build()
    )
    override = Cause(
        "EPX004",
        f"{counts.requests} requests reached the gateway and none started an ext_proc stream: global"
        " request_header_mode SKIP with no per-route override that sets SEND",
        evidence,
        "add an HTTP_ROUTE MERGE patch with ExtProcPerRoute overrides.processing_mode"
        " request_header_mode: SEND, request_body_mode: NONE (all fields explicit)",
        0.6 if no_filter else 0.85,
    )
    missing = Cause(
        "EPX012",
        f"{counts.requests} requests reached the gateway and Envoy has no ext_proc filter at all: the"
        " REPLACE patch found no envoy.filters.http.ext_proc to replace",
        evidence,
        "make sure the gateway has an ext_proc filter to replace (InferencePool attached and"
        " ENABLE_GATEWAY_API_INFERENCE_EXTENSION on), or insert the filter instead of replacing it",
        0.85,
    )
    # Counters at zero prove the filter is installed; no counters at all may also mean stats read with
    # `usedonly`, so the override stays a second candidate then.
    return [missing, override] if no_filter else [override]


def match_epp_without_endpoint(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    if counts.epp_immediate == 0:
        return []
    cause = (
        f"the EPP answered {counts.epp_immediate} of {counts.started} streams itself with an immediate"
        " response instead of a pick (no ready endpoint in its pool?)"
    )
    evidence = (
        window.evidence()
        .ext_proc("immediate_responses_sent", "streams_started", "streams_failed", "message_timeouts")
        .requests("downstream_rq_5xx")
        .build()
    )
    fix = (
        "read the EPP's log for the reason; check that the InferencePool's model-server pods are ready and"
        " that the EPP can scrape their metrics"
    )
    return [Cause(None, cause, evidence, fix, 0.7 if counts.epp_immediate * 2 >= counts.started else 0.4)]


def match_failure_after_pick(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    """Clean streams, yet most requests end in 5xx: the pick does not reach a working endpoint."""
    if not counts.clean_streams or counts.epp_immediate > 0:
        return []
    if counts.five_xx == 0 or counts.five_xx * 2 < counts.requests:
        return []
    cause = (
        f"ext_proc streams succeed but {counts.five_xx} of {counts.requests} requests fail after the pick:"
        " the picked endpoint is unreachable, or the route ignores the EPP's header"
    )
    evidence = (
        window.evidence()
        .requests("downstream_rq_5xx")
        .ext_proc("streams_started", "streams_failed")
        .other_clusters("upstream_cx_connect_fail")
        .build()
    )
    fix = (
        "check that the pool cluster is ORIGINAL_DST reading x-gateway-destination-endpoint and that the"
        " endpoints the EPP picks accept connections"
    )
    return [Cause(None, cause, evidence, fix, 0.5)]


def match_unexplained_failures(window: Window, counts: Counts, found: Sequence[Cause]) -> list[Cause]:
    if counts.failed == 0 or found:
        return []
    builder = window.evidence().ext_proc("streams_started", "streams_failed")
    if window.cluster_found:
        builder.cluster("upstream_rq_total", "upstream_cx_total")
        detail = "show no known cause"
    else:
        detail = f"are not in the stats (no cluster named {window.settings.epp_cluster!r})"
    cause = (
        f"{counts.failed} of {counts.started} ext_proc streams failed; the EPP cluster's counters {detail}"
    )
    fix = (
        "name the EPP cluster (--epp-cluster or --filter) so its counters can be read, and read the EPP's log"
    )
    return [Cause(None, cause, builder.build(), fix, 0.3)]


SIGNATURES: tuple[Matcher, ...] = (
    match_no_http2,
    match_tls_cluster_plaintext_epp,
    match_fail_open_traffic_flows,
    match_unreachable_epp,
    match_no_healthy_epp_endpoint,
    match_epp_cluster_overflow,
    match_spurious_messages,
    match_plaintext_cluster_tls_epp,
    match_body_wait,
    match_failure_mode_allow,
    match_partial_override,
    match_ext_proc_never_runs,
    match_epp_without_endpoint,
    match_failure_after_pick,
    match_unexplained_failures,
)


def match_signatures(window: Window, counts: Counts) -> list[Cause]:
    """Every matching cause, best first (ties keep the table's order)."""
    found: list[Cause] = []
    for matcher in SIGNATURES:
        found.extend(matcher(window, counts, found))
    return sorted(found, key=lambda cause: cause.score, reverse=True)
