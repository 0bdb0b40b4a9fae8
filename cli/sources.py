"""Reading `check` / `fix` inputs: paths to files, folders and stdin, then the documents in them.

Everything that can go wrong with an input becomes an `InputError` (file + one plain reason): a missing or
unreadable path, a folder with nothing to check, a file over the size limit (refused before reading it),
a binary or non-UTF-8 file, invalid YAML/JSON, a document that is not a mapping.

YAML is read by rapidyaml when its result is provably libyaml's (`cli.rapidparse`), else by libyaml one
document at a time (`cli.yamlread`, which loads PyYAML only then); either way a finding's JSON Pointer maps
to a line without parsing twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from cli.rapidparse import StreamLines, parse_stream
from policies import split_pointer

if TYPE_CHECKING:
    import yaml

logger = logging.getLogger(__name__)

STDIN_ARG = "-"
STDIN_NAME = "<stdin>"
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
MATCHED_SUFFIXES = (".yaml", ".yml", ".json")
_BINARY_SNIFF_BYTES = 8192
_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


class InputError(Exception):
    """One input that cannot be (fully) read; `str()` is ``FILE: reason``."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str]]:
        return InputError, (self.file, self.reason)


@dataclass(frozen=True, slots=True)
class SkippedInput:
    """An input that is deliberately not checked (a Helm template); `str()` is ``FILE: reason``."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


def template_skip(name: str, text: str) -> SkippedInput | None:
    """A file with template actions that did not parse: a Helm chart's template, not YAML yet."""
    line = template_line(text)
    if line is None:
        return None
    return SkippedInput(
        name,
        f"a Helm template (template syntax at line {line}), not YAML: check what `helm template` renders",
    )


@dataclass(frozen=True, slots=True)
class Source:
    """One input to read: a file (`path`) or stdin (`path is None`). `name` is what messages show."""

    name: str
    path: Path | None

    @property
    def is_json(self) -> bool:
        return self.path is not None and self.path.suffix.lower() == ".json"


class LineLocator(Protocol):
    def line_of(self, pointer: str) -> int:
        """1-based line of the node at `pointer`, or of its deepest existing ancestor."""
        ...


@dataclass(slots=True)
class JsonLocator:
    """Line numbers for JSON text: the text is composed as YAML (tabs made spaces) only when asked."""

    text: str
    _root: yaml.Node | None = field(default=None, init=False)
    _failed: bool = field(default=False, init=False)

    def line_of(self, pointer: str) -> int:
        from cli.yamlread import compose, locate_line

        if self._root is None and not self._failed:
            self._root = compose(self.text.replace("\t", " "))
            self._failed = self._root is None
        if self._root is None:
            return 1
        return locate_line(self._root, split_pointer(pointer))


@dataclass(frozen=True, slots=True)
class SourceDocument:
    """One document of a file: its data, its position, and how to find the line of any part of it.

    `index` is the document's position in the file's stream; the items of a `List` share it and carry
    `prefix` (``/items/3``), the pointer of the item inside the stream document.
    """

    file: str
    index: int
    data: dict[str, Any]
    locator: LineLocator
    prefix: str = ""

    def line_of(self, pointer: str) -> int:
        return self.locator.line_of(self.prefix + pointer)

    @property
    def start_line(self) -> int:
        return self.line_of("")


def expand_paths(args: Sequence[str]) -> tuple[list[Source], list[InputError]]:
    """Turn PATH arguments into sources: folders recursively (`*.yaml|*.yml|*.json`), `-` for stdin."""
    sources: list[Source] = []
    errors: list[InputError] = []
    seen: set[str] = set()

    def add(source: Source) -> None:
        key = STDIN_ARG if source.path is None else os.path.realpath(source.path)
        if key not in seen:
            seen.add(key)
            sources.append(source)

    for arg in args:
        if arg == STDIN_ARG:
            add(Source(STDIN_NAME, None))
            continue
        path = Path(arg)
        if path.is_dir():
            found = list(_walk_folder(path, errors))
            if not found:
                errors.append(InputError(arg, "no *.yaml, *.yml or *.json files in this folder"))
            for file in found:
                add(Source(str(file), file))
        elif path.exists() or path.is_symlink():
            add(Source(arg, path))
        else:
            errors.append(InputError(arg, "no such file or folder"))
    return sources, errors


def _walk_folder(folder: Path, errors: list[InputError]) -> Iterator[Path]:
    def report(exc: OSError) -> None:
        errors.append(InputError(str(exc.filename or folder), f"cannot list the folder: {_os_reason(exc)}"))

    for root, dirs, files in os.walk(folder, onerror=report):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(MATCHED_SUFFIXES):
                yield Path(root) / name


