"""`extproc-guard epp`: the Endpoint Picker gRPC server (Envoy ext_proc)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from epp.endpoints import EndpointSyntaxError, parse_endpoint, parse_endpoints

if TYPE_CHECKING:
    from epp.settings import EppSettings


class _VersionAction(argparse.Action):
    """`epp --version`: the package version and the ext_proc protocol served (loads the protos only here)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object, **__: object) -> None:
        from cli.version import epp_version_text

        print(epp_version_text())
        parser.exit(0)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "epp",
        help="run the Endpoint Picker (Envoy ext_proc gRPC server)",
        description="Pick a model-server endpoint for every request Envoy's ext_proc filter sends.",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        nargs=0,
        help="print the version and the ext_proc protocol served, and exit",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=9002, help="gRPC port (default 9002)")
    parser.add_argument("--endpoints", default="", help="static model servers: IP:PORT,IP:PORT,...")
    parser.add_argument("--namespace", help="Kubernetes namespace of the model servers (live discovery)")
    parser.add_argument("--service", help="follow the EndpointSlices of this Service")
    parser.add_argument("--selector", help="follow the Pods matching this label selector")
    parser.add_argument("--target-port", type=int, help="model-server port (required with --selector)")
    parser.add_argument("--port-name", help="with --service: the EndpointSlice port of this name")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument("--scrape-interval", type=float, default=0.5, help="seconds between scrapes; 0 = off")
    parser.add_argument(
        "--scrape-timeout", type=float, default=1.0, help="seconds one scrape may take (default 1.0)"
    )
    parser.add_argument("--stale-after", type=float, default=None, help="seconds (default 3 x interval)")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on this port")
    parser.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="serve gRPC health (liveness, readiness, the ext_proc service) alone on this plaintext port",
    )
    parser.add_argument(
        "--fallbacks",
        type=int,
        default=0,
        help="endpoints listed after the picked one, for the proxy to retry (default 0; ORIGINAL_DST"
        " clusters read one endpoint only, override_host clusters walk the list)",
    )
    parser.add_argument(
        "--shed-queue-depth",
        type=float,
        default=None,
        metavar="N",
        help="answer 429 when every candidate endpoint has N or more requests waiting (default: never)",
    )
    parser.add_argument(
        "--engine-type",
        default="vllm",
        help="model-server engine (metric names) for endpoints without an llm-d.ai/engine-type label"
        " (default vllm)",
    )
    parser.add_argument(
        "--endpoint-engine",
        action="append",
        default=[],
        metavar="IP:PORT=ENGINE",
        help="the engine type of one static endpoint (repeatable)",
    )
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    parser.add_argument(
        "--transport",
        choices=["h2", "grpcio"],
        default=None,
        help="gRPC server: the EPP's own HTTP/2 server (default; plaintext) or grpcio (default with TLS)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="EPP processes sharing the port (SO_REUSEPORT)"
    )
    parser.add_argument(
        "--expect-response-messages",
        action="store_true",
        help="the processing mode sends response phases on purpose (do not log them as unexpected)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="EPP log level (default info)",
    )
    parser.set_defaults(handler=run_epp)


def build_settings(args: argparse.Namespace) -> EppSettings:
    """Turn the flags into settings; raises ValueError with a one-line reason."""
    # The EPP's server modules (gRPC, aiohttp) load here, not when the CLI lists its commands.
    from epp.discovery import KubeDiscoverySettings
    from epp.engines import engine_metrics
    from epp.picker import PickerSettings
    from epp.processor import ProcessorSettings
    from epp.scraper import ScrapeSettings
    from epp.settings import EppSettings, TlsFiles

    endpoints = parse_endpoints(args.endpoints)
    discovery = None
    if args.service or args.selector:
        if not args.namespace:
            raise ValueError("--service and --selector need --namespace")
        if args.service and args.selector:
            raise ValueError("give --service or --selector, not both")
        if args.selector and args.target_port is None:
            raise ValueError("--selector needs --target-port")
        if endpoints:
            raise ValueError("give --endpoints or live discovery (--service/--selector), not both")
        discovery = KubeDiscoverySettings(
            namespace=args.namespace,
            service=args.service,
            selector=args.selector,
            target_port=args.target_port,
            port_name=args.port_name,
            kubeconfig=args.kubeconfig,
        )
    elif not endpoints:
        raise ValueError(
            "no model servers: give --endpoints IP:PORT,... or --namespace with --service/--selector"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port {args.port} is not in 0..65535")
    transport = args.transport or ("grpcio" if args.tls_cert else "h2")
    if transport == "h2" and args.tls_cert:
        raise ValueError("--transport h2 is plaintext; TLS needs --transport grpcio")
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    if args.workers > 1 and args.port == 0:
        raise ValueError("--workers > 1 needs a fixed --port (the workers share it)")
    interval = max(args.scrape_interval, 0.0)
    if args.scrape_timeout <= 0:
        raise ValueError("--scrape-timeout must be more than 0 seconds")
    stale = args.stale_after if args.stale_after is not None else 3 * interval
    if args.fallbacks < 0:
        raise ValueError("--fallbacks must be 0 or more")
    if args.shed_queue_depth is not None and args.shed_queue_depth <= 0:
        raise ValueError("--shed-queue-depth must be more than 0")
    if args.health_port is not None and not 0 <= args.health_port < 65536:
        raise ValueError(f"--health-port {args.health_port} is not in 0..65535")
    engine_metrics(args.engine_type)  # raises UnknownEngine (a ValueError) naming the known ones
    engines = {}
    for item in args.endpoint_engine:
        address, sep, engine = item.rpartition("=")
        if not sep or not address:
            raise ValueError(f"--endpoint-engine {item!r} is not IP:PORT=ENGINE")
        engine_metrics(engine)
        engines[parse_endpoint(address)] = engine
    return EppSettings(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        endpoints=endpoints,
        engines=engines,
        discovery=discovery,
        scrape=ScrapeSettings(
            interval=interval, timeout=args.scrape_timeout, default_engine=args.engine_type
        ),
        picker=PickerSettings(
            stale_after=stale, fallbacks=args.fallbacks, shed_queue_depth=args.shed_queue_depth
        ),
        processor=ProcessorSettings(expect_response_messages=args.expect_response_messages),
        tls=TlsFiles(args.tls_cert, args.tls_key) if args.tls_cert else None,
        workers=args.workers,
        transport=transport,
    )


def run_epp(args: argparse.Namespace) -> int:
    try:
        settings = build_settings(args)
    except (ValueError, EndpointSyntaxError) as exc:
        print(f"extproc-guard epp: error: {exc}", file=sys.stderr)
        return 2
    if settings.tls is not None:
        for path in (settings.tls.cert, settings.tls.key):
            if not path.is_file():
                print(f"extproc-guard epp: error: {path} is not a readable file", file=sys.stderr)
                return 2
    from epp.workers import run_epp_processes

    try:
        return run_epp_processes(settings, log_level=logging.getLevelName(args.log_level.upper()))
    except OSError as exc:
        print(f"extproc-guard epp: error: {exc}", file=sys.stderr)
        return 1
