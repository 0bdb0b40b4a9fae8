"""`extproc-guard fix PATH... | -`: print the corrected documents, or rewrite the files with `--in-place`.

Only the paths a rule owns change; comments, key order and every unrelated document stay as they were.
Findings that a fix cannot settle (a Service nobody said the address of, a cluster nobody defines) are
printed on stderr. Exit 0 when everything is fixed, 1 when an `enforce` finding remains, 2 for a usage
error or an unreadable input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from cli.commands.check import EXIT_USAGE, add_input_arguments, build_scan_settings, print_skipped
from cli.settings import SettingsError, print_error

if TYPE_CHECKING:
    from cli.repair import SourceFix
    from cli.report import DocumentResult
    from cli.sources import SkippedInput

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "fix",
        help="print (or write back) EnvoyFilters in their corrected form",
        description="Apply every rule's fix; print all documents as YAML, or rewrite files with --in-place.",
    )
    add_input_arguments(parser)
    parser.add_argument(
        "-i",
        "--in-place",
        action="store_true",
        help="rewrite the files instead of printing (comments and key order are kept)",
    )
    parser.set_defaults(handler=run_fix)


def run_fix(args: argparse.Namespace) -> int:
    # The engine and the YAML round-trip editor load here, not when the CLI lists its commands.
    from cli.repair import fix_source
    from cli.report import enforced
    from cli.scan import parsed_only, read_and_parse, with_context
    from cli.sources import InputError, expand_paths

    if args.in_place and "-" in args.paths:
        print_error("--in-place cannot rewrite stdin; drop '-' or --in-place")
        return EXIT_USAGE
    try:
        settings = build_scan_settings(args)
    except SettingsError as exc:
        print_error(str(exc))
        return EXIT_USAGE
    sources, errors = expand_paths(args.paths)
    outcomes: list[SourceFix] = []
    skipped: list[SkippedInput] = []
    parsed = read_and_parse(sources, settings, stdin=sys.stdin.buffer)
    settings = with_context(settings, parsed_only(parsed))
    for item in parsed:
        if isinstance(item, InputError):
            errors.append(item)
            continue
        if item.skipped is not None:
            skipped.append(item.skipped)
            continue
        assert item.text is not None
        outcome = fix_source(item.source, item.text, settings, item)
        errors.extend(outcome.errors)
        outcomes.append(outcome)
        if args.in_place:
            write_outcome(outcome)
    if not args.in_place:
        print_documents(outcomes)
    for error in errors:
        print_error(str(error))
    print_skipped(skipped, strict=settings.strict)
    remaining = [result for outcome in outcomes for result in outcome.remaining]
    report_remaining(remaining)
    if errors or (settings.strict and skipped):
        return EXIT_USAGE
    return 1 if any(enforced(result) for result in remaining) else 0


def write_outcome(outcome: SourceFix) -> None:
    """Rewrite a changed file; a file with an unreadable document is left alone."""
    from cli.repair import write_in_place

    path = outcome.source.path
    if path is None or outcome.text is None or not outcome.changed or outcome.errors:
        return
    write_in_place(path, outcome.text)
    count = sum(len(result.findings) for result in outcome.fixed)
    note = "" if outcome.kept_comments else " (comments could not be kept)"
    sys.stderr.write(f"extproc-guard: fixed {outcome.source.name}: {count} finding(s){note}\n")


def print_documents(outcomes: list[SourceFix]) -> None:
    """Every file's documents as one stream, each file's text exactly as fixed (or as read); `---` goes
    between two files unless the second starts with its own."""
    previous: str | None = None
    for outcome in outcomes:
        text = outcome.yaml_text
        if not text or not text.strip():
            continue
        if previous is not None:
            if not previous.endswith("\n"):
                sys.stdout.write("\n")
            if not text.startswith("---"):
                sys.stdout.write("---\n")
        sys.stdout.write(text)
        previous = text
        if not outcome.kept_comments:
            sys.stderr.write(
                f"extproc-guard: warning: {outcome.source.name}: printed without comments "
                "(the round-trip edit did not reproduce the fix exactly)\n"
            )
    sys.stdout.flush()


def report_remaining(results: list[DocumentResult]) -> None:
    from cli.report import finding_lines

    for line in finding_lines(results):
        sys.stderr.write(f"{line}\n")
