"""`extproc-guard`: one CLI for every role (check, fix, serve, reconcile, epp, certs, doctor, ...)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import cast

from cli.commands import command_module, command_modules, command_names

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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser with every command, or with only `command` (a module name, `sim_model`): a command
    line that runs one command parses the same with either (a test compares them)."""
    parser = _Parser(
        prog="extproc-guard",
        description="Keep the Envoy ext_proc path from an Istio gateway to an Endpoint Picker correct.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in command_modules() if command is None else [command_module(command)]:
        module.register(subparsers)
    return parser


_VERBOSE = re.compile(r"-v+|--verbose")
_COMMAND_WORD = re.compile(r"[a-z][a-z0-9-]*")


def command_to_run(argv: Sequence[str]) -> str | None:
    """The command module `argv` runs when it is plain (`[-v...] COMMAND ...`): the parser then needs that
    command alone, not every command's module. None for anything else (`--help` before the command, an
    unknown command, no command), which needs every command to list or to name in its error."""
    for arg in argv:
        if _VERBOSE.fullmatch(arg):
            continue
        # a command is registered as its module's name with `-` for `_` (`sim-model`, `sim_model.py`)
        name = arg.replace("-", "_")
        return name if _COMMAND_WORD.fullmatch(arg) and name in command_names() else None
    return None


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(command_to_run(argv))
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
