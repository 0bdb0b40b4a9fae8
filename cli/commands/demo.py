"""`extproc-guard demo`: the incident's EPP path on one machine (real Envoy, EPP, simulators)."""

from __future__ import annotations

import argparse
import sys
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
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the filters, the fix, Envoy configs, stats snapshots and logs in DIR",
    )
    parser.set_defaults(handler=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    if args.requests < 1:
        print("extproc-guard demo: error: --requests must be at least 1")
        return 2
    # Envoy, the EPP and the engine load here, not when the CLI lists its commands.
    from cli.demo.run import DemoSettings, run_demo

    settings = DemoSettings(requests=args.requests, workdir=args.keep, program=shown_program(sys.argv[0]))
    return run_demo(settings)


def shown_program(argv0: str) -> str:
    """How the demo's printed commands name the CLI: as the user invoked it (`.venv/bin/extproc-guard`
    after `make demo`), so they run as printed; `extproc-guard` for `python -m cli.main`."""
    return argv0 if Path(argv0).name == "extproc-guard" else "extproc-guard"
