"""Apply JSON Patch operations to YAML text so that a diff shows only the fix.

`edit_stream` edits the text itself: each operation becomes a replacement of a range of the original
characters (a scalar, a value's lines, the lines of a new member or item), found through libyaml's node
marks. Everything outside the changed paths stays byte for byte: other documents and their separators,
comments, blank lines, trailing spaces, quoting and indentation. A replaced scalar keeps its quoting and
the column of its trailing comment; new members and items are written in the file's own indentation.
The result is parsed again and compared with the engine's fixed documents; a shape the text editor does
not handle (a flow collection that must grow, a directive) goes through ruamel.yaml's round trip of
the edited documents only, and `EditError` means neither could reproduce the fix.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
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
    the output is parsed again and compared with it, so an edit that would change meaning raises
    `EditError` instead of writing something the engine did not mean.
    """
    slices = split_documents(text)
    try:
        output = _splice(slices, edits, edit_document_text)
        _verify(output, expected)
        return output
    except EditError as exc:
        logger.info("text edit not possible, using the round trip of the edited documents: %s", exc)
    output = _splice(slices, edits, _round_trip_document)
    _verify(output, expected)
    return output


def _splice(
    slices: Sequence[str],
    edits: Mapping[int, Sequence[PatchOp]],
    edit: Callable[[str, Sequence[PatchOp], str], str],
) -> str:
    whole = "".join(slices)
    parts = list(slices)
    for index, ops in sorted(edits.items()):
        if index >= len(parts):
            raise EditError(f"document {index + 1} is missing from the stream")
        try:
            parts[index] = edit(parts[index], ops, whole)
        except PatchError as exc:
            raise EditError(f"document {index + 1}: {exc}") from None
    return "".join(parts)


def _verify(output: str, expected: Sequence[Mapping[str, Any]]) -> None:
    try:
        documents = list(yaml.load_all(output, Loader=yaml.CSafeLoader))
    except yaml.YAMLError as exc:
        raise EditError(f"the edited text does not parse: {' '.join(str(exc).split())}") from None
    if _flatten(documents) != list(expected):
        raise EditError("the edited text does not match the fixed documents")


def split_documents(text: str) -> list[str]:
    """The stream cut into one slice per document, in order; joined they are `text` again.

    A slice runs from its document's start (its `---`, or the first content of an implicit first
    document; text before the first document belongs to the first slice) to the next one's start.
    """
    starts: list[int] = []
    try:
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            if isinstance(event, yaml.DocumentStartEvent) and event.start_mark is not None:
                starts.append(int(event.start_mark.index))
    except yaml.YAMLError as exc:
        raise EditError(f"the text does not parse: {' '.join(str(exc).split())}") from None
    if not starts:
        return [text]
    bounds = [0, *starts[1:], len(text)]
    return [text[begin:end] for begin, end in itertools.pairwise(bounds)]


def _round_trip_document(part: str, ops: Sequence[PatchOp], whole: str) -> str:
    """The fallback for one document: ruamel's round trip of that document alone."""
    rt = make_round_trip_yaml(whole)
    rt.explicit_start = _has_explicit_start(part)
    try:
        document = rt.load(part)
    except RuamelYAMLError as exc:
        raise EditError(f"round-trip parse failed: {' '.join(str(exc).split())}") from None
    document = apply_ops_round_trip(document, ops)
    buffer = io.StringIO()
    rt.dump(document, buffer)
    return buffer.getvalue()


# Editing the text of one document ---------------------------------------------------------------------


def edit_document_text(part: str, ops: Sequence[PatchOp], whole: str) -> str:
    """Apply `ops` to the text of one document by replacing ranges of its characters."""
    if _DIRECTIVE.search(part):
        raise EditError("a document with a directive (%YAML, %TAG) is not edited as text")
    style = _TextStyle.of(whole)
    for op in ops:
        if op.op == "test":
            continue
        root = _compose(part)
        part = _TextEdit(part, root, style).apply(op)
    return part


_DIRECTIVE = re.compile(r"^%", re.MULTILINE)
_COMMENT_GAP = re.compile(r"[ \t]+#")


@dataclass(frozen=True, slots=True)
class _TextStyle:
    indentation: Indentation
    newline: str

    @classmethod
    def of(cls, text: str) -> _TextStyle:
        return cls(guess_indentation(text), "\r\n" if "\r\n" in text else "\n")


def _compose(part: str) -> yaml.Node:
    try:
        root = yaml.compose(part, Loader=yaml.CSafeLoader)
    except yaml.YAMLError as exc:
        raise EditError(f"the document does not parse: {' '.join(str(exc).split())}") from None
    if root is None:
        raise EditError("the document is empty")
    return root


