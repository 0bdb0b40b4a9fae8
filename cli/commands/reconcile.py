"""`extproc-guard reconcile`: audit stored EnvoyFilters, repair drift, and hold a Lease while writing.

Runs until SIGTERM / SIGINT (then releases the Lease for a clean hand-over), or with `--once` audits once
and exits: 0 when every filter is clean or was fixed, 1 when something is left (unfixable findings, a dry
run's proposed changes, a writer that keeps undoing the fix, API errors), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from cli.settings import (
    SettingsError,
    add_policy_argument,
    add_resolver_arguments,
    load_policy_file,
    port_arg_type,
    print_error,
    resolver_settings_from_args,
)

if TYPE_CHECKING:
    from reconciler.runner import Parts
    from reconciler.settings import ReconcileSettings

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 1 to 86400 seconds")
    return value


def _namespace(text: str) -> str:
    if not _DNS_LABEL.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a namespace name (a DNS-1123 label)")
    return text


def _lease_name(text: str) -> str:
    if not _DNS_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Lease name (a DNS-1123 subdomain)")
    return text


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "reconcile",
        help="keep stored EnvoyFilters corrected: audit, drift repair, leader election",
        description="Audit EnvoyFilters on start and every --interval seconds, patch them to the corrected "
        "form (a JSON Patch guarded by the resourceVersion read), re-pin filters when their EPP Service's "
        "address changes, record Events and a PolicyReport per namespace, and back off from a writer that "
        "keeps undoing the fix. With --lease-name only the Lease holder writes.",
    )
    parser.add_argument(
        "--kubeconfig", type=Path, metavar="FILE", help="kubeconfig (default: in-cluster config)"
    )
    parser.add_argument("--context", metavar="NAME", help="kubeconfig context to use (default: current)")
    parser.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        type=_namespace,
        default=[],
        metavar="NS",
        help="audit EnvoyFilters in this namespace (repeatable; default: every namespace)",
    )
    parser.add_argument(
        "--interval", type=_seconds, default=60.0, metavar="S", help="seconds between audits (default: 60)"
    )
    parser.add_argument("--dry-run", action="store_true", help="log what would change; write nothing")
    parser.add_argument("--once", action="store_true", help="audit once and exit (0 clean or fixed, 1 not)")
    parser.add_argument("--lease-name", type=_lease_name, metavar="N", help="elect a leader with this Lease")
    parser.add_argument(
        "--lease-namespace",
        type=_namespace,
        metavar="NS",
        help="namespace of the Lease (default: the pod's own namespace)",
    )
    parser.add_argument(
        "--identity", metavar="ID", help="this replica's name in the Lease (default: hostname_RANDOM)"
    )
    parser.add_argument(
        "--metrics-port", type=port_arg_type, metavar="N", help="serve Prometheus /metrics on this port"
    )
    parser.add_argument(
        "--metrics-host", default="0.0.0.0", metavar="ADDR", help="address for /metrics (default: 0.0.0.0)"
    )
    parser.add_argument(
        "--fight-backoff",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="first back-off from a writer that keeps undoing the fix; doubles each time (default: 30)",
    )
    add_policy_argument(parser)
    add_resolver_arguments(parser, live=False)
    parser.set_defaults(handler=run_reconcile)


def _lease_namespace(args: argparse.Namespace) -> str:
    if args.lease_namespace:
        return str(args.lease_namespace)
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
    except OSError:
        raise SettingsError("--lease-name needs --lease-namespace outside a pod") from None


def settings_from_args(args: argparse.Namespace) -> ReconcileSettings:
    """Raises `SettingsError` (one line, exit 2) for flags that do not fit together."""
    import socket
    import uuid

    from reconciler.settings import LeaseSettings, ReconcileSettings

    identity = args.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    lease = None
    if args.lease_name:
        lease = LeaseSettings(name=args.lease_name, namespace=_lease_namespace(args), identity=identity)
    elif args.lease_namespace:
        raise SettingsError("--lease-namespace needs --lease-name")
    return ReconcileSettings(
        namespaces=tuple(dict.fromkeys(args.namespaces)),
        interval_seconds=args.interval,
        dry_run=args.dry_run,
        identity=identity,
        backoff_initial_seconds=args.fight_backoff,
        lease=lease,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        kubeconfig=args.kubeconfig,
        context=args.context,
    )


def run_reconcile(args: argparse.Namespace) -> int:
    # asyncio, the Kubernetes client and the runner load here, not when the CLI lists its commands.
    import asyncio

    from policies.build import engine_build
    from reconciler.api import KubeConfigError
    from reconciler.runner import audit_exit_code, audit_once, build_parts

    if args.verbose == 0:
        # Every audit, fix and fight is the reconciler's record of what it changed: on unless asked for more.
        logging.getLogger().setLevel(logging.INFO)
    try:
        settings = settings_from_args(args)
        policy = load_policy_file(args.policy)
        parts = build_parts(settings, policy=policy, services=resolver_settings_from_args(args).services)
    except (SettingsError, KubeConfigError) as error:
        print_error(str(error))
        return EXIT_USAGE
    logger.info("reconciling once=%s engine=%s", "true" if args.once else "false", engine_build())
    if args.once:
        result = asyncio.run(audit_once(parts, settings))
        if result is None:
            logger.warning("another replica holds the Lease; nothing audited")
            return EXIT_OK
        return audit_exit_code(result)
    asyncio.run(_serve(parts, settings))
    return EXIT_OK


async def _serve(parts: Parts, settings: ReconcileSettings) -> None:
    import asyncio
    import signal

    from reconciler.runner import run_reconciler

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await run_reconciler(parts, settings, stop=stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
