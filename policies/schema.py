"""Parsing Envoy values with the real Envoy protos (EPX008), cheaply.

`json_format.ParseDict` is the authority, but it is slow; a descriptor walk that accepts only shapes it is
sure ParseDict accepts runs first, and ParseDict runs only when the walk is unsure. Both spellings
(`request_body_mode`, `requestBodyMode`) are accepted, as ParseDict does.

The Envoy proto modules are the slowest imports of the engine, so each loads when a value of its type is
first checked: `EXTERNAL_PROCESSOR`, `EXT_PROC_PER_ROUTE` and `CLUSTER` are module attributes resolved on
first use, an Any's payload type loads its module when the walk meets it, and ParseDict first loads every
module this parser knows (the types an Any may name then resolve as they always did).
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from google.protobuf import json_format  # type: ignore[import-untyped]
    from google.protobuf.descriptor import Descriptor, FieldDescriptor  # type: ignore[import-untyped]
    from google.protobuf.message import Message  # type: ignore[import-untyped]

    EXTERNAL_PROCESSOR: Descriptor
    EXT_PROC_PER_ROUTE: Descriptor
    CLUSTER: Descriptor
    KNOWN_ANY_TYPES: tuple[Descriptor, ...]

_EXT_PROC_MODULE: Final = "envoy.extensions.filters.http.ext_proc.v3.ext_proc_pb2"
_CLUSTER_MODULE: Final = "envoy.config.cluster.v3.cluster_pb2"
_MESSAGES: Final = MappingProxyType(
    {
        "EXTERNAL_PROCESSOR": (_EXT_PROC_MODULE, "ExternalProcessor"),
        "EXT_PROC_PER_ROUTE": (_EXT_PROC_MODULE, "ExtProcPerRoute"),
        "CLUSTER": (_CLUSTER_MODULE, "Cluster"),
    }
)
"""The messages EPX008 parses values as (module attribute: proto module, message)."""
_KNOWN_ANY: Final = MappingProxyType(
    {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": (
            "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2"
        ),
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext": (
            "envoy.extensions.transport_sockets.tls.v3.tls_pb2"
        ),
    }
)
"""Any payloads in EPP clusters (full name: proto module), resolved through the default pool."""


def __getattr__(name: str) -> Any:
    """`EXTERNAL_PROCESSOR`, `EXT_PROC_PER_ROUTE`, `CLUSTER` and `KNOWN_ANY_TYPES`, loaded on first use."""
    if name in _MESSAGES:
        value: Any = _message_type(name).DESCRIPTOR
    elif name == "KNOWN_ANY_TYPES":
        value = tuple(
            getattr(importlib.import_module(module), full_name.rpartition(".")[2]).DESCRIPTOR
            for full_name, module in _KNOWN_ANY.items()
        )
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _message_type(name: str) -> type[Message]:
    module, message = _MESSAGES[name]
    return getattr(importlib.import_module(module), message)  # type: ignore[no-any-return]


@functools.cache
def _load_known_modules() -> None:
    """Every proto module this parser names, as they were all loaded before ParseDict or a failed lookup."""
    for module, _ in _MESSAGES.values():
        importlib.import_module(module)
    for module in _KNOWN_ANY.values():
        importlib.import_module(module)


logger = logging.getLogger(__name__)

_PROTO_PACKAGE: Final = re.compile(r"envoy(\.[a-z0-9_]+)+\.v[0-9]+(alpha|beta)?[0-9]*")

_DURATION: Final = re.compile(r"-?\d+(\.\d{1,9})?s")


@functools.cache
def _int_ranges() -> Mapping[int, tuple[int, int]]:
    """The range of each integer field type (`FieldDescriptor.TYPE_*`)."""
    from google.protobuf.descriptor import FieldDescriptor

    return MappingProxyType(
        {
            FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
            FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
            FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
            FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
            FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
            FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
            FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
            FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
            FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
            FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
        }
    )


_WRAPPERS: Final = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_FAILED_FIELD: Final = re.compile(r"Failed to parse (\S+) field")

Path = tuple[str | int, ...]
Doubt = list[str | int]
"""A path built leaf first while the walk unwinds."""


@dataclass(frozen=True, slots=True)
class SchemaError:
    """Where (tokens relative to the value) and why a value does not parse."""

    path: Path
    reason: str

    @property
    def field_path(self) -> str:
        return ".".join(str(t) if isinstance(t, str) else f"[{t}]" for t in self.path).replace(".[", "[")


@dataclass(frozen=True, slots=True)
class _Scalar:
    """How to check a non-message value: `enum`, `string`, `bool`, `float` or `int` (with bounds)."""

    kind: str
    names: frozenset[str] = frozenset()
    low: int = 0
    high: int = 0

    def accepts(self, value: Any) -> bool:
        kind = self.kind
        if kind == "enum":
            return isinstance(value, str) and value in self.names
        if kind == "string":
            return isinstance(value, str)
        if kind == "bool":
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if kind == "float":
            return isinstance(value, int | float)
        if kind == "int":
            return isinstance(value, int) and self.low <= value <= self.high
        return False


def _scalar(field: FieldDescriptor) -> _Scalar:
    from google.protobuf.descriptor import FieldDescriptor

    kind = field.type
    if kind == FieldDescriptor.TYPE_ENUM:
        return _Scalar("enum", frozenset(field.enum_type.values_by_name))
    if kind == FieldDescriptor.TYPE_STRING:
        return _Scalar("string")
    if kind == FieldDescriptor.TYPE_BOOL:
        return _Scalar("bool")
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _Scalar("float")
    bounds = _int_ranges().get(kind)
    if bounds is not None:
        return _Scalar("int", low=bounds[0], high=bounds[1])
    return _Scalar("unsure")


@dataclass(slots=True)
class _Field:
    """What the walk needs about one field, read once from its descriptor."""

    oneof: str | None
    shape: str
    """`single`, `repeated`, `map` or `unsure`."""
    scalar: _Scalar | None
    message: Descriptor | None
    node: _Node | None = None

    def message_node(self) -> _Node:
        if self.node is None:
            assert self.message is not None
            self.node = _node(self.message)
        return self.node


@dataclass(frozen=True, slots=True)
class _Node:
    """A message type, read once from its descriptor: `special` names the well-known JSON forms."""

    special: str
    fields: Mapping[str, _Field]
    scalar: _Scalar | None


def _element(field: FieldDescriptor, *, oneof: str | None, shape: str) -> _Field:
    message = field.message_type
    return _Field(oneof, shape, None if message is not None else _scalar(field), message)


@cache
def _node(descriptor: Descriptor) -> _Node:
    """The walk's view of a message type (descriptors are immutable, so this is memoised)."""
    from google.protobuf.descriptor import FieldDescriptor

    full_name = descriptor.full_name
    if full_name.startswith("google.protobuf."):
        special = {"google.protobuf.Duration": "duration", "google.protobuf.Empty": "empty"}.get(full_name)
        if full_name == "google.protobuf.Any":
            special = "any"
        elif full_name in _WRAPPERS:
            return _Node("wrapper", {}, _scalar(descriptor.fields_by_name["value"]))
        return _Node(special or "unsure", {}, None)
    table: dict[str, _Field] = {}
    for field in descriptor.fields:
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            key_type = message.fields_by_name["key"].type
            shape = "map" if key_type == FieldDescriptor.TYPE_STRING else "unsure"
            info = _element(message.fields_by_name["value"], oneof=None, shape=shape)
        else:
            oneof = field.containing_oneof
            shape = "repeated" if field.is_repeated else "single"
            info = _element(field, oneof=oneof.name if oneof else None, shape=shape)
        for key in (field.name, field.camelcase_name, field.json_name):
            table[key] = info
    return _Node("", table, None)


