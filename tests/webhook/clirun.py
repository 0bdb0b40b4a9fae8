"""What the `check` and `fix` CLI tests share: the shipped examples, the seed's Service, and one run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cli.main import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"
SEED_BAD = EXAMPLES / "seed-bad.yaml"
SEED_CORRECTED = EXAMPLES / "seed-corrected.yaml"
SERVICE = ["--service", "llm-d-inference-scheduler/gaie-inference-scheduling-epp=10.96.45.12:9002"]
SCRIPT = Path(sys.executable).parent / "extproc-guard"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`extproc-guard ARGV` in process: exit code, stdout, stderr."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
