"""`extproc-guard render FILE`: print the Envoy bootstrap an Istio gateway would run with an EnvoyFilter."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cli.settings import print_error
from policies.render import RenderError, RenderOptions, RouteSpec, SocketAddress

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = RenderOptions()
    parser = subparsers.add_parser(
        "render",
        help="print the Envoy bootstrap a gateway would run with an EnvoyFilter",
        description="Apply an EnvoyFilter's configPatches (Istio semantics) to a reference gateway "
        "(ext_proc placeholder, router, ORIGINAL_DST pool cluster) and print the Envoy bootstrap.",
    )
    parser.add_argument(
        "file", metavar="FILE", help="YAML or JSON file ('-' for stdin); the first EnvoyFilter"
    )
    parser.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="output format")
    parser.add_argument("--listen-address", default=defaults.listen_address, help="listener bind address")
    parser.add_argument("--listen-port", type=_port, default=defaults.listen_port, help="listener port")
    parser.add_argument("--admin-address", default=defaults.admin_address, help="admin bind address")
    parser.add_argument("--admin-port", type=_port, default=defaults.admin_port, help="admin port")
    parser.add_argument(
        "--gateway-port", type=_port, default=defaults.gateway_port, help="port that portNumber matches"
    )
    parser.add_argument("--stat-prefix", default=defaults.stat_prefix, help="connection manager stat_prefix")
    parser.add_argument(
        "--pool-cluster", default=defaults.pool_cluster, help="ORIGINAL_DST pool cluster name"
    )
    parser.add_argument(
        "--epp-cluster", default=defaults.epp_cluster, help="cluster the ext_proc placeholder names"
    )
    parser.add_argument(
        "--baseline-route",
        metavar="PREFIX",
        action="append",
        default=[],
        help="add a route to the pool with ext_proc disabled (repeatable)",
    )
    parser.add_argument(
        "--endpoint",
        metavar="CLUSTER=HOST:PORT",
        action="append",
        default=[],
        type=_endpoint,
        help="replace a cluster's endpoints after patching (repeatable)",
    )
    parser.set_defaults(handler=run_render)


def run_render(args: argparse.Namespace) -> int:
    # The renderer and the YAML loader load here, not when the CLI lists its commands.
    import yaml

    from cli.sources import InputError
    from policies.render import render_gateway

    try:
        envoy_filter = load_envoy_filter(args.file)
        rendering = render_gateway(envoy_filter, options=build_options(args))
    except InputError as error:
        print_error(str(error))
        return EXIT_USAGE
    except RenderError as error:
        print_error(f"{_display_name(args.file)}: {error}")
        return EXIT_USAGE
    for note in rendering.skipped:
        print(f"extproc-guard render: note: {note}", file=sys.stderr)
    if args.output == "json":
        import json

        sys.stdout.write(json.dumps(rendering.bootstrap, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(rendering.bootstrap, sort_keys=False))
    return EXIT_OK


def build_options(args: argparse.Namespace) -> RenderOptions:
    routes = [RouteSpec(name="inference", prefix="/")]
    routes += [
        RouteSpec(name=f"baseline-{i}", prefix=prefix, ext_proc_disabled=True)
        for i, prefix in enumerate(args.baseline_route)
    ]
    overrides: dict[str, tuple[SocketAddress, ...]] = {}
    for cluster, address in args.endpoint:
        overrides[cluster] = (*overrides.get(cluster, ()), address)
    return RenderOptions(
        listen_address=args.listen_address,
        listen_port=args.listen_port,
        admin_address=args.admin_address,
        admin_port=args.admin_port,
        gateway_port=args.gateway_port,
        stat_prefix=args.stat_prefix,
        pool_cluster=args.pool_cluster,
        epp_cluster=args.epp_cluster,
        routes=tuple(routes),
        endpoint_overrides=overrides,
    )


def load_envoy_filter(arg: str) -> Mapping[str, Any]:
    """The first EnvoyFilter document of a YAML/JSON file (``-``: stdin), read as `check` reads it."""
    from cli.sources import (
        STDIN_ARG,
        InputError,
        Source,
        SourceDocument,
        iter_documents,
        read_input,
        template_skip,
    )

    name = _display_name(arg)
    text = read_input(arg, stdin=sys.stdin.buffer)
    source = Source(name, None if arg == STDIN_ARG else Path(arg))
    try:
        for item in iter_documents(source, text):
            if isinstance(item, SourceDocument) and item.data.get("kind") == "EnvoyFilter":
                return item.data
    except InputError:
        skipped = template_skip(name, text)
        if skipped is not None:
            raise InputError(skipped.file, skipped.reason) from None
        raise
    raise InputError(name, "no EnvoyFilter document")


def _display_name(arg: str) -> str:
    return "<stdin>" if arg == "-" else arg


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0-65535")
    return port


def _endpoint(text: str) -> tuple[str, SocketAddress]:
    cluster, _, address = text.partition("=")
    host, _, port = address.rpartition(":")
    if not cluster or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not CLUSTER=HOST:PORT")
    try:
        return cluster, SocketAddress(host.strip("[]"), _port(port))
    except (argparse.ArgumentTypeError, RenderError) as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
