"""What the `check` and `fix` CLI tests share besides the documents (`tests.documents`): the seed's Service,
the installed command, and one run in process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cli.main import main

SERVICE = ["--service", "llm-d-inference-scheduler/gaie-inference-scheduling-epp=10.96.45.12:9002"]
SCRIPT = Path(sys.executable).parent / "extproc-guard"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`extproc-guard ARGV` in process: exit code, stdout, stderr."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
