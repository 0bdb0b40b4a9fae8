"""`fix` for one source: evaluate every document, apply the engine's patch, produce the new text.

YAML keeps its comments, key order and quoting (ruamel round trip, checked against the engine's fixed
documents); if that round trip cannot be made faithfully the same patch is applied to plain data and
dumped without comments, and `kept_comments` says so. JSON files stay JSON when rewritten in place.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.report import DocumentResult
from cli.scan import (
    CheckedDocument,
    ParsedSource,
    ScanSettings,
    compute_fix,
    iter_checked,
    locate_findings,
    parse_source,
)
from cli.sources import InputError, Source
from cli.yamledit import EditError, dump_plain_yaml, edit_stream, plain_edit_stream
from policies import PatchOp, apply_op

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceFix:
    """The outcome of fixing one source.

    `text` is the whole new content (None when the source could not be parsed); `yaml_text` is the same
    documents as YAML (what `fix` prints). `remaining` are the findings left after the fix, placed on
    the lines of the original text.
    """

    source: Source
    text: str | None
    yaml_text: str | None
    changed: bool
    fixed: tuple[DocumentResult, ...]
    remaining: tuple[DocumentResult, ...]
    errors: tuple[InputError, ...]
    kept_comments: bool = True


def fix_source(
    source: Source, text: str, settings: ScanSettings, parsed: ParsedSource | None = None
) -> SourceFix:
    """Fix one source; `parsed` is its parse when the caller already has it (to build the context)."""
    checked: list[CheckedDocument] = []
    errors: list[InputError] = []
    if parsed is None:
        parsed = parse_source(source, text)
    try:
        for item in iter_checked(parsed, settings):
            if isinstance(item, InputError):
                errors.append(item)
                continue
            try:
                checked.append(compute_fix(item))
            except InputError as exc:
                errors.append(exc)
    except InputError as exc:
        return SourceFix(source, None, None, False, (), (), (*errors, exc))
    edits: dict[int, list[PatchOp]] = {}
    expected: list[dict[str, Any]] = []
    for item in checked:
        evaluation = item.evaluation
        if evaluation is not None and evaluation.patch:
            prefix = item.document.prefix
            edits.setdefault(item.document.index, []).extend(
                PatchOp(op.op, prefix + op.path, op.value) for op in evaluation.patch
            )
        expected.append(evaluation.fixed if evaluation is not None else item.document.data)
    fixed: list[DocumentResult] = []
    remaining: list[DocumentResult] = []
    for item in checked:
        if item.evaluation is None:
            continue
        if item.evaluation.patch:
            fixed.append(locate_findings(item.document, item.evaluation.findings))
        if item.evaluation.remaining:
            remaining.append(locate_findings(item.document, item.evaluation.remaining))
    if _is_json(source, text):
        new_text, yaml_text = _fix_json(text, edits)
        return SourceFix(
            source, new_text, yaml_text, bool(edits), tuple(fixed), tuple(remaining), tuple(errors)
        )
    if not edits:
        return SourceFix(source, text, text, False, tuple(fixed), tuple(remaining), tuple(errors))
    kept_comments = True
    try:
        new_text = edit_stream(text, edits, expected=expected)
    except EditError as exc:
        logger.info("round-trip edit failed file=%s reason=%s", source.name, exc)
        new_text = plain_edit_stream(text, edits)
        kept_comments = False
    return SourceFix(
        source, new_text, new_text, True, tuple(fixed), tuple(remaining), tuple(errors), kept_comments
    )


def _is_json(source: Source, text: str) -> bool:
    if source.is_json:
        return True
    if source.path is not None or text.lstrip()[:1] not in ("{", "["):
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _fix_json(text: str, edits: dict[int, list[PatchOp]]) -> tuple[str, str]:
    document: Any = json.loads(text)
    for op in edits.get(0, []):
        document = apply_op(document, op)
    indent = _json_indent(text)
    new_text = json.dumps(document, indent=indent, ensure_ascii=False) + "\n"
    return (new_text if edits else text), dump_plain_yaml([document])


def _json_indent(text: str) -> int | None:
    lines = text.splitlines()
    if len(lines) < 2:
        return None
    second = lines[1]
    width = len(second) - len(second.lstrip(" "))
    return width or 2


def write_in_place(path: Path, text: str) -> None:
    """Replace a file's content atomically (a temporary file beside it, then rename), keeping its mode."""
    path = path.resolve()
    mode = path.stat().st_mode & 0o7777
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
