"""Envoy JSON has two spellings: proto field names (`request_body_mode`) and JSON names (`requestBodyMode`).

Readers accept both everywhere; writers use the spelling the document already uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from functools import cache
from typing import Any


class Spelling(StrEnum):
    SNAKE = "snake"
    CAMEL = "camel"

    def key(self, snake: str) -> str:
        """The key for the proto field `snake` in this spelling."""
        return snake if self is Spelling.SNAKE else camel_case(snake)


@cache
def camel_case(snake: str) -> str:
    """`request_body_mode` -> `requestBodyMode` (protobuf's JSON name rule)."""
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def find_key(mapping: Mapping[str, Any], snake: str) -> str | None:
    """The key under which `mapping` holds the field `snake`, in either spelling."""
    if snake in mapping:
        return snake
    camel = camel_case(snake)
    if camel in mapping:
        return camel
    return None


def get_field(mapping: Mapping[str, Any], snake: str, default: Any = None) -> Any:
    """The value of the field `snake` in either spelling."""
    key = find_key(mapping, snake)
    return default if key is None else mapping[key]


def get_mapping(mapping: Mapping[str, Any], snake: str) -> Mapping[str, Any] | None:
    """The field `snake` if it holds a mapping, else None."""
    value = get_field(mapping, snake)
    return value if isinstance(value, dict) else None


def spelling_of(mapping: Mapping[str, Any]) -> Spelling | None:
    """The spelling a mapping's own keys reveal, or None when its keys are single words."""
    for key in mapping:
        if not isinstance(key, str) or "." in key or key.startswith("@"):
            continue
        if "_" in key:
            return Spelling.SNAKE
        if key != key.lower():
            return Spelling.CAMEL
    return None


def detect_spelling(values: Iterable[Any], default: Spelling = Spelling.SNAKE) -> Spelling:
    """The spelling used by the first multi-word key found in `values` (depth first)."""
    stack = list(values)
    stack.reverse()
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found = spelling_of(item)
            if found is not None:
                return found
            children = list(item.values())
        elif isinstance(item, list):
            children = list(item)
        else:
            continue
        children.reverse()
        stack.extend(children)
    return default


def choose_key(mapping: Mapping[str, Any], snake: str, fallback: Spelling) -> str:
    """Where to write the field `snake` in `mapping`: its existing key, else the mapping's own spelling."""
    existing = find_key(mapping, snake)
    if existing is not None:
        return existing
    return (spelling_of(mapping) or fallback).key(snake)