def _import_proto_package(full_name: str) -> None:
    """Import the generated modules of the package a message type lives in, so the pool knows it."""
    import pkgutil

    package = full_name.rpartition(".")[0]
    # Only Envoy's own generated packages: a type URL is user input and must not pick what gets imported.
    if not _PROTO_PACKAGE.fullmatch(package):
        return
    try:
        module = importlib.import_module(package)
    except Exception:  # a missing or broken package only means the type stays unknown
        return
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if info.name.endswith("_pb2"):
            try:
                importlib.import_module(f"{package}.{info.name}")
            except Exception:  # as above: the type stays unknown and EPX008 reports it
                logger.debug("proto module %s.%s does not import", package, info.name)


@cache
def _node_for_type_url(type_url: str) -> _Node | None:
    """The node of an Any's payload type, None when no installed Envoy proto defines it."""
    full_name = type_url.rsplit("/", 1)[-1]
    descriptor = _find_message_type(full_name)
    if descriptor is None and full_name in _KNOWN_ANY:
        importlib.import_module(_KNOWN_ANY[full_name])
        descriptor = _find_message_type(full_name)
    if descriptor is None:
        _import_proto_package(full_name)
        descriptor = _find_message_type(full_name)
    if descriptor is None:
        _load_known_modules()
        descriptor = _find_message_type(full_name)
    return None if descriptor is None else _node(descriptor)


