"""Which gRPC health services the EPP has and their status: shared by both transports (no gRPC import).

- `liveness`: SERVING while the process answers;
- `readiness`, `envoy.service.ext_proc.v3.ExternalProcessor` and the server as a whole (""): SERVING once
  the EPP knows its endpoint set, NOT_SERVING before;
- any other service name: unknown (None).
"""

from __future__ import annotations

from typing import Final

from grpc_health.v1 import health_pb2

from epp.processor import SERVICE_NAME

LIVENESS: Final = "liveness"
READINESS: Final = "readiness"
READY_SERVICES: Final = frozenset({"", READINESS, SERVICE_NAME})
SERVING: Final = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING


def health_status(service: str, *, ready: bool) -> int | None:
    """The status of `service`, or None for a service this EPP does not have."""
    if service == LIVENESS:
        return int(SERVING)
    if service in READY_SERVICES:
        return int(SERVING if ready else NOT_SERVING)
    return None
