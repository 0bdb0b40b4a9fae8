"""Settings of the admission server: one object, built by the CLI and passed down."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kube.settings import KubeSettings
from policies import Policy, ServiceAddress, ServiceRef

MAX_REVIEW_BYTES = 3 * 1024 * 1024
"""The apiserver never sends more; anything larger is refused before it is read."""


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """Where the serving certificate lives and how often to look for a new one."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    poll_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Everything `extproc-guard serve` needs.

    `policy` None means the built-in policy. `kube` None means no live lookups: only the static
    `services` map answers (and the server is ready at once). `workers` above 1 runs that many server
    processes on the port under a supervisor (`webhook.workers`), each with its own caches.
    """

    tls: TLSSettings
    host: str = "0.0.0.0"
    port: int = 8443
    policy: Policy | None = None
    services: Mapping[ServiceRef, ServiceAddress] = field(default_factory=dict)
    kube: KubeSettings | None = None
    max_body_bytes: int = MAX_REVIEW_BYTES
    body_timeout_seconds: float = 10.0
    workers: int = 1
