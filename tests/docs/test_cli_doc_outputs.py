"""docs/cli.md shows real output: each `$ command` of its console blocks, run in a fresh clone, prints
what the document shows below it (stderr, then stdout), and `$ echo $?` shows its exit code.

Blocks about inputs the repository does not ship are not run (`NOT_RUN`, with the reason).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docs.conftest import ROOT
from tests.docs.markdown import Block, blocks

CLI_DOC = ROOT / "docs" / "cli.md"
NOT_RUN = {"Bad input": "it shows inputs the repository does not ship (broken, huge and empty files)"}
_DIFF_HEADER = re.compile(r"^(---|\+\+\+) (\S+)\t.*$")


@dataclass
class Step:
    command: str
    line: int
    expected: list[str] = field(default_factory=list)


def console_blocks() -> list[Block]:
    return [b for b in blocks(CLI_DOC) if b.language == "console"]


def steps_of(block: Block) -> list[Step]:
    steps: list[Step] = []
    for offset, line in enumerate(block.text.splitlines()):
        if line.startswith("$ "):
            steps.append(Step(line[2:], block.line + offset))
        else:
            assert steps, f"docs/cli.md line {block.line + offset}: output before any command"
            steps[-1].expected.append(line)
    return steps


def without_diff_times(lines: list[str]) -> list[str]:
    """`diff -u` headers carry the files' times; the document shows the names only."""
    return [_DIFF_HEADER.sub(r"\1 \2", line) for line in lines]


@pytest.mark.parametrize(
    "block", console_blocks(), ids=[f"{b.section} line {b.line}" for b in console_blocks()]
)
def test_the_documented_output_is_what_the_command_prints(block: Block, clone: Path) -> None:
    if block.section in NOT_RUN:
        pytest.skip(NOT_RUN[block.section])
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    last_exit: int | None = None
    for step in steps_of(block):
        where = f"docs/cli.md line {step.line}: {step.command}"
        if step.command == "echo $?":
            assert step.expected == [str(last_exit)], where
            continue
        done = subprocess.run(
            ["bash", "-c", step.command],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=clone,
            env=env,
        )
        last_exit = done.returncode
        printed = without_diff_times((done.stderr + done.stdout).splitlines())
        assert printed == step.expected, where


def test_every_console_block_but_the_stated_ones_is_run() -> None:
    sections = {b.section for b in console_blocks()}
    assert set(NOT_RUN) <= sections
    assert {"check", "fix"} <= sections