def _find_message_type(full_name: str) -> Descriptor | None:
    from google.protobuf import descriptor_pool

    try:
        return descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        return None


def _doubt_element(value: Any, info: _Field) -> Doubt | None:
    scalar = info.scalar
    if scalar is not None:
        return None if scalar.accepts(value) else []
    return _doubt_message(value, info.node or info.message_node())


def _doubt_message(value: Any, node: _Node) -> Doubt | None:
    """The reversed path of the first spot the walk is not sure about; None when the value surely parses."""
    if node.special:
        return _doubt_well_known(value, node)
    if not isinstance(value, dict):
        return []
    fields = node.fields
    oneofs: list[str] = []
    for key, item in value.items():
        info = fields.get(key)
        if info is None or item is None:
            return [key]
        if info.oneof is not None:
            if info.oneof in oneofs:
                return [key]
            oneofs.append(info.oneof)
        shape = info.shape
        doubt: Doubt | None = None
        if shape == "single":
            scalar = info.scalar
            if scalar is not None:
                if scalar.accepts(item):
                    continue
                return [key]
            doubt = _doubt_message(item, info.node or info.message_node())
        elif shape == "repeated" and isinstance(item, list):
            for index, element in enumerate(item):
                doubt = _doubt_element(element, info)
                if doubt is not None:
                    doubt.append(index)
                    break
        elif shape == "map" and isinstance(item, dict):
            for name, element in item.items():
                doubt = _doubt_element(element, info)
                if doubt is not None:
                    doubt.append(str(name))
                    break
        else:
            return [key]
        if doubt is not None:
            doubt.append(key)
            return doubt
    return None


def _doubt_well_known(value: Any, node: _Node) -> Doubt | None:
    special = node.special
    if special == "duration":
        return None if isinstance(value, str) and _DURATION.fullmatch(value) else []
    if special == "wrapper":
        return None if node.scalar is not None and node.scalar.accepts(value) else []
    if special == "empty":
        return None if isinstance(value, dict) and not value else []
    if special != "any" or not isinstance(value, dict):
        return []
    type_url = value.get("@type")
    if not isinstance(type_url, str):
        return []
    inner_node = _node_for_type_url(type_url)
    if inner_node is None:
        return ["@type"]
    if inner_node.special:
        return []
    return _doubt_message({k: v for k, v in value.items() if k != "@type"}, inner_node)


def first_doubt(value: Any, descriptor: Descriptor) -> Path | None:
    """Where the descriptor walk stops being sure `value` parses (None: it surely does)."""
    doubt = _doubt_message(value, _node(descriptor))
    return None if doubt is None else tuple(reversed(doubt))


def _message_class(descriptor: Descriptor) -> type[Message]:
    package, _, message = descriptor.full_name.rpartition(".")
    for name, (module, class_name) in _MESSAGES.items():
        if class_name == message and module.rpartition(".")[0] == package:
            return _message_type(name)
    raise KeyError(descriptor.full_name)


def _reason(error: json_format.ParseError) -> str:
    text = str(error).splitlines()[0]
    inner = text
    while inner.startswith("Failed to parse "):
        _, _, inner = inner.partition(" field: ")
    return inner.rstrip(".").strip() or text


def _path_from_message(error: json_format.ParseError) -> Path:
    return tuple(_FAILED_FIELD.findall(str(error).splitlines()[0]))


def parse_error(value: Mapping[str, Any], descriptor: Descriptor) -> SchemaError | None:
    """The first reason `value` does not parse as `descriptor`'s message, or None when it parses."""
    doubt = first_doubt(value, descriptor)
    if doubt is None:
        return None
    from google.protobuf import json_format

    _load_known_modules()  # the Any types ParseDict may meet
    try:
        json_format.ParseDict(value, _message_class(descriptor)())
    except json_format.ParseError as exc:
        walked = _path_from_message(exc)
        path = doubt if len(doubt) >= len(walked) else walked
        return SchemaError(path, _reason(exc))
    except Exception as exc:  # ParseDict lets a few Python errors through (OverflowError for inf)
        return SchemaError(doubt, f"{type(exc).__name__}: {exc}")
    return None
