"""The ext_proc answers the EPP sends, built from typed values (pure; no I/O)."""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.type.v3 import http_status_pb2

from epp.endpoints import Endpoint
from epp.protocol import DESTINATION_HEADER, METADATA_NAMESPACE, join_endpoints

Pick = tuple[Endpoint, ...]
"""The endpoints of one decision: the primary first, then fallbacks in order of preference."""


def build_pick_mutation(pick: Pick) -> ext_proc.CommonResponse:
    """Route to the pick: set the destination header and ask Envoy to recompute the route."""
    header = base_pb2.HeaderValue(key=DESTINATION_HEADER, raw_value=join_endpoints(pick).encode())
    return ext_proc.CommonResponse(
        header_mutation=ext_proc.HeaderMutation(
            set_headers=[
                base_pb2.HeaderValueOption(
                    header=header, append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
                )
            ]
        ),
        clear_route_cache=True,
    )


def add_pick_metadata(answer: ext_proc.ProcessingResponse, pick: Pick) -> None:
    """The same value as dynamic metadata, namespace `envoy.lb` (what override_host LB policies read)."""
    answer.dynamic_metadata.update({METADATA_NAMESPACE: {DESTINATION_HEADER: join_endpoints(pick)}})


def build_headers_pick(pick: Pick) -> ext_proc.ProcessingResponse:
    """The answer to `request_headers` that carries the decision."""
    answer = ext_proc.ProcessingResponse(
        request_headers=ext_proc.HeadersResponse(response=build_pick_mutation(pick))
    )
    add_pick_metadata(answer, pick)
    return answer


def build_body_pick(pick: Pick) -> ext_proc.ProcessingResponse:
    """The answer to a buffered `request_body` that carries the decision (headers are still held)."""
    answer = ext_proc.ProcessingResponse(
        request_body=ext_proc.BodyResponse(response=build_pick_mutation(pick))
    )
    add_pick_metadata(answer, pick)
    return answer


def build_streamed_body(
    body: bytes, *, end_of_stream: bool, response: bool = False
) -> ext_proc.ProcessingResponse:
    """Hand a body back unchanged in FULL_DUPLEX_STREAMED mode (the processor owns the body there)."""
    answer = ext_proc.BodyResponse(
        response=ext_proc.CommonResponse(
            body_mutation=ext_proc.BodyMutation(
                streamed_response=ext_proc.StreamedBodyResponse(body=body, end_of_stream=end_of_stream)
            )
        )
    )
    if response:
        return ext_proc.ProcessingResponse(response_body=answer)
    return ext_proc.ProcessingResponse(request_body=answer)


def build_unavailable(
    reason: str, *, request_id: str, error: str = "no_healthy_endpoint"
) -> ext_proc.ProcessingResponse:
    """No endpoint can take the request: answer the client 503 with a JSON reason, now."""
    return _build_refusal(http_status_pb2.ServiceUnavailable, error, reason, request_id)


def build_shed(reason: str, *, request_id: str) -> ext_proc.ProcessingResponse:
    """Every candidate is over the queue threshold: answer the client 429 (shed), now."""
    return _build_refusal(http_status_pb2.TooManyRequests, "request_shed", reason, request_id)


def _build_refusal(status: int, error: str, reason: str, request_id: str) -> ext_proc.ProcessingResponse:
    body = json.dumps({"error": error, "reason": reason, "request_id": request_id})
    content_type = base_pb2.HeaderValue(key="content-type", raw_value=b"application/json")
    return ext_proc.ProcessingResponse(
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=ext_proc.HeaderMutation(set_headers=[base_pb2.HeaderValueOption(header=content_type)]),
            body=body.encode(),
            details=f"epp_{error}",
        )
    )


def build_pass_through(kind: str) -> ext_proc.ProcessingResponse:
    """An answer that changes nothing, for any message kind that expects one."""
    if kind in ("request_headers", "response_headers"):
        return ext_proc.ProcessingResponse(**{kind: ext_proc.HeadersResponse()})
    if kind in ("request_body", "response_body"):
        return ext_proc.ProcessingResponse(**{kind: ext_proc.BodyResponse()})
    if kind in ("request_trailers", "response_trailers"):
        return ext_proc.ProcessingResponse(**{kind: ext_proc.TrailersResponse()})
    raise ValueError(f"no pass-through answer for message kind {kind!r}")
