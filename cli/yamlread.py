"""Reading YAML with libyaml (PyYAML's `CSafeLoader`), one document at a time with its node tree.

`cli.sources` reads a stream here when rapidyaml's fast path (`cli.rapidparse`) declines it, and composes
JSON here for its line numbers; this module (and PyYAML) loads only then. The composed node tree of the
current document is kept beside its data, so a finding's JSON Pointer maps to a line without parsing twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from policies import split_pointer


class YamlStreamError(Exception):
    """A stream that cannot be read past this point; `reason` is one plain line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_stream(text: str) -> Iterator[tuple[Any, NodeLocator]]:
    """Each document's data (what `yaml.safe_load` gives) and the locator of its lines, in order; empty
    documents are skipped. Raises `YamlStreamError` at the first document that cannot be read."""
    loader = DocumentLoader(text)
    index = 0
    try:
        while True:
            try:
                if not loader.check_node():
                    return
                node = loader.get_node()
                if node is None:
                    return
                data = construct_document(loader, node)
            except yaml.MarkedYAMLError as exc:
                raise YamlStreamError(describe_yaml_error(exc)) from None
            except yaml.YAMLError as exc:
                raise YamlStreamError(f"invalid YAML: {' '.join(str(exc).split())}") from None
            except RecursionError:
                raise YamlStreamError(f"document {index + 1}: nested too deeply") from None
            except _RecursiveDocumentError as exc:
                where = f" (the node at line {exc.line} contains an alias to itself)" if exc.line else ""
                raise YamlStreamError(
                    f"document {index + 1}: a recursive alias{where}; no Kubernetes object can hold that"
                ) from None
            yield data, NodeLocator(node)
            index += 1
    finally:
        loader.dispose()


def compose(text: str) -> yaml.Node | None:
    """The node tree of a one-document text (JSON with tabs made spaces), None when libyaml refuses it."""
    try:
        return yaml.compose(text, Loader=yaml.CSafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None


def compose_all(text: str) -> list[yaml.Node]:
    """The node tree of each document of a stream."""
    return list(yaml.compose_all(text, Loader=yaml.CSafeLoader))


@dataclass(frozen=True, slots=True)
class NodeLocator:
    """Maps JSON Pointers to lines through a composed YAML node tree (its marks)."""

    root: yaml.Node

    def line_of(self, pointer: str) -> int:
        return locate_line(self.root, split_pointer(pointer))


def locate_line(root: yaml.Node, tokens: Sequence[str]) -> int:
    """Walk `tokens` down the node tree; a mapping member's line is its key's line."""
    node = root
    line = int(node.start_mark.line) + 1
    for token in tokens:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == token:
                    line = int(key.start_mark.line) + 1
                    node = value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode):
            if not token.isdigit() or int(token) >= len(node.value):
                return line
            node = node.value[int(token)]
            line = int(node.start_mark.line) + 1
        else:
            return line
    return line


_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


class DocumentLoader(yaml.CSafeLoader):
    """libyaml's safe loader with the per-node resolver hooks made cheap (the same tags result).

    The safe loader has no path resolvers, so descending and ascending are no-ops; implicit tags are
    looked up in the safe resolver's own first-character table, exactly as `Resolver.resolve` does.
    """

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode:
            if implicit[0]:
                table = self.yaml_implicit_resolvers
                for tag, regexp in table.get(value[:1], ()):
                    if regexp.match(value):
                        return str(tag)
                for tag, regexp in table.get(None, ()):
                    if regexp.match(value):
                        return str(tag)
            return _STR_TAG
        if kind is yaml.SequenceNode:
            return _SEQ_TAG
        return _MAP_TAG


class _RecursiveDocumentError(Exception):
    """An alias inside the node it refers to: no JSON (and no Kubernetes object) can hold that."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.line = int(node.start_mark.line) + 1 if node is not None else None
        super().__init__(f"line {self.line}")


def _is_recursive(data: Any) -> bool:
    open_ids: set[int] = set()

    def visit(value: Any) -> bool:
        if not isinstance(value, dict | list):
            return False
        if id(value) in open_ids:
            return True
        open_ids.add(id(value))
        children = value.values() if isinstance(value, dict) else value
        found = any(visit(child) for child in children)
        open_ids.discard(id(value))
        return found

    return visit(data)


class _DirectBuildError(Exception):
    """A node the direct path does not build (merge keys, explicit tags, non-string keys)."""


def construct_document(loader: DocumentLoader, root: yaml.Node) -> Any:
    """Build a document's data from its node tree, equal to what `yaml.safe_load` returns.

    Plain maps, sequences and string scalars (nearly all of a Kubernetes manifest) are built directly;
    every other scalar goes through PyYAML's safe constructor for its tag. A document with merge keys,
    explicit collection tags or non-string keys is built entirely by PyYAML's constructor. Aliases
    share one object, as with PyYAML.
    """
    built: dict[int, Any] = {}
    open_nodes: set[int] = set()

    def build(node: yaml.Node) -> Any:
        done = built.get(id(node))
        if done is not None:
            if id(node) in open_nodes:
                raise _RecursiveDocumentError(node)
            return done
        kind = type(node)
        if kind is yaml.ScalarNode:
            if node.tag == _STR_TAG:
                return node.value
            value = loader.construct_object(node, deep=True)
        elif kind is yaml.MappingNode:
            if node.tag != _MAP_TAG:
                raise _DirectBuildError
            value = {}
            built[id(node)] = value
            open_nodes.add(id(node))
            for key, item in node.value:
                if type(key) is not yaml.ScalarNode or key.tag != _STR_TAG:
                    raise _DirectBuildError
                value[key.value] = build(item)
            open_nodes.discard(id(node))
        else:
            if node.tag != _SEQ_TAG:
                raise _DirectBuildError
            value = []
            built[id(node)] = value
            open_nodes.add(id(node))
            value.extend(build(item) for item in node.value)
            open_nodes.discard(id(node))
        built[id(node)] = value
        return value

    try:
        data = build(root)
    except _DirectBuildError:
        data = loader.construct_document(root)
        if _is_recursive(data):
            raise _RecursiveDocumentError(None) from None
        return data
    loader.constructed_objects = {}
    loader.recursive_objects = {}
    return data


def describe_yaml_error(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "cannot parse"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = f" ({exc.context})" if exc.context and exc.problem else ""
    return f"invalid YAML{where}: {problem}{context}"