def _is_block(node: yaml.Node) -> bool:
    return isinstance(node, yaml.CollectionNode) and not node.flow_style


def _content_end(node: yaml.Node) -> int:
    """Where the node's own text ends: a block collection ends with its last child, not at the blank
    lines and comments libyaml counts up to the next token."""
    while _is_block(node) and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    return int(node.end_mark.index)


class _TextEdit:
    """One operation on one document's text."""

    def __init__(self, text: str, root: yaml.Node, style: _TextStyle) -> None:
        self.text = text
        self.root = root
        self.style = style

    # positions

    def line_start(self, index: int) -> int:
        return self.text.rfind("\n", 0, index) + 1

    def line_end(self, index: int) -> int:
        """The start of the line after the one holding `index` (the end of the text on the last line)."""
        found = self.text.find("\n", index)
        return len(self.text) if found < 0 else found + 1

    def column(self, index: int) -> int:
        return index - self.line_start(index)

    def after_colon(self, key: yaml.Node) -> int:
        found = self.text.find(":", int(key.end_mark.index))
        if found < 0:
            raise EditError(f"no ':' after key {key.value!r}")
        return found + 1

    def replace(self, begin: int, end: int, new: str) -> str:
        return self.text[:begin] + new + self.text[end:]

    # lookups

    def resolve(self, tokens: Sequence[str]) -> yaml.Node:
        node = self.root
        for token in tokens:
            child = self.child(node, token)
            if child is None:
                raise PatchError(f"/{'/'.join(tokens)}: no member {token!r}")
            node = child[1]
        return node

    def child(self, node: yaml.Node, token: str) -> tuple[yaml.Node | None, yaml.Node] | None:
        """(key node or None, value node) of a mapping member or sequence item."""
        if isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):  # the last of duplicate keys is the one that loads
                if isinstance(key, yaml.ScalarNode) and key.value == token:
                    return key, value
            return None
        if isinstance(node, yaml.SequenceNode):
            if token.isdigit() and int(token) < len(node.value):
                return None, node.value[int(token)]
            return None
        return None

    # operations

    def apply(self, op: PatchOp) -> str:
        tokens = split_pointer(op.path)
        if not tokens:
            raise EditError("an operation on a whole document is not edited as text")
        parent = self.resolve(tokens[:-1])
        token = tokens[-1]
        found = self.child(parent, token)
        if op.op == "remove":
            if found is None:
                raise PatchError(f"{op.path}: nothing to remove")
            return self.remove(parent, found)
        if isinstance(parent, yaml.SequenceNode) and op.op == "add":
            return self.insert_item(parent, token, op.value)
        if found is None:
            if op.op == "replace":
                raise PatchError(f"{op.path}: no member {token!r} to replace")
            if not isinstance(parent, yaml.MappingNode):
                raise PatchError(f"{op.path}: cannot add a member to a scalar")
            return self.add_member(parent, token, op.value)
        key, value = found
        return self.replace_value(key, value, op.value)

    def replace_value(self, key: yaml.Node | None, node: yaml.Node, value: Any) -> str:
        collection = isinstance(value, Mapping | list) and bool(value)
        if not collection:
            scalar = render_scalar(value, node.style if isinstance(node, yaml.ScalarNode) else None)
            if _is_block(node):
                begin = self.after_colon(key) if key is not None else int(node.start_mark.index)
                prefix = " " if key is not None else ""
                return self.replace(begin, _content_end(node), prefix + scalar)
            if isinstance(node, yaml.ScalarNode) and node.value == "" and node.style is None:
                if key is None:
                    raise EditError("an empty sequence item is not edited as text")
                colon = self.after_colon(key)
                return self.replace(colon, colon, " " + scalar)
            return self.replace_inline(int(node.start_mark.index), int(node.end_mark.index), scalar)
        if _is_block(node):
            begin = int(node.start_mark.index)
            lines = self.render(value, self.column(begin))
            return self.replace(begin, _content_end(node), lines.lstrip(" ").rstrip("\r\n"))
        # a scalar, an empty value or a flow collection becomes a block under its key
        if key is None:
            column = self.column(int(node.start_mark.index))
            lines = self.render(value, column).lstrip(" ").rstrip("\r\n")
            return self.replace(int(node.start_mark.index), int(node.end_mark.index), lines)
        column = self.child_column(key, value)
        lines = self.render(value, column).rstrip("\r\n")
        colon = self.after_colon(key)
        end = int(node.end_mark.index) if node.end_mark.index > colon else colon
        return self.replace(colon, end, self.style.newline + lines)

    def child_column(self, key: yaml.Node, value: Any) -> int:
        indentation = self.style.indentation
        base = int(key.start_mark.column)
        return base + (indentation.offset if isinstance(value, list) else indentation.mapping)

    def replace_inline(self, begin: int, end: int, new: str) -> str:
        """Replace a one-line scalar, keeping the column of a comment after it on the same line."""
        if "\n" in self.text[begin:end]:
            raise EditError("a multi-line scalar is not edited as text")
        rest_end = self.text.find("\n", end)
        rest = self.text[end : len(self.text) if rest_end < 0 else rest_end]
        gap = _COMMENT_GAP.match(rest)
        if gap is not None:
            width = max(1, gap.end() - 1 - (len(new) - (end - begin)))
            return self.text[:begin] + new + " " * width + self.text[end + gap.end() - 1 :]
        return self.replace(begin, end, new)

    def add_member(self, mapping: yaml.MappingNode, key: str, value: Any) -> str:
        if not _is_block(mapping) or not mapping.value:
            raise EditError(f"adding {key!r} to a flow or empty mapping is not edited as text")
        column = int(mapping.value[0][0].start_mark.column)
        lines = self.render({key: value}, column)
        return self.insert_lines(_content_end(mapping), lines)

    def insert_item(self, sequence: yaml.SequenceNode, token: str, value: Any) -> str:
        if not _is_block(sequence) or not sequence.value:
            raise EditError("adding to a flow or empty sequence is not edited as text")
        items = sequence.value
        position = len(items) if token == "-" else int(token) if token.isdigit() else -1
        if not 0 <= position <= len(items):
            raise PatchError(f"{token!r} is not an index of the sequence")
        dash = int(sequence.start_mark.index)
        if self.text[dash : dash + 1] != "-":
            raise EditError("a sequence without a leading dash is not edited as text")
        lines = self.render([value], self.column(dash), sequence=True)
        if position == len(items):
            return self.insert_lines(_content_end(sequence), lines)
        at = self.line_start(int(items[position].start_mark.index))
        return self.replace(at, at, lines)

    def insert_lines(self, content_end: int, lines: str) -> str:
        at = self.line_end(content_end)
        prefix = "" if at == 0 or self.text[at - 1] == "\n" else self.style.newline
        return self.replace(at, at, prefix + lines)

    def remove(self, parent: yaml.Node, found: tuple[yaml.Node | None, yaml.Node]) -> str:
        key, value = found
        if not _is_block(parent) or len(parent.value) < 2:
            raise EditError("removing the only entry, or from a flow collection, is not edited as text")
        first = key if key is not None else value
        begin = self.line_start(int(first.start_mark.index))
        if self.text[begin : int(first.start_mark.index)].strip(" -"):
            raise EditError("an entry that shares its line with another is not removed as text")
        return self.replace(begin, self.line_end(_content_end(value)), "")

    # rendering

    def render(self, value: Any, column: int, *, sequence: bool = False) -> str:
        """`value` as block YAML in the file's indentation, every line indented to `column` (for a
        sequence: its dashes at `column`)."""
        indentation = self.style.indentation
        rt = YAML(typ="rt")
        rt.width = _WIDTH
        rt.indent(mapping=indentation.mapping, sequence=indentation.sequence, offset=indentation.offset)
        buffer = io.StringIO()
        rt.dump(quote_reserved(value), buffer)
        lines = buffer.getvalue().splitlines()
        shift = column - (indentation.offset if sequence else 0)
        if shift < 0:
            raise EditError("a sequence that starts left of its dash offset is not edited as text")
        newline = self.style.newline
        return "".join(" " * shift + line + newline if line else newline for line in lines)


_PLAIN_UNSAFE_START = frozenset("-?:,[]{}#&*!|>'\"%@`")


def render_scalar(value: Any, style: str | None) -> str:
    """One scalar as YAML text, in the quoting `style` of the scalar it replaces when it can be."""
    if not isinstance(value, str):
        if isinstance(value, Mapping | list):
            return "{}" if isinstance(value, Mapping) else "[]"
        text = yaml.safe_dump(value, default_flow_style=True, width=_WIDTH)
        return text.split("\n", 1)[0].removesuffix("...").strip()
    if style == "'" and "\n" not in value:
        return "'" + value.replace("'", "''") + "'"
    if style in (None, "") and _plain_is_safe(value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _plain_is_safe(value: str) -> bool:
    if not value or value != value.strip() or value[0] in _PLAIN_UNSAFE_START:
        return False
    if any(mark in value for mark in (": ", " #", "\n", "\t")) or value.endswith(":"):
        return False
    try:
        return bool(yaml.load(value, Loader=yaml.CSafeLoader) == value)
    except yaml.YAMLError:
        return False


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
