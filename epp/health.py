"""gRPC health for the EPP, as the GIE endpoint-picker protocol names its services.

- `liveness`: SERVING while the process answers;
- `readiness`, `envoy.service.ext_proc.v3.ExternalProcessor` and the server as a whole (""): SERVING once
  the EPP knows its endpoint set (static endpoints at once; discovery after its first list), NOT_SERVING
  before, so a proxy or kubelet health check keeps traffic away from an EPP that could only answer 503.
Any other service name is NOT_FOUND, as the gRPC health protocol asks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.healthstate import LIVENESS, READINESS, READY_SERVICES, health_status

_WATCH_POLL = 0.5  # seconds between looks at the state while a Watch call is open

__all__ = ["LIVENESS", "READINESS", "READY_SERVICES", "EppHealth", "health_status"]


class EppHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """`grpc.health.v1.Health` answering from the EPP's live state (nothing to keep in sync)."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready

    async def Check(  # noqa: N802 (gRPC method name)
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = health_status(request.service, ready=self._ready())
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802 (gRPC method name)
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: int | None = -1
        while True:
            status = health_status(request.service, ready=self._ready())
            if status != last:
                last = status
                code = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN if status is None else status
                yield health_pb2.HealthCheckResponse(status=code)
            await asyncio.sleep(_WATCH_POLL)
