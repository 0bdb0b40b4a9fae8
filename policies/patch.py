"""RFC 6902 JSON Patch: the operations rules emit, and applying them to a plain document."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

OpName = Literal["add", "remove", "replace", "test"]


class PatchError(Exception):
    """A patch operation does not fit the document it is applied to."""


def escape_token(token: str | int) -> str:
    text = token if type(token) is str else str(token)
    if "~" in text or "/" in text:
        return text.replace("~", "~0").replace("/", "~1")
    return text


def unescape_token(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~") if "~" in token else token


def pointer(*tokens: str | int) -> str:
    """Build a JSON Pointer from raw tokens: ``pointer("spec", "configPatches", 1)``."""
    return "".join("/" + escape_token(t) for t in tokens)


def split_pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON Pointer {path!r} must start with '/'")
    tokens = path[1:].split("/")
    return [unescape_token(t) for t in tokens] if "~" in path else tokens


def copy_tree(value: Any) -> Any:
    """A deep copy of a JSON-like tree (mappings become dicts, lists stay lists, leaves are shared)."""
    if isinstance(value, dict | list):
        if isinstance(value, dict):
            return {key: copy_tree(item) for key, item in value.items()}
        return [copy_tree(item) for item in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {key: copy_tree(item) for key, item in value.items()}
    return value


@dataclass(slots=True, unsafe_hash=True, init=False)
class PatchOp:
    # `Final` fields with an explicit __init__ and __reduce__, not frozen: built by the dozen per review
    # (docs/compiled.md, "What the compiled modules may not use").

    op: Final[OpName]
    path: Final[str]
    value: Final[Any]

    def __init__(self, op: OpName, path: str, value: Any = None) -> None:
        self.op = op
        self.path = path
        self.value = value

    def __reduce__(self) -> tuple[type[PatchOp], tuple[OpName, str, Any]]:
        return (PatchOp, (self.op, self.path, self.value))

    def to_json(self) -> dict[str, Any]:
        if self.op == "remove":
            return {"op": "remove", "path": self.path}
        return {"op": self.op, "path": self.path, "value": self.value}


def _child(container: Any, token: str, path: str) -> Any:
    if type(container) is dict or isinstance(container, Mapping):
        if token not in container:
            raise PatchError(f"{path}: no member {token!r}")
        return container[token]
    if isinstance(container, list):
        index = _index(container, token, path, allow_end=False)
        return container[index]
    raise PatchError(f"{path}: cannot descend into a {type(container).__name__}")


def _index(container: list[Any], token: str, path: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"{path}: {token!r} is not an array index")
    index = int(token)
    limit = len(container) + (1 if allow_end else 0)
    if index >= limit:
        raise PatchError(f"{path}: index {index} is out of range")
    return index


def _own(parent: Any, token: str, child: Any, owned: set[int]) -> Any:
    """`child` (the member `token` of `parent`, which is owned) as a container of the working document's own:
    copied shallowly in place the first time, so a document it shares subtrees with never changes."""
    if id(child) in owned:
        return child
    if isinstance(child, list):
        copied: Any = list(child)
    elif type(child) is dict or isinstance(child, Mapping):
        copied = dict(child)
    else:
        return child
    if isinstance(parent, list):
        parent[int(token)] = copied
    else:
        parent[token] = copied
    owned.add(id(copied))
    return copied


def apply_op(document: Any, op: PatchOp, *, owned: set[int] | None = None) -> Any:
    """Apply one operation in place (the root is replaced by returning the new value).

    With `owned`, the document shares subtrees with another one (copy on write): `owned` holds the ids of the
    containers that are its own (the root at least), and every other container on the op's path is copied
    before it is changed. The shared subtrees stay identical objects, which `diff_documents` skips."""
    tokens = split_pointer(op.path)
    if not tokens:
        if op.op in ("add", "replace"):
            return copy_tree(op.value)
        if op.op == "test":
            if document != op.value:
                raise PatchError("test failed at the document root")
            return document
        raise PatchError("cannot remove the document root")
    parent = document
    for token in tokens[:-1]:
        child = _child(parent, token, op.path)
        parent = child if owned is None else _own(parent, token, child, owned)
    last = tokens[-1]
    if isinstance(parent, dict):
        if op.op == "add":
            parent[last] = copy_tree(op.value)
        elif op.op == "replace":
            if last not in parent:
                raise PatchError(f"{op.path}: no member {last!r} to replace")
            parent[last] = copy_tree(op.value)
        elif op.op == "remove":
            if last not in parent:
                raise PatchError(f"{op.path}: no member {last!r} to remove")
            del parent[last]
        elif parent.get(last) != op.value:
            raise PatchError(f"test failed at {op.path}")
    elif isinstance(parent, list):
        if op.op == "add":
            parent.insert(_index(parent, last, op.path, allow_end=True), copy_tree(op.value))
        elif op.op == "replace":
            parent[_index(parent, last, op.path, allow_end=False)] = copy_tree(op.value)
        elif op.op == "remove":
            del parent[_index(parent, last, op.path, allow_end=False)]
        elif parent[_index(parent, last, op.path, allow_end=False)] != op.value:
            raise PatchError(f"test failed at {op.path}")
    else:
        raise PatchError(f"{op.path}: parent is a {type(parent).__name__}, not an object or array")
    return document


def apply_patch(document: Mapping[str, Any], ops: Iterable[PatchOp]) -> dict[str, Any]:
    """Return a patched deep copy; the input is never changed."""
    result: Any = copy.deepcopy(dict(document))
    for op in ops:
        result = apply_op(result, op)
    if not isinstance(result, dict):
        raise PatchError("the patched document is not an object")
    return result
