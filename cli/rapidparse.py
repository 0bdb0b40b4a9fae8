"""The fast way to read a YAML stream for `check`: rapidyaml parses, and only libyaml's answer is accepted.

rapidyaml (C++) parses a stream several times faster than libyaml builds PyYAML objects. Its JSON output of
each document, loaded by the `json` module, is taken only when it is provably what PyYAML's safe loader
gives for the same text; otherwise `parse_stream` returns None and the caller reads the text with libyaml,
so results (and error messages) never depend on which parser ran:

- text with anchors, aliases, tags, merge keys, directives, complex keys or tabs goes to libyaml;
- rapidyaml writes a plain scalar that YAML 1.1 resolves to a bool, null or number as JSON `true`,
  `null`, `8080`; a number is kept only when PyYAML's own int or float pattern matches its text;
- a JSON string whose text a YAML 1.1 resolver would turn into something else (`"yes"`, `"0x1F"`,
  `"2001-12-14"`, `"~"`) may have been plain in the source, where PyYAML reads it differently: such a
  stream goes to libyaml too.

Line numbers are computed only when a finding asks for one: the document's text (or, when the `---` lines
do not say where it is, the whole stream) is parsed again by rapidyaml and the node's byte offset (of its
key, or of its value) is turned into a line.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

_NONE: Final = 2**64 - 1
"""rapidyaml's "no node" id (`ryml.NONE`) as the bindings return it."""

_NODE_PROPERTY: Final = re.compile(r"(?<![^\s\[\{,])[&*!][^\s,\]\}]")
"""An anchor, alias or tag: `&name`, `*name`, `!tag` where a node may start."""
_DIRECTIVE_OR_COMPLEX_KEY: Final = re.compile(r"^(?:%|[ -]*\?(?:\s|$))", re.MULTILINE)
_WORDS: Final = "yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF|~|null|Null|NULL"
_CANDIDATE: Final = re.compile(
    f'"(?=[-+.0-9yYnNtTfFoO~<=!&*])(?:(?:{_WORDS}|<<|=|!|&|\\*)"|[-+.0-9][^"\\\\]*")'
)
"""A JSON string that may be a YAML 1.1 bool, null, merge or value key, or (checked further) a number or a
timestamp: what PyYAML's implicit resolvers other than str match starts like one of these. (The lookahead
only makes the search quicker: most strings fail on their first character.)"""


