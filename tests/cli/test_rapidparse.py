"""`check`'s fast parse (rapidyaml) gives exactly what libyaml gives: the same documents, data and lines.

Every case is read both ways through `iter_documents` and compared: document positions, `List` item
prefixes, the data (types included), and the line of every node of every document. An unreadable text
must fail the same way. Real files (the examples, these tests' data, the shared corpus when it is there)
and constructed cases that YAML 1.1 reads differently from JSON are both compared.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from yaml.resolver import Resolver

from cli.rapidparse import (
    _UNUSUAL_CHARACTER,
    NUMERIC_RESOLVERS,
    _has_unusual_character,
    document_starts,
    parse_stream,
)
from cli.sources import InputError, Source, SourceDocument, iter_documents
from policies.patch import pointer

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"


def pointers(value: Any, prefix: str = "") -> Iterator[str]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from pointers(item, prefix + pointer(str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from pointers(item, prefix + pointer(index))


def read(text: str, *, fast: bool) -> list[tuple[Any, ...]] | str:
    source = Source("in.yaml", Path("in.yaml"))
    try:
        items = list(iter_documents(source, text, fast=fast))
    except InputError as error:
        return str(error)
    read_items: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, InputError):
            read_items.append(("error", str(item)))
            continue
        lines = {path: item.line_of(path) for path in pointers(item.data)}
        read_items.append((item.index, item.prefix, _typed(item.data), lines))
    return read_items


def _typed(value: Any) -> Any:
    """The data with every scalar's type spelled out (1 and True and 1.0 compare equal in Python)."""
    if isinstance(value, dict):
        return {_typed(key): _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    return (type(value).__name__, value)


def assert_same(text: str) -> None:
    assert read(text, fast=True) == read(text, fast=False)


TRICKY = {
    "yes-no-on-off": "a: yes\nb: no\nc: on\nd: Off\ne: 'yes'\n",
    "true-null": 'a: true\nb: True\nc: null\nd: ~\ne:\nf: Null\ng: "null"\n',
    "numbers": "a: 1\nb: -2\nc: 1.5\nd: 1e3\ne: 1.0e+3\nf: 0x1F\ng: 017\nh: 0o17\n",
    "more-numbers": "i: 1_000\nj: 1:30\nk: +1\nl: .5\nm: 123456789012345678901234567890\nn: -0\n",
    "special-floats": "a: .inf\nb: -.Inf\nc: .nan\n",
    "quoted-numbers": "port: \"8080\"\nip: 10.96.45.12\nversion: '1.0'\ntimeout: 5s\n",
    "timestamps": "a: 2001-12-14\nb: 2001-12-14t21:59:43.10-05:00\n",
    "anchors": "a: &x {b: 1}\nc: *x\n",
    "tags": "a: !!str 1\nb: !!int '2'\n",
    "merge": "base: &b {x: 1}\nd:\n  <<: *b\n  y: 2\n",
    "complex-key": "? a\n: b\n",
    "escapes": "a: \"x\\ty\\u00e9\\n\"\nb: 'it''s'\nc: café\n",
    "block-scalars": "a: |\n  one\n  two\nb: >-\n  folded\n  text\n\nc: |+\n  kept\n\n",
    "multi-line-plain": "a: one\n  two\n  three\nb: x\n",
    "flow": "a: {b: [1, {c: d}], e: []}\nf: [x, 'y', \"z\"]\n",
    "documents": "---\n# only a comment\n---\na: 1\n...\n---\n\n---\n- x\n- y\n---\nplain\n--- \nb: 2\n",
    "list-kind": "kind: List\nitems:\n- kind: A\n  n: 1\n- 3\n- kind: B\n",
    "int-keys": "1: a\n'2': b\non: c\n",
    "duplicate-keys": "a: 1\nb: 2\na: 3\n",
    "tabs": "a:\tb\n",
    "empty": "",
    "comments-only": "# nothing\n",
    "syntax-error": "a: b: c\n",
    "unclosed": "a: [1, 2\nb: 3\n",
    "template": "name: {{ .Values.name }}\n",
    "bad-indent": "a:\n  b: 1\n c: 2\n",
    "crlf": "a: 1\r\nb:\r\n  c: x\r\n",
    "unicode-keys": 'clé: v\n"@type": t\n',
    "long-string": "a: " + "x" * 5000 + "\n",
    "unicode-line-breaks": "a: x\x85y\nb: x\u2028y\nc: x\u2029y\n\x85: key\n",
    "control-character": "a: x\x01y\n",
    "byte-order-mark-inside": "a: 1\n---\n\ufeffb: 2\n",
    "documents-without-end-markers": (
        "# head\n\n---\na: 1\nb:\n  c: 2\n---\n\n---\n- x\n---\nplain\n"
        "--- \nd: 3\n--- # note\ne: {f: [1, 2]}\n"
    ),
    "bare-first-document": "a: 1\nb: 2\n---\nc:\n  d: [3]\n---\ne: 4\n",
    "flow-on-marker-lines": "--- {a: 1, b: [x, {c: d}]}\n--- {e: 2}\n",
    "marker-like-lines": "a: |\n  ---\n  text\nb: '--- x'\nc: ---x\n---\n---x: 1\n----: 2\n",
    "indented-documents": "---\n  a: 1\n  b:\n    c: 2\n---\n  d: 3\n",
    "crlf-documents": "a: 1\r\n---\r\nb:\r\n  c: x\r\n---\r\nd: 2\r\n",
    "trailing-empty-document": "a: 1\n---\nb: 2\n---\n",
}


def test_the_copied_number_resolvers_are_pyyaml_s() -> None:
    def spelled(resolvers: Any) -> list[tuple[str, str, int]]:
        return [(tag, regexp.pattern, regexp.flags) for tag, regexp in resolvers]

    starts = "-+.0123456789"
    assert set(NUMERIC_RESOLVERS) == set(starts)
    for start in starts:
        assert spelled(NUMERIC_RESOLVERS[start]) == spelled(Resolver.yaml_implicit_resolvers[start]), start


NON_ASCII = {"ascii": "", "e-acute": "\u00e9", "u2028": "\u2028", "bom": "\ufeff", "emoji": "\U0001f600"}


@pytest.mark.parametrize("extra", NON_ASCII.values(), ids=NON_ASCII.keys())
def test_the_ascii_shortcut_finds_the_unusual_characters_the_full_class_finds(extra: str) -> None:
    full = re.compile(_UNUSUAL_CHARACTER)
    for code in range(128):
        text = f"a: x{chr(code)}y{extra}\n"
        assert _has_unusual_character(text) == (full.search(text) is not None), (code, extra)


@pytest.mark.parametrize("text", TRICKY.values(), ids=TRICKY.keys())
def test_tricky_yaml_reads_the_same_both_ways(text: str) -> None:
    assert_same(text)


def test_the_fast_path_really_runs_for_ordinary_manifests() -> None:
    text = (ROOT / "manifests" / "examples" / "seed-bad.yaml").read_text()
    assert parse_stream(text) is not None
    assert parse_stream("a: yes\n") is None
    assert parse_stream("a: &x 1\nb: *x\n") is None


@pytest.mark.parametrize(
    ("text", "starts"),
    [
        ("a: 1\n", [0]),
        ("a: 1\n---\nb: 2\n", [0, 5]),
        ("# head\n---\na: 1\n--- # note\nb: 2\n---\n", [7, 16, 32]),
        ("a: |\n  ---\n---x: 1\n---\nb: 2\n", [0, 19]),
        ("a: 1\n...\n---\nb: 2\n", None),
    ],
    ids=["one", "bare-first", "markers", "marker-like-lines", "end-marker"],
)
def test_where_each_document_begins_is_read_from_its_marker_lines(
    text: str, starts: list[int] | None
) -> None:
    documents = parse_stream(text)
    assert documents is not None
    assert document_starts(text.encode(), len(documents)) == starts


def real_files() -> list[Path]:
    files = sorted((ROOT / "manifests").rglob("*.yaml")) + sorted(Path(__file__).parent.rglob("*.yaml"))
    if CORPUS.is_dir():
        files += sorted(CORPUS.glob("*.yaml"))
    return files


REAL = real_files()


@pytest.mark.parametrize("path", REAL, ids=[f"{p.parent.name}/{p.name}" for p in REAL])
def test_real_files_read_the_same_both_ways(path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        pytest.skip("not UTF-8")
    assert_same(text)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=12),
    st.sampled_from(["yes", "no", "on", "~", "0x1F", "1e3", "1_000", "2001-12-14", "", "@type", "a: b", "#"]),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(documents=st.lists(trees, min_size=1, max_size=3), flow=st.sampled_from([None, True, False]))
def test_whatever_pyyaml_writes_reads_the_same_both_ways(documents: list[Any], flow: bool | None) -> None:
    text = yaml.safe_dump_all(documents, default_flow_style=flow, allow_unicode=True, sort_keys=False)
    assert_same(text)


def test_json_emitted_by_the_fast_path_is_the_data(tmp_path: Path) -> None:
    text = "a: 1\nb: [x, 2.5, null, true]\nc: {d: e}\n"
    [(data, _, position)] = parse_stream(text) or []
    assert position == 0
    assert json.dumps(data) == json.dumps(yaml.safe_load(text))
    document = next(iter_documents(Source("in.yaml", None), text, fast=True))
    assert isinstance(document, SourceDocument)
    assert document.line_of("/c/d") == 3
