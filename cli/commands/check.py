"""`extproc-guard check PATH... | -`: run the policy on every EnvoyFilter, print findings with lines.

Exit 0 when clean, 1 when an `enforce` finding exists, 2 for a usage error or an input that could not be
read (the other inputs are still checked and reported).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cli.settings import (
    SettingsError,
    add_policy_argument,
    add_resolver_arguments,
    build_resolver,
    load_policy_file,
    print_error,
    resolver_settings_from_args,
)

if TYPE_CHECKING:
    from cli.scan import ScanSettings
    from cli.sources import SkippedInput

logger = logging.getLogger(__name__)

EXIT_USAGE = 2
# The values of `cli.report.OutputFormat`, spelled out so that listing the flags loads no report code
# (a test keeps the two equal).
OUTPUT_FORMATS = ("text", "json", "sarif", "junit", "github")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check EnvoyFilters in files, folders or stdin",
        description="Run the policy on every EnvoyFilter in YAML/JSON files or folders (or '-' for stdin).",
    )
    add_input_arguments(parser)
    parser.add_argument(
        "-o",
        "--output",
        choices=OUTPUT_FORMATS,
        default=OUTPUT_FORMATS[0],
        help="output format (default: text)",
    )
    parser.set_defaults(handler=run_check)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments `check` and `fix` share: paths, policy, Service sources."""
    parser.add_argument("paths", metavar="PATH", nargs="+", help="file or folder to read; '-' for stdin")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 2) on inputs that are skipped, such as Helm templates, instead of noting them",
    )
    add_policy_argument(parser)
    add_resolver_arguments(parser)


def build_scan_settings(args: argparse.Namespace) -> ScanSettings:
    """Raises `SettingsError` (printed as one line, exit 2) for a bad policy file or kubeconfig."""
    from cli.scan import ScanSettings

    policy = load_policy_file(args.policy)
    resolver_settings = resolver_settings_from_args(args)
    resolver = build_resolver(resolver_settings)
    offline = resolver_settings.kubeconfig is None and not resolver_settings.in_cluster
    return ScanSettings(
        policy=policy,
        resolver=resolver,
        declared=resolver_settings.services,
        strict=bool(args.strict),
        workers=available_cores() if offline else 1,
    )


def available_cores() -> int:
    """The CPUs this process may run on (a live resolver's connections are never shared with workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return os.cpu_count() or 1


def print_skipped(skipped: Iterable[SkippedInput], *, strict: bool) -> None:
    """One line per skipped input on stderr: a note, or with `--strict` an error."""
    for skip in skipped:
        if strict:
            print_error(str(skip))
        else:
            sys.stderr.write(f"extproc-guard: skipped {skip}\n")


def run_check(args: argparse.Namespace) -> int:
    # The engine (pydantic, protobuf) and the report load here, not when the CLI lists its commands.
    from cli.report import OutputFormat, render_report
    from cli.scan import check_sources
    from cli.sources import expand_paths

    try:
        settings = build_scan_settings(args)
    except SettingsError as exc:
        print_error(str(exc))
        return EXIT_USAGE
    sources, path_errors = expand_paths(args.paths)
    report = check_sources(sources, settings, stdin=sys.stdin.buffer, errors=path_errors)
    for error in report.errors:
        print_error(str(error))
    print_skipped(report.skipped, strict=report.strict)
    sys.stdout.write(render_report(report, OutputFormat(args.output)))
    sys.stdout.flush()
    return report.exit_code