_UNUSUAL_CHARACTER: Final = (
    "[^\x0a\x0d\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)
"""Tabs, control characters (which libyaml refuses), YAML 1.1's other line breaks (NEL, U+2028, U+2029)
and byte-order marks: the two parsers may disagree on them."""
_USUAL_ASCII: Final = b"\n\r" + bytes(range(0x20, 0x7F))
"""The ASCII characters `_UNUSUAL_CHARACTER` lets through: ASCII text, where most text stays, is tested with
`bytes.translate` (quicker than a regex), and the full class (milliseconds to compile) only other text."""


@functools.cache
def _unusual_character() -> re.Pattern[str]:
    return re.compile(_UNUSUAL_CHARACTER)


def _has_unusual_character(text: str) -> bool:
    if text.isascii():
        return bool(text.encode("ascii").translate(None, _USUAL_ASCII))
    return _unusual_character().search(text) is not None


def _needs_libyaml(text: str) -> bool:
    """Constructs whose JSON form is not PyYAML's data, or that only libyaml words errors for."""
    if "<<" in text or _has_unusual_character(text):
        return True
    if ("&" in text or "*" in text or "!" in text) and _NODE_PROPERTY.search(text):
        return True
    return ("%" in text or "?" in text) and _DIRECTIVE_OR_COMPLEX_KEY.search(text) is not None


# PyYAML's implicit resolvers (`yaml.resolver.Resolver`) for what a number or a timestamp starts with,
# copied verbatim so that reading a stream here loads no PyYAML; a test keeps them equal to PyYAML's.
_YAML_FLOAT: Final = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_YAML_INT: Final = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
                    |[-+]?0[0-7_]+
                    |[-+]?(?:0|[1-9][0-9_]*)
                    |[-+]?0x[0-9a-fA-F_]+
                    |[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$""",
    re.X,
)
_YAML_TIMESTAMP: Final = re.compile(
    r"""^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
                    |[0-9][0-9][0-9][0-9] -[0-9][0-9]? -[0-9][0-9]?
                     (?:[Tt]|[ \t]+)[0-9][0-9]?
                     :[0-9][0-9] :[0-9][0-9] (?:\.[0-9]*)?
                     (?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$""",
    re.X,
)
_SIGN_RESOLVERS: Final = (("tag:yaml.org,2002:float", _YAML_FLOAT), ("tag:yaml.org,2002:int", _YAML_INT))
_DIGIT_RESOLVERS: Final = (*_SIGN_RESOLVERS, ("tag:yaml.org,2002:timestamp", _YAML_TIMESTAMP))
NUMERIC_RESOLVERS: Final = MappingProxyType(
    {
        "-": _SIGN_RESOLVERS,
        "+": _SIGN_RESOLVERS,
        ".": (("tag:yaml.org,2002:float", _YAML_FLOAT),),
        **dict.fromkeys("0123456789", _DIGIT_RESOLVERS),
    }
)
"""PyYAML's implicit resolvers by the first character of a plain scalar, for `-+.0123456789` (none of them
resolves to str): the characters `_CANDIDATE` sends here."""


def _resolves_to_non_string(text: str) -> bool:
    return any(regexp.match(text) for _, regexp in NUMERIC_RESOLVERS.get(text[:1], ()))


_INT: Final = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT: Final = _YAML_FLOAT


class _NotTheSame(Exception):
    """rapidyaml's reading of a scalar may differ from PyYAML's."""


def _parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise _NotTheSame(text)
    return int(text)


def _parse_float(text: str) -> float:
    if not _FLOAT.match(text):
        raise _NotTheSame(text)
    return float(text)


def _parse_constant(text: str) -> Any:
    raise _NotTheSame(text)


def _load_json(text: str) -> Any:
    """`json.loads`, reading numbers only as PyYAML would (else `_NotTheSame`)."""
    return json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)


def _has_ambiguous_string(encoded: str, numeric: dict[str, bool]) -> bool:
    """Whether a string of the JSON may have been a plain scalar PyYAML reads as something else.
    `numeric` keeps the answers for strings that start like a number (a stream repeats them)."""
    for match in _CANDIDATE.finditer(encoded):
        found = match.group()
        if found[1:2] not in "-+.0123456789":
            return True
        ambiguous = numeric.get(found)
        if ambiguous is None:
            ambiguous = numeric[found] = _resolves_to_non_string(found[1:-1])
        if ambiguous:
            return True
    return False


def parse_stream(text: str) -> list[tuple[Any, StreamLines, int]] | None:
    """Every document of the stream as (data, line finder, position), or None: let libyaml read it."""
    encoded = emit_stream(text)
    documents = load_stream(encoded) if encoded is not None else None
    if documents is None:
        return None
    lines = StreamLines(text.encode("utf-8"), len(documents))
    return [(data, lines, position) for position, data in enumerate(documents)]


def emit_stream(text: str) -> list[str] | None:
    """The first half of `parse_stream`: every document of the stream as rapidyaml's JSON (empty ones too),
    or None when libyaml must read it. `load_stream` finishes (another process may, the text in hand)."""
    if _needs_libyaml(text):
        return None
    try:
        import ryml  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    try:
        with _stderr_silenced():
            tree = ryml.parse_in_arena(text.encode("utf-8"))
    except Exception:  # rapidyaml's own exception types: libyaml reads it and words the error
        return None
    encoded: list[str] = []
    numeric: dict[str, bool] = {}
    for node in _document_nodes(ryml, tree):
        document = ryml.emit_json_malloc(tree, node)
        if document is None or _has_ambiguous_string(document, numeric):
            return None
        encoded.append(document)
    return encoded


def load_stream(encoded: Sequence[str]) -> list[Any] | None:
    """The second half of `parse_stream`: the data of every document `emit_stream` gave, or None when a
    number is not what PyYAML reads (libyaml must read the stream).

    The documents are loaded as one JSON array: `json` then makes the keys the documents share one string
    each (a quarter less memory for a stream of similar manifests, and quicker)."""
    try:
        loaded = _load_json("[" + ",".join(encoded) + "]")
    except (_NotTheSame, ValueError):
        return None
    except RecursionError:  # one level deeper than each document alone: load them one by one
        try:
            loaded = [_load_json(document) for document in encoded]
        except (_NotTheSame, ValueError, RecursionError):
            return None
    documents: list[Any] = loaded
    return documents


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """rapidyaml prints a parse error on file descriptor 2 before it raises; libyaml words it for us."""
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no stderr at all
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _document_nodes(ryml: Any, tree: Any) -> list[int]:
    root = tree.root_id()
    if tree.is_stream(root):
        return list(ryml.children(tree, root))
    if tree.type_str(root) == "NOTYPE":
        return []
    return [root]


class _PyBuffer(ctypes.Structure):
    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


@functools.cache
def _buffer_api() -> tuple[Any, Any]:
    """`PyObject_GetBuffer` and `PyBuffer_Release`, typed once."""
    get = ctypes.pythonapi.PyObject_GetBuffer
    get.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
    get.restype = ctypes.c_int
    release = ctypes.pythonapi.PyBuffer_Release
    release.argtypes = (ctypes.POINTER(_PyBuffer),)
    release.restype = None
    return get, release


def _address(view: Any, buffer: _PyBuffer | None = None) -> int:
    """The memory address a (read-only) buffer starts at."""
    get, release = _buffer_api()
    buffer = buffer if buffer is not None else _PyBuffer()
    reference = ctypes.byref(buffer)
    get(view, reference, 0)
    try:
        return int(buffer.buf or 0)
    finally:
        release(reference)


_ANCHOR_SPACING: Final = 2048
_PREAMBLE: Final = re.compile(rb"(?:[ \t]*(?:#[^\n]*)?\r?\n)*")
"""Blank and comment lines: what may come before a stream's first `---` without making a document."""


def _marker_lines(raw: bytes, marker: bytes) -> list[int]:
    """Offsets of the lines that are `marker` (`---`, `...`) alone or followed by a space or a comment."""
    found: list[int] = []
    start = 0 if raw.startswith(marker) else -1
    while True:
        if start >= 0 and raw[start + 3 : start + 4] in (b"", b" ", b"\t", b"\r", b"\n"):
            found.append(start)
        following = raw.find(b"\n" + marker, start + 1)
        if following < 0:
            return found
        start = following + 1


def document_starts(raw: bytes, count: int) -> list[int] | None:
    """Byte offsets where each of the stream's `count` documents (as rapidyaml counts them) begins, read
    from its `---` lines: every `---` starts a document, and so does anything but blank and comment lines
    before the first one. None when the lines do not say (an `...` end marker, or not one start per
    document); a document's text then runs from its start to the next one's."""
    if count < 2:
        return [0]
    if _marker_lines(raw, b"..."):
        return None
    starts = _marker_lines(raw, b"---")
    preamble = _PREAMBLE.match(raw)
    if not starts or preamble is None or preamble.end() != starts[0]:
        starts.insert(0, 0)
    return starts if len(starts) == count else None


def _child(tree: Any, node: int, token: str) -> int | None:
    """The child of a mapping node by key, or of a sequence node by index; None when there is none."""
    if tree.is_map(node):
        child = tree.find_child(node, token.encode("utf-8"))
    elif tree.is_seq(node) and token.isdigit() and int(token) < tree.num_children(node):
        child = tree.child(node, int(token))
    else:
        return None
    return None if child == _NONE else int(child)


@dataclass(slots=True)
class StreamLines:
    """Lines of a stream's nodes, found by parsing again (in place) when a finding first needs one: only
    the text of the document asked about when the `---` lines say where it is (a document of a stream is
    read alone as it is read in the stream), else the whole stream once."""

    raw: bytes
    count: int = 1
    """How many documents rapidyaml found in the stream (empty ones too)."""
    _tree: Any = field(default=None, init=False)
    _buffer: bytearray | None = field(default=None, init=False)
    _base: int = field(default=0, init=False)
    """The address of `raw`'s first byte as the parsed buffer is laid out (a node's offset is its address
    less this)."""
    _whole: bool = field(default=False, init=False)
    """Whether `_tree` holds the whole stream (else one document's text)."""
    _current: int = field(default=-1, init=False)
    """The document whose text `_tree` holds."""
    _spans: list[int] | None = field(default=None, init=False)
    """Where each document's text begins (`document_starts`; empty when the lines do not say)."""
    _span_lines: list[int] = field(default_factory=list, init=False)
    """The line each of `_spans` is on."""
    _scratch: _PyBuffer = field(default_factory=_PyBuffer, init=False)
    _starts: dict[int, int | None] = field(default_factory=dict, init=False)
    _anchors: list[int] = field(default_factory=lambda: [0], init=False)
    """Byte offsets whose line is known (`_anchor_lines`), sorted: a line is counted from the nearest."""
    _anchor_lines: list[int] = field(default_factory=lambda: [1], init=False)
    _documents: list[int] = field(default_factory=list, init=False)
    _walked: dict[str, list[Any]] = field(default_factory=dict, init=False)
    """The nodes walked to in the parsed document so far, as a tree by token: each entry is [node, the
    entries below it, its line once known]. The findings of a document share most of their paths."""
    fallback: list[Any] | None = field(default=None, init=False)
    """libyaml's node trees of the stream, for the rare node rapidyaml has no position for."""

    def line_of(self, position: int, tokens: Sequence[str]) -> int | None:
        """1-based line of the node at `tokens` in document `position` (or of its deepest ancestor);
        None when rapidyaml keeps no position for that node (an empty collection without a key)."""
        import ryml

        if not tokens and position in self._starts:
            return self._starts[position]
        tree, root = self._parsed(ryml, position)
        node, below, entry = root, self._walked, None
        for token in tokens:
            entry = below.get(token)
            if entry is None:
                child = _child(tree, node, token)
                if child is None:
                    entry = None
                    break
                entry = below[token] = [child, {}, None]
            node, below = entry[0], entry[1]
        if entry is not None and entry[2] is not None:
            return int(entry[2])
        line = self._line_of_node(tree, node)
        if entry is not None:
            entry[2] = line
        if not tokens:
            self._starts[position] = line
        return line

    def release(self) -> None:
        """Drop the parse (the next `line_of` parses again)."""
        self._tree = self._buffer = None
        self._whole = False
        self._current = -1
        self._walked = {}

    def _parsed(self, ryml: Any, position: int) -> tuple[Any, int]:
        """The tree holding document `position`, and that document's node in it."""
        if self._whole:
            return self._tree, self._documents[position]
        if position == self._current:
            return self._tree, self._documents[0]
        if self._spans is None:
            self._spans = document_starts(self.raw, self.count) or []
            line, previous = 1, 0
            for begin in self._spans:
                line += self.raw.count(b"\n", previous, begin)
                self._span_lines.append(line)
                previous = begin
        if position < len(self._spans):
            begin = self._spans[position]
            end = self._spans[position + 1] if position + 1 < len(self._spans) else len(self.raw)
            if self._parse(ryml, begin, end) and len(self._documents) == 1:
                self._current = position
                self._walked = {}
                return self._tree, self._documents[0]
        self._parse(ryml, 0, len(self.raw))
        self._whole = True
        self._walked = {}
        return self._tree, self._documents[position]

    def _parse(self, ryml: Any, begin: int, end: int) -> bool:
        """Parse `raw[begin:end]` in place (reusing the tree); whether it parsed."""
        self._buffer = bytearray(self.raw[begin:end])
        if self._tree is None:
            self._tree = ryml.Tree()
        else:
            self._tree.clear()
            self._tree.clear_arena()
        try:
            ryml.parse_in_place(self._buffer, self._tree)
        except Exception:  # a part of a stream that parsed whole: not expected; the whole stream then
            self._tree = None
            self._documents = []
            if begin == 0 and end == len(self.raw):
                raise
            return False
        self._base = _address(memoryview(self._buffer)) - begin
        self._documents = _document_nodes(ryml, self._tree)
        return True

    def _line_of_node(self, tree: Any, node: int) -> int | None:
        """A member's line is its key's; a value's its text's; a collection's its first member's."""
        while True:
            if tree.has_key(node) and len(key := tree.key(node)):
                return self._line_at(key)
            if tree.has_val(node) and len(value := tree.val(node)):
                return self._line_at(value)
            if not tree.has_children(node):
                return None
            node = tree.first_child(node)

    def _line_at(self, view: Any) -> int | None:
        offset = _address(view, self._scratch) - self._base
        if not 0 <= offset <= len(self.raw):
            return None
        return self._line_at_offset(offset)

    def _line_at_offset(self, offset: int) -> int:
        """Newlines are counted from the beginning of the parsed document's text; in the whole stream, from
        the nearest known offset before this one, which is remembered when it is far (the findings of a
        document are close to each other, documents follow each other)."""
        if not self._whole and self._current >= 0 and self._spans:
            begin = self._spans[self._current]
            if offset >= begin:
                return self._span_lines[self._current] + self.raw.count(b"\n", begin, offset)
        index = bisect.bisect_right(self._anchors, offset) - 1
        anchor = self._anchors[index]
        line = self._anchor_lines[index] + self.raw.count(b"\n", anchor, offset)
        if offset - anchor > _ANCHOR_SPACING:
            self._anchors.insert(index + 1, offset)
            self._anchor_lines.insert(index + 1, line)
        return line
