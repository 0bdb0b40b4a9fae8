"""One settings object for an EPP process, built by the CLI and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from epp.discovery import KubeDiscoverySettings
from epp.endpoints import Endpoint
from epp.picker import PickerSettings
from epp.processor import ProcessorSettings
from epp.scraper import ScrapeSettings


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class EppSettings:
    host: str = "0.0.0.0"
    port: int = 9002
    metrics_port: int | None = None  # a plain-HTTP /metrics and /healthz; None = off
    health_port: int | None = None  # gRPC health alone, plaintext (the GIE EPP's 9003); None = off
    endpoints: tuple[Endpoint, ...] = ()
    engines: dict[Endpoint, str] = field(default_factory=dict)  # engine-type labels of static endpoints
    discovery: KubeDiscoverySettings | None = None
    scrape: ScrapeSettings = field(default_factory=ScrapeSettings)
    picker: PickerSettings = field(default_factory=PickerSettings)
    processor: ProcessorSettings = field(default_factory=ProcessorSettings)
    tls: TlsFiles | None = None
    workers: int = 1
    transport: str = "h2"  # "h2": the EPP's own HTTP/2 server (plaintext); "grpcio": grpcio (TLS possible)
    grace: float = 2.0  # seconds streams get to finish on shutdown
