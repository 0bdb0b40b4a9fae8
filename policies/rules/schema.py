"""EPX008 envoy-schema: every ext_proc value must parse as its Envoy proto."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from policies.patch import escape_token
from policies.pieces import EXT_PROC_TYPE, PER_ROUTE_TYPE
from policies.rules.base import Rule, Violation
from policies.spelling import find_key
from policies.subject import Subject

if TYPE_CHECKING:
    from google.protobuf.descriptor import Descriptor  # type: ignore[import-untyped]

    from policies.schema import SchemaError


def _schema() -> Any:
    """The Envoy proto descriptors, loaded on the first document with ext_proc content (they are the
    slowest import of the engine, and most documents of a run are not ext_proc)."""
    from policies import schema

    return schema


def _pointer(base: str, error: SchemaError) -> str:
    return base + "".join("/" + escape_token(token) for token in error.path)


def _violation(base: str, what: str, message_type: str, error: SchemaError) -> Violation:
    where = f" at {error.field_path}" if error.path else ""
    return Violation(
        path=_pointer(base, error),
        message=(
            f"{what} does not parse as {message_type}{where}: {error.reason}; Istio or Envoy rejects the "
            f"config (or drops the patch) and ext_proc is not installed as written; correct the field"
        ),
        fix=f"correct {error.field_path or 'the value'} to match the Envoy proto",
        fixable=False,
    )


def _typed(value: Mapping[str, Any], expected: str) -> str | None:
    """Why an Any-shaped value has the wrong `@type`, or None."""
    type_url = value.get("@type")
    if type_url != expected:
        return f"@type is {type_url!r}, expected {expected!r}"
    return None


def _check_any(
    base: str, what: str, value: Any, expected: str, descriptor: Descriptor
) -> Iterator[Violation]:
    name = descriptor.name
    if not isinstance(value, Mapping):
        error = _schema().SchemaError((), f"expected a mapping, got {type(value).__name__}")
        yield _violation(base, what, name, error)
        return
    wrong_type = _typed(value, expected)
    if wrong_type is not None:
        yield _violation(base, what, name, _schema().SchemaError(("@type",), wrong_type))
        return
    error = _schema().parse_error({k: v for k, v in value.items() if k != "@type"}, descriptor)
    if error is not None:
        yield _violation(base, what, name, error)


def check_schema(subject: Subject) -> Iterator[Violation]:
    schema = _schema()
    pieces = subject.pieces
    for piece in pieces.filters:
        value = piece.patch.value or {}
        key = find_key(value, "typed_config")
        if key is None:
            error = schema.SchemaError((), "the filter has no typed_config")
            yield _violation(piece.patch.value_path, "the ext_proc HTTP filter", "HttpFilter", error)
            continue
        yield from _check_any(
            piece.config_path,
            "the ext_proc typed_config",
            value[key],
            EXT_PROC_TYPE,
            schema.EXTERNAL_PROCESSOR,
        )
    for route in pieces.routes:
        yield from _check_any(
            route.path, "the ExtProcPerRoute override", route.entry, PER_ROUTE_TYPE, schema.EXT_PROC_PER_ROUTE
        )
    for cluster in pieces.clusters.values():
        cluster_error = schema.parse_error(cluster.value, schema.CLUSTER)
        if cluster_error is not None:
            yield _violation(cluster.path, f"cluster {cluster.name!r}", "Cluster", cluster_error)


EPX008 = Rule("EPX008", "envoy-schema", check_schema)
