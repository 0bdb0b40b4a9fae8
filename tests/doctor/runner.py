"""Run `extproc-guard doctor` in-process and capture its exit code and output.

The parser is the CLI's own parser class with only the doctor command (registered the way the CLI registers
every command), so these tests exercise the doctor's flags, output and exit codes without depending on the
other sub-commands.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from cli.commands import doctor
from cli.main import _Parser


@dataclass(frozen=True)
class DoctorRun:
    code: int
    stdout: str
    stderr: str


def run_doctor(argv: Sequence[str], *, stdin: str | None = None) -> DoctorRun:
    parser = _Parser(prog="extproc-guard")
    subparsers = parser.add_subparsers(dest="command", parser_class=_Parser)
    doctor.register(cast("argparse._SubParsersAction[argparse.ArgumentParser]", subparsers))
    out, err = io.StringIO(), io.StringIO()
    saved_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8")  # like the real one
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                args = parser.parse_args(["doctor", *argv])
                handler = cast(Callable[[argparse.Namespace], int], args.handler)
                code = handler(args)
            except SystemExit as exit_:
                code = int(exit_.code or 0)
    finally:
        sys.stdin = saved_stdin
    return DoctorRun(code, out.getvalue(), err.getvalue())
