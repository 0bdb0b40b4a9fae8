"""Apply JSON Patch operations to YAML text so that a diff shows only the fix.

The text is loaded with ruamel.yaml's round-trip loader (comments, key order, quoting and the file's
indentation survive), the operations are applied to that tree, and the tree is dumped again. A quoted
scalar that is replaced stays quoted the same way. `edit_stream` is the whole job for one file.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError as RuamelYAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, ScalarString

from policies import PatchError, PatchOp, apply_op, split_pointer

logger = logging.getLogger(__name__)

_WIDTH = 4096
_RESERVED_STARTS = frozenset("@`")


class EditError(Exception):
    """The round-trip edit cannot be made faithfully (the caller falls back to a plain dump)."""


@dataclass(frozen=True, slots=True)
class Indentation:
    """ruamel's terms: `mapping` and `sequence` indents, and the dash `offset` inside a sequence indent."""

    mapping: int = 2
    sequence: int = 2
    offset: int = 0


def guess_indentation(text: str) -> Indentation:
    """The file's own indentation, from the first nested mapping and the first block sequence in it."""
    mapping: int | None = None
    sequence: int | None = None
    offset: int | None = None
    parent_col: int | None = None
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        col = len(raw) - len(raw.lstrip(" "))
        if parent_col is not None and col > parent_col:
            if stripped.startswith("- ") and sequence is None:
                after_dash = len(stripped) - len(stripped[1:].lstrip(" "))
                offset = col - parent_col
                sequence = offset + after_dash
            elif not stripped.startswith("-") and mapping is None:
                mapping = col - parent_col
        if mapping is not None and sequence is not None:
            break
        content = stripped.split(" #", 1)[0].rstrip()
        parent_col = col + (2 if stripped.startswith("- ") else 0) if content.endswith(":") else None
    result_mapping = mapping or 2
    result_offset = offset if offset is not None else 0
    result_sequence = sequence if sequence is not None else result_offset + 2
    return Indentation(result_mapping, max(result_sequence, result_offset + 2), result_offset)


def _has_explicit_start(text: str) -> bool:
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("%"):
            continue
        return stripped == "---" or stripped.startswith("--- ")
    return False


def make_round_trip_yaml(text: str) -> YAML:
    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = _WIDTH
    indentation = guess_indentation(text)
    rt.indent(mapping=indentation.mapping, sequence=indentation.sequence, offset=indentation.offset)
    rt.explicit_start = _has_explicit_start(text)
    return rt


def quote_reserved(value: Any) -> Any:
    """New strings that YAML cannot write plain (``@type``) get double quotes, as manifests usually have."""
    if isinstance(value, str) and not isinstance(value, ScalarString):
        return DoubleQuotedScalarString(value) if value[:1] in _RESERVED_STARTS else value
    if isinstance(value, Mapping):
        return {quote_reserved(key): quote_reserved(item) for key, item in value.items()}
    if isinstance(value, list):
        return [quote_reserved(item) for item in value]
    return value


def apply_ops_round_trip(document: Any, ops: Sequence[PatchOp]) -> Any:
    """Apply operations to a ruamel tree in place, keeping the quoting style of replaced scalars."""
    for op in ops:
        value = quote_reserved(op.value)
        if op.op in ("add", "replace"):
            previous = _value_at(document, op.path)
            if isinstance(previous, ScalarString) and isinstance(value, str):
                value = type(previous)(value)
        document = apply_op(document, PatchOp(op.op, op.path, value))
    return document


def _value_at(document: Any, path: str) -> Any:
    node = document
    for token in split_pointer(path):
        if isinstance(node, Mapping) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


def edit_stream(
    text: str, edits: Mapping[int, Sequence[PatchOp]], *, expected: Sequence[Mapping[str, Any]]
) -> str:
    """Apply `edits` (stream document index -> operations) to YAML text and return the new text.

    `expected` is every non-empty mapping document (List items flattened) as the fix should leave it;
    the output is parsed again and compared with it, so a round trip that would change meaning raises
    `EditError` instead of writing something the engine did not mean.
    """
    rt = make_round_trip_yaml(text)
    try:
        documents = list(rt.load_all(text))
    except RuamelYAMLError as exc:
        raise EditError(f"round-trip parse failed: {' '.join(str(exc).split())}") from None
    for index, ops in sorted(edits.items()):
        if index >= len(documents):
            raise EditError(f"document {index + 1} is missing from the round-trip parse")
        try:
            documents[index] = apply_ops_round_trip(documents[index], ops)
        except PatchError as exc:
            raise EditError(f"document {index + 1}: {exc}") from None
    kept = [document for document in documents if document is not None]
    buffer = io.StringIO()
    if kept:
        rt.dump_all(kept, buffer)
    output = buffer.getvalue()
    if _flatten(list(yaml.load_all(output, Loader=yaml.CSafeLoader))) != list(expected):
        raise EditError("the round-trip output does not match the fixed documents")
    return output


def _flatten(documents: Sequence[Any]) -> list[Any]:
    """Mapping documents in order, the items of a `List` in its place (as `sources` reads them)."""
    flat: list[Any] = []
    for document in documents:
        if not isinstance(document, dict):
            continue
        items = document.get("items")
        if str(document.get("kind", "")).endswith("List") and isinstance(items, list):
            flat.extend(item for item in items if isinstance(item, dict))
        else:
            flat.append(document)
    return flat


def plain_edit_stream(text: str, edits: Mapping[int, Sequence[PatchOp]]) -> str:
    """The fallback: the same edits on plain data, dumped without comments (key order kept)."""
    documents = list(yaml.load_all(text, Loader=yaml.CSafeLoader))
    for index, ops in edits.items():
        document: Any = documents[index]
        for op in ops:
            document = apply_op(document, op)
        documents[index] = document
    return dump_plain_yaml([document for document in documents if document is not None])


def dump_plain_yaml(documents: Sequence[Any]) -> str:
    """Plain data as block YAML (for JSON inputs printed by `fix`)."""
    return yaml.safe_dump_all(list(documents), sort_keys=False, allow_unicode=True, width=_WIDTH)
