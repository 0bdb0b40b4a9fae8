"""Fenced code blocks of a Markdown file, by section, and the shell commands in them.

What the documentation tests share: they run the commands the documents show, so a reader who copies
them gets what the documents promise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^```(\S*)\s*$")
_HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")
_PROMISE = re.compile(r"#.*\bexits (\d+)\b")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, the section it is in, its first line's number and its text."""

    language: str
    section: str
    line: int
    text: str


@dataclass(frozen=True)
class Command:
    """One shell command (continuation lines joined in the text as written) and the exit code promised
    for it: a trailing comment `# exits N ...`, else 0."""

    text: str
    line: int
    exit_code: int


def blocks(path: Path) -> list[Block]:
    """Every fenced block, with the `##` section (level-2 heading) it is under."""
    found: list[Block] = []
    section = ""
    language: str | None = None
    start = 0
    body: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = _FENCE.match(line)
        if language is None:
            heading = _HEADING.match(line)
            if heading and len(heading.group(1)) == 2:
                section = heading.group(2)
            if fence:
                language, start, body = fence.group(1), number + 1, []
        elif fence and not fence.group(1):
            found.append(Block(language, section, start, "\n".join(body) + "\n"))
            language = None
        else:
            body.append(line)
    return found


def section_blocks(path: Path, section: str, *languages: str) -> list[Block]:
    return [b for b in blocks(path) if b.section == section and b.language in languages]


def shell_commands(block: Block) -> list[Command]:
    """The commands of a `sh` block: comment-only and empty lines dropped, `\\` continuations joined."""
    commands: list[Command] = []
    pending: list[str] = []
    first = 0
    for offset, line in enumerate(block.text.splitlines()):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            first = block.line + offset
        pending.append(line)
        if line.rstrip().endswith("\\"):
            continue
        promise = _PROMISE.search(line)
        commands.append(Command("\n".join(pending), first, int(promise.group(1)) if promise else 0))
        pending = []
    assert not pending, f"line {first}: a continued command never ends"
    return commands