def read_input(arg: str, *, stdin: BinaryIO, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Read one input named on the command line (`-`: stdin) as text, the way every command reads its
    inputs: the same size limit, encodings and one-line reasons (`InputError`)."""
    source = Source(STDIN_NAME, None) if arg == STDIN_ARG else Source(arg, Path(arg))
    return read_source(source, max_bytes=max_bytes, stdin=stdin)


def read_source(source: Source, *, max_bytes: int, stdin: BinaryIO) -> str:
    """Read and decode one source; files over `max_bytes` are refused from their size, unread."""
    raw = stdin.read(max_bytes + 1) if source.path is None else _read_file(source, max_bytes)
    if len(raw) > max_bytes:
        raise InputError(source.name, f"larger than the {_size(max_bytes)} limit; not read")
    return decode_text(source.name, raw)


def _read_file(source: Source, max_bytes: int) -> bytes:
    assert source.path is not None
    try:
        info = source.path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise InputError(source.name, "is a folder")
        if not stat.S_ISREG(info.st_mode):
            raise InputError(source.name, "not a regular file")
        if info.st_size > max_bytes:
            raise InputError(
                source.name, f"{_size(info.st_size)}, larger than the {_size(max_bytes)} limit; not read"
            )
        with source.path.open("rb") as handle:
            return handle.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(source.name, f"cannot read: {_os_reason(exc)}") from None


def _os_reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.1f} MiB".replace(".0 MiB", " MiB")
    return f"{count} bytes"


def decode_text(name: str, raw: bytes) -> str:
    """Bytes to text: a BOM picks the encoding, otherwise UTF-8; NUL bytes mean a binary file."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise InputError(
                    name, f"not valid {encoding} text (at byte {exc.start + len(bom)})"
                ) from None
    if b"\x00" in raw[:_BINARY_SNIFF_BYTES]:
        raise InputError(name, "binary file (contains NUL bytes), not YAML or JSON")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        raise InputError(name, f"not UTF-8 text (byte 0x{byte:02x} at offset {exc.start})") from None


_TEMPLATE_ACTION = re.compile(r"\{\{-?\s*(?:[.$\"(]|/\*|-|[a-z][A-Za-z]*\b).*?\}\}")


def template_line(text: str) -> int | None:
    """The first line holding a Go template action (`{{ .Values.x }}`, `{{- if ... }}`), if any."""
    found = _TEMPLATE_ACTION.search(text)
    return None if found is None else text.count("\n", 0, found.start()) + 1


@dataclass(frozen=True, slots=True)
class RapidLocator:
    """Lines of one document read by the fast path (`cli.rapidparse`), computed when first asked for."""

    lines: StreamLines
    position: int

    def line_of(self, pointer: str) -> int:
        tokens = split_pointer(pointer)
        line = self.lines.line_of(self.position, tokens)
        if line is not None:
            return line
        from cli.yamlread import compose_all, locate_line

        if self.lines.fallback is None:
            self.lines.fallback = compose_all(self.lines.raw.decode("utf-8"))
        roots = self.lines.fallback
        return locate_line(roots[self.position], tokens) if self.position < len(roots) else 1


def iter_documents(source: Source, text: str, *, fast: bool = False) -> Iterator[SourceDocument | InputError]:
    """The mapping documents of one source, in order.

    A document that cannot be used (not a mapping, a bad `List` item) is yielded as an `InputError` and
    the stream goes on; a syntax error ends the stream by raising `InputError` (nothing after it can be
    trusted). Empty documents are skipped. `fast` lets rapidyaml read YAML when its result is provably
    libyaml's (`cli.rapidparse`); line numbers then come from rapidyaml too, and only when asked for.
    """
    if reads_as_json(source, text):
        parsed = _parse_json(source, text)
        if parsed is not None:
            yield from _documents_of(source.name, 0, parsed, JsonLocator(text))
            return
    if fast:
        documents = parse_stream(text)
        if documents is not None:
            for data, lines, position in documents:
                yield from _documents_of(source.name, position, data, RapidLocator(lines, position))
            return
    yield from _iter_yaml(source, text)


def reads_as_json(source: Source, text: str) -> bool:
    """Whether `iter_documents` reads a source as JSON first: a `.json` file, or stdin that looks like it."""
    return source.is_json or (source.path is None and text.lstrip()[:1] in ("{", "["))


def stream_documents(
    source: Source, text: str, documents: Sequence[Any]
) -> Iterator[SourceDocument | InputError]:
    """What `iter_documents(fast=True)` yields for a YAML stream whose documents the fast path has read
    (the data of each, empty ones too, in order; by another process, say): lines found when asked for."""
    lines = StreamLines(text.encode("utf-8"), len(documents))
    for position, data in enumerate(documents):
        yield from _documents_of(source.name, position, data, RapidLocator(lines, position))


def _iter_yaml(source: Source, text: str) -> Iterator[SourceDocument | InputError]:
    from cli.yamlread import YamlStreamError, read_stream

    try:
        for index, (data, locator) in enumerate(read_stream(text)):
            yield from _documents_of(source.name, index, data, locator)
    except YamlStreamError as exc:
        raise InputError(source.name, exc.reason) from None


def _parse_json(source: Source, text: str) -> object | None:
    try:
        return json.loads(text)  # type: ignore[no-any-return]
    except json.JSONDecodeError as exc:
        if source.path is None:
            return None  # stdin that only looked like JSON: let the YAML parser have it
        raise InputError(
            source.name, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise InputError(source.name, "invalid JSON: nested too deeply") from None


def _documents_of(
    file: str, index: int, data: object, locator: LineLocator
) -> Iterator[SourceDocument | InputError]:
    if data is None:
        return
    if not isinstance(data, dict):
        line = locator.line_of("")
        yield InputError(
            file,
            f"document {index + 1} (line {line}) is a {_kind_of_value(data)}, "
            "not a mapping with apiVersion and kind",
        )
        return
    items = data.get("items")
    if str(data.get("kind", "")).endswith("List") and isinstance(items, list):
        for position, item in enumerate(items):
            prefix = f"/items/{position}"
            if isinstance(item, dict):
                yield SourceDocument(file, index, item, locator, prefix)
            else:
                line = locator.line_of(prefix)
                yield InputError(file, f"document {index + 1} item {position} (line {line}) is not a mapping")
        return
    yield SourceDocument(file, index, data, locator)


def _kind_of_value(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__
