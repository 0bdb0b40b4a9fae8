"""Reading inputs: path expansion, size and encoding limits, documents, and pointer-to-line mapping."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.sources import (
    InputError,
    Source,
    SourceDocument,
    decode_text,
    expand_paths,
    iter_documents,
    read_source,
)

MULTI = """\
# leading comment
apiVersion: v1
kind: ConfigMap
metadata:
  name: first
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: second
  namespace: ns
spec:
  configPatches:
  - applyTo: CLUSTER
    patch:
      operation: ADD
      value:
        name: epp-cluster
        type: STRICT_DNS
"""


def documents_of(text: str, name: str = "f.yaml") -> list[SourceDocument | InputError]:
    return list(iter_documents(Source(name, Path(name)), text))


def only_documents(text: str, name: str = "f.yaml") -> list[SourceDocument]:
    items = documents_of(text, name)
    assert all(isinstance(item, SourceDocument) for item in items), items
    return [item for item in items if isinstance(item, SourceDocument)]


def test_multi_document_yaml_yields_each_mapping_with_its_index() -> None:
    first, second = only_documents(MULTI)
    assert (first.index, first.data["metadata"]["name"]) == (0, "first")
    assert (second.index, second.data["metadata"]["name"]) == (1, "second")


@pytest.mark.parametrize(
    ("pointer", "line"),
    [
        ("", 7),
        ("/metadata/name", 10),
        ("/spec/configPatches/0", 14),
        ("/spec/configPatches/0/patch/value/type", 19),
        ("/spec/configPatches/0/patch/value", 17),
        ("/spec/configPatches/0/patch/value/missing_field", 17),
        ("/spec/configPatches/5/patch", 13),
    ],
    ids=[
        "document",
        "scalar",
        "list-item",
        "deep-scalar",
        "mapping-value-is-key-line",
        "missing-leaf",
        "bad-index",
    ],
)
def test_a_pointer_maps_to_the_line_of_its_node_or_nearest_ancestor(pointer: str, line: int) -> None:
    second = only_documents(MULTI)[1]
    assert second.line_of(pointer) == line


def test_json_input_maps_pointers_to_lines_even_with_tab_indentation() -> None:
    text = (
        '{\n\t"kind": "EnvoyFilter",\n\t"spec": {\n\t\t"configPatches": [\n'
        '\t\t\t{"applyTo": "CLUSTER"}\n\t\t]\n\t}\n}\n'
    )
    (document,) = only_documents(text, "f.json")
    assert document.data["spec"]["configPatches"][0]["applyTo"] == "CLUSTER"
    assert document.line_of("/kind") == 2
    assert document.line_of("/spec/configPatches/0/applyTo") == 5


def test_list_items_are_documents_with_an_items_prefix() -> None:
    text = (
        "apiVersion: v1\nkind: List\nitems:\n"
        "- kind: A\n  metadata: {name: a}\n- kind: B\n  metadata:\n    name: b\n"
    )
    first, second = only_documents(text)
    assert (first.prefix, second.prefix) == ("/items/0", "/items/1")
    assert second.data["kind"] == "B"
    assert second.line_of("/metadata/name") == 8


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("- a\n- b\n", "document 1 (line 1) is a list"),
        ("just a string\n", "is a string"),
        ("42\n", "is a number"),
    ],
    ids=["list", "string", "number"],
)
def test_a_non_mapping_document_is_an_error_and_the_stream_goes_on(text: str, reason: str) -> None:
    items = documents_of(text + "---\nkind: ConfigMap\n")
    assert isinstance(items[0], InputError)
    assert reason in items[0].reason
    assert isinstance(items[1], SourceDocument)


def test_invalid_yaml_raises_with_line_and_column_after_the_good_documents() -> None:
    text = "kind: A\n---\nkind: B\n  bad: indentation: here\n"
    iterator = iter_documents(Source("f.yaml", Path("f.yaml")), text)
    first = next(iterator)
    assert isinstance(first, SourceDocument)
    with pytest.raises(InputError, match=r"invalid YAML at line 4, column \d+"):
        next(iterator)


def test_invalid_json_names_line_and_column() -> None:
    with pytest.raises(InputError, match=r"invalid JSON at line 2, column 1"):
        documents_of('{"kind": "A",\n}\n', "f.json")


def test_empty_documents_are_skipped() -> None:
    assert documents_of("---\n---\n# only a comment\n") == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"kind: A\n\x00\x01\x02", "binary file"),
        (b"kind: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9)"),
    ],
    ids=["nul-bytes", "latin-1"],
)
def test_undecodable_bytes_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InputError) as caught:
        decode_text("f.yaml", raw)
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    "raw",
    [b"\xef\xbb\xbfkind: A\n", "kind: A\n".encode("utf-16")],
    ids=["utf-8-bom", "utf-16-bom"],
)
def test_a_byte_order_mark_selects_the_encoding(raw: bytes) -> None:
    assert decode_text("f.yaml", raw) == "kind: A\n"


def test_a_file_over_the_limit_is_refused_from_its_size(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: nothing is written, nothing need be read
    with pytest.raises(InputError, match=r"50 MiB, larger than the 16 MiB limit; not read"):
        read_source(Source(str(big), big), max_bytes=16 * 1024 * 1024, stdin=io.BytesIO())


def test_stdin_over_the_limit_is_refused() -> None:
    with pytest.raises(InputError, match="larger than the 10 bytes limit"):
        read_source(Source("<stdin>", None), max_bytes=10, stdin=io.BytesIO(b"x" * 11))


def test_folders_expand_recursively_to_matching_files_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    for name in ("b/z.yml", "a.yaml", "c.JSON", "notes.txt", ".git/x.yaml", ".hidden.yaml"):
        (tmp_path / name).write_text("kind: A\n")
    sources, errors = expand_paths([str(tmp_path)])
    assert errors == []
    assert [Path(s.name).relative_to(tmp_path).as_posix() for s in sources] == ["a.yaml", "c.JSON", "b/z.yml"]


def test_a_folder_without_matching_files_and_a_missing_path_are_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    sources, errors = expand_paths([str(tmp_path), str(tmp_path / "missing.yaml")])
    assert sources == []
    assert [e.reason for e in errors] == [
        "no *.yaml, *.yml or *.json files in this folder",
        "no such file or folder",
    ]


def test_the_same_file_named_twice_is_read_once(tmp_path: Path) -> None:
    file = tmp_path / "a.yaml"
    file.write_text("kind: A\n")
    sources, _ = expand_paths([str(file), str(tmp_path), "-", "-"])
    assert [s.path for s in sources] == [file, None]


def test_a_path_that_is_not_a_regular_file_is_an_error(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_source(Source(str(fifo), fifo), max_bytes=1024, stdin=io.BytesIO())


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\nb: 1.5\nc: true\nd: ~\ne: '010'\nf: 010\ng: 0x1f\nh: 2001-12-14\ni: yes\nj: .inf\nk: '@x'\n",
        "base: &b {x: 1, y: [1, 2]}\nuse: *b\nlist: [*b, *b]\n",
        "base: &b {x: 1}\nmerged:\n  <<: *b\n  y: 2\n",
        "80: http\n1.5: x\ntrue: y\n",
        "set: !!set {a, b}\nomap: !!omap [{a: 1}]\nbin: !!binary aGk=\n",
        "dup: 1\ndup: 2\nnested: {deep: {deeper: [a, {b: c}]}}\n",
        "str: !!str 123\nint: !!int '7'\n",
    ],
    ids=[
        "scalars",
        "aliases",
        "merge-keys",
        "non-string-keys",
        "collection-tags",
        "duplicates",
        "explicit-tags",
    ],
)
def test_documents_are_built_exactly_as_pyyaml_safe_load_builds_them(text: str) -> None:
    (document,) = only_documents(text)
    assert document.data == yaml.safe_load(text)


def test_aliases_share_one_object_as_with_pyyaml() -> None:
    (document,) = only_documents("base: &b {x: 1}\nuse: *b\n")
    assert document.data["base"] is document.data["use"]


def test_an_unknown_tag_is_an_input_error_with_its_line() -> None:
    with pytest.raises(
        InputError, match=r"invalid YAML at line 2, column 4: could not determine a constructor"
    ):
        documents_of("a: 1\nb: !custom x\n")


TRICKY_PLAIN = [
    "yes",
    "No",
    "on",
    "OFF",
    "y",
    "~",
    "null",
    "Null",
    "",
    "0o17",
    "017",
    "0x1F",
    "1_000",
    "-0b101",
    "190:20:30",
    "1.5e3",
    ".5",
    "-.inf",
    ".NaN",
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "=",
    "<<",
    "10.96.45.12",
    "9002",
    "5s",
    "+12",
    "0",
    "-",
    "true",
    "@",
]


@pytest.mark.parametrize("value", TRICKY_PLAIN, ids=[repr(v) for v in TRICKY_PLAIN])
def test_plain_scalars_resolve_to_the_same_type_and_value_as_pyyaml(value: str) -> None:
    text = f"key: {value}\n" if value not in ("@",) else "key: '@'\n"
    try:
        expected = yaml.safe_load(text)
    except yaml.YAMLError:
        with pytest.raises(InputError, match="invalid YAML"):
            only_documents(text)
        return
    (document,) = only_documents(text)
    assert repr(document.data) == repr(expected)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)
)
documents = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        json_scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=20,
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(document=documents, flow=st.sampled_from([None, True, False]))
def test_any_dumped_document_reads_back_as_pyyaml_reads_it(
    document: dict[str, object], flow: bool | None
) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow)
    (read,) = only_documents(text)
    assert read.data == yaml.safe_load(text)


@pytest.mark.parametrize(
    "text",
    [
        "a: &x [1, *x]\n",
        "spec: &s\n  patches:\n  - value: *s\n",
        "b: &m {k: 1}\nc: &x\n  <<: *m\n  self: *x\n",
    ],
    ids=["sequence", "mapping", "with-merge-keys"],
)
def test_a_recursive_alias_is_an_input_error(text: str) -> None:
    with pytest.raises(InputError, match="document 1: a recursive alias"):
        documents_of(text)
