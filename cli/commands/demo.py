"""`extproc-guard demo`: the incident's EPP path on one machine (real Envoy, EPP, simulators)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the fixed and the broken EPP path on a real Envoy, locally",
        description="Fix the incident's EnvoyFilter, run it on a real Envoy with the EPP and three "
        "simulators, then show the seed's failure (no HTTP/2 on the epp-cluster) and what check and "
        "doctor say.",
    )
    parser.add_argument("--requests", type=int, default=9, help="requests through the fixed path (9)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep configs and logs in DIR")
    parser.set_defaults(handler=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    if args.requests < 1:
        print("extproc-guard demo: error: --requests must be at least 1")
        return 2
    # Envoy, the EPP and the engine load here, not when the CLI lists its commands.
    from cli.demo.run import DemoSettings, run_demo

    return run_demo(DemoSettings(requests=args.requests, workdir=args.keep))
