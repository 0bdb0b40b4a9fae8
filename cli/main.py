"""`extproc-guard`: one CLI for every role (check, fix, serve, reconcile, epp, certs, doctor, ...)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import cast

from cli.commands import command_modules

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


_EPILOG = "Run `extproc-guard COMMAND --help` for a command's flags and exit codes."


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line instead of a usage dump on bad arguments."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _VersionAction(argparse.Action):
    """`--version`: print the package's version and exit; `importlib.metadata` loads only here."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object, **__: object) -> None:
        from cli.version import version_text

        print(version_text())
        parser.exit(EXIT_OK)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="extproc-guard",
        description="Keep the Envoy ext_proc path from an Istio gateway to an Endpoint Picker correct.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in command_modules():
        module.register(subparsers)
    return parser


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # A bare `extproc-guard`: the list of commands, not only "COMMAND is required".
        parser.print_help(sys.stderr)
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: give a COMMAND (listed above)\n")
    configure_logging(args.verbose)
    handler = cast(Callable[[argparse.Namespace], int], args.handler)
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): silence the flush at exit and do not claim success.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FINDINGS


if __name__ == "__main__":
    raise SystemExit(main())
