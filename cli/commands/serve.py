"""`extproc-guard serve`: the HTTPS admission server (/mutate, /validate, /healthz, /readyz, /metrics)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cli.settings import (
    SettingsError,
    add_policy_argument,
    add_resolver_arguments,
    load_policy_file,
    port_arg_type,
    resolver_settings_from_args,
)

if TYPE_CHECKING:
    from aiohttp import web

    from webhook.settings import ServeSettings

logger = logging.getLogger(__name__)

EXIT_USAGE = 2


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most 86400 seconds")
    return value


MAX_WORKERS = 256


def workers_arg_type(text: str) -> int:
    """`--workers`: a number of processes, or `auto` for the CPUs this process may run on."""
    if text == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # no affinity call on this platform
            return max(1, os.cpu_count() or 1)
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers or 'auto'") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 1 to {MAX_WORKERS}, or 'auto'")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTPS admission webhook server",
        description="Serve POST /mutate and /validate (admission.k8s.io/v1 AdmissionReview) over TLS 1.2+, "
        "plus /healthz, /readyz and /metrics. The certificate and key are re-read when the files change.",
    )
    parser.add_argument(
        "--tls-cert", required=True, type=Path, metavar="FILE", help="serving certificate (PEM)"
    )
    parser.add_argument("--tls-key", required=True, type=Path, metavar="FILE", help="its private key (PEM)")
    parser.add_argument(
        "--client-ca", type=Path, metavar="FILE", help="require client certificates signed by this CA (PEM)"
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    parser.add_argument("--port", type=port_arg_type, default=8443, help="port to listen on (default: 8443)")
    parser.add_argument(
        "--cert-poll-seconds",
        type=_seconds,
        default=5.0,
        metavar="N",
        help="how often to check the certificate files for a new pair (default: 5)",
    )
    parser.add_argument(
        "--resync-seconds",
        type=_seconds,
        default=300.0,
        metavar="N",
        help="relist every Service this often even while the watch is healthy (default: 300)",
    )
    parser.add_argument(
        "--workers",
        type=workers_arg_type,
        default=1,
        metavar="N|auto",
        help="server processes sharing the port, each with its own caches (default: 1, one process; "
        "auto: one per CPU this process may run on)",
    )
    add_policy_argument(parser)
    add_resolver_arguments(parser)
    parser.set_defaults(handler=run_serve)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Build the one settings object; raises `SettingsError` for a flag that cannot be used."""
    from kube.settings import KubeSettings
    from webhook.settings import ServeSettings, TLSSettings

    resolver = resolver_settings_from_args(args)
    in_cluster = resolver.in_cluster or (
        resolver.kubeconfig is None and not resolver.services and "KUBERNETES_SERVICE_HOST" in os.environ
    )
    kube: KubeSettings | None = None
    if resolver.kubeconfig is not None or in_cluster:
        kube = KubeSettings(
            kubeconfig=resolver.kubeconfig, context=resolver.context, resync_seconds=args.resync_seconds
        )
    return ServeSettings(
        tls=TLSSettings(
            cert_file=args.tls_cert,
            key_file=args.tls_key,
            client_ca_file=args.client_ca,
            poll_seconds=args.cert_poll_seconds,
        ),
        host=args.host,
        port=args.port,
        policy=load_policy_file(args.policy),
        services=resolver.services,
        kube=kube,
        workers=args.workers,
    )


def keep_flushed(handler: logging.Handler) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that flushes the batched log output while the app runs, and once at the end."""
    from telemetry.logoutput import flush_periodically
    from webhook.server import running_task

    async def run(app: web.Application) -> AsyncIterator[None]:
        async with running_task(flush_periodically(handler), "log-flush"):
            yield

    return run


def run_serve(args: argparse.Namespace) -> int:
    from telemetry.logoutput import install_log_output, open_line_atomic_stderr

    # One line per review is the server's audit trail: on unless asked for more.
    level = logging.DEBUG if args.verbose >= 2 else logging.INFO
    if args.workers == 1:
        output = install_log_output(level)
        try:
            return serve_until_stopped(args, output)
        finally:
            output.flush()
    # Several processes write to one stderr: in whole lines.
    output = install_log_output(level, stream=open_line_atomic_stderr())
    try:
        return serve_workers_until_stopped(args, output, level)
    finally:
        output.flush()


def serve_workers_until_stopped(args: argparse.Namespace, output: logging.Handler, level: int) -> int:
    """`serve --workers N` with N > 1: a supervisor and N server processes (see `webhook.workers`)."""
    from kube.services import KubeConfigError
    from webhook.tlsreload import TLSFilesError
    from webhook.workers import WorkersFailed, run_workers

    try:
        settings = settings_from_args(args)
        return run_workers(settings, log_level=level, output=output)
    except (SettingsError, TLSFilesError, KubeConfigError) as error:
        output.flush()
        print(f"extproc-guard serve: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except WorkersFailed as error:
        output.flush()
        print(f"extproc-guard serve: error: {error}", file=sys.stderr)
        return error.exit_code


def serve_until_stopped(args: argparse.Namespace, output: logging.Handler) -> int:
    # aiohttp, the server and the Kubernetes client load here, not when the CLI lists its commands.
    from aiohttp import web

    from kube.services import KubeConfigError
    from policies.build import engine_build
    from webhook.server import TLS_KEY, make_app
    from webhook.tlsreload import TLSFilesError

    try:
        settings = settings_from_args(args)
        app = make_app(settings)
    except (SettingsError, TLSFilesError, KubeConfigError) as error:
        print(f"extproc-guard serve: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    app.cleanup_ctx.append(keep_flushed(output))
    logger.info(
        "serving host=%s port=%d services=%s tls_fingerprint=%s engine=%s",
        settings.host,
        settings.port,
        "kubernetes" if settings.kube is not None else f"static({len(settings.services)})",
        app[TLS_KEY].fingerprint,
        engine_build(),
    )
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            ssl_context=app[TLS_KEY].context,
            access_log=None,
            print=None,
            shutdown_timeout=5.0,
        )
    except OSError as error:
        output.flush()
        print(
            f"extproc-guard serve: error: cannot listen on {settings.host}:{settings.port}: {error.strerror}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return 0
