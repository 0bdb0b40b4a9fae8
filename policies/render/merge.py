"""Proto-style merge of Envoy JSON values, the way Istio's EnvoyFilter MERGE combines them.

Messages merge field by field (recursively), repeated fields append, scalars and enums are replaced.
A key is the same field under either JSON spelling (``request_body_mode`` and ``requestBodyMode``); the
destination keeps the spelling it already has. Where the Envoy message type is known (from the protos
that xds-protos ships), the merge follows its schema: setting one member of a oneof clears the others,
map entries (``typed_per_filter_config``) merge value by value, well-known types (Duration, Struct, ...)
are replaced whole. An ``Any`` value (``"@type"``) merges only into a value of the same type; a value of
another type replaces it. Where the type is unknown, plain JSON objects merge by key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

TYPE_KEY = "@type"

# protobuf descriptors (``google.protobuf.descriptor``) carry no type information for mypy.
Descriptor = Any
FieldDescriptor = Any
_TYPE_MESSAGE = 11  # _TYPE_MESSAGE
_LABEL_REPEATED = 3  # _LABEL_REPEATED

# Messages whose JSON form is not an object of their fields: a new value replaces the old one whole.
_REPLACED_WHOLE = frozenset(
    {
        "google.protobuf.Duration",
        "google.protobuf.Timestamp",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.FieldMask",
        "google.protobuf.BoolValue",
        "google.protobuf.BytesValue",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int32Value",
        "google.protobuf.Int64Value",
        "google.protobuf.StringValue",
        "google.protobuf.UInt32Value",
        "google.protobuf.UInt64Value",
    }
)
_ANY = "google.protobuf.Any"
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])([A-Z])")

# The descriptors the renderer merges by schema; importing their modules registers them in the pool.
ROUTE = route_components_pb2.Route.DESCRIPTOR
VIRTUAL_HOST = route_components_pb2.VirtualHost.DESCRIPTOR
CLUSTER = cluster_pb2.Cluster.DESCRIPTOR
HTTP_FILTER = http_connection_manager_pb2.HttpFilter.DESCRIPTOR
_KNOWN_MODULES = (ext_proc_pb2, router_pb2, tls_pb2, http_protocol_options_pb2)
_POOL = route_components_pb2.DESCRIPTOR.pool


def snake_case(key: str) -> str:
    """``requestBodyMode`` -> ``request_body_mode``; snake_case keys come back unchanged."""
    return _CAMEL_BOUNDARY.sub(r"_\1", key).lower()


def same_key(left: str, right: str) -> bool:
    """Whether two JSON keys name the same proto field (either spelling)."""
    return left == right or snake_case(left) == snake_case(right)


def find_key(mapping: Mapping[str, Any], key: str) -> str | None:
    """The key of ``mapping`` that names the same field as ``key`` (exact spelling preferred)."""
    if key in mapping:
        return key
    return next((existing for existing in mapping if same_key(existing, key)), None)


def get_field(mapping: Any, key: str) -> Any:
    """``mapping[key]`` under either spelling; None when absent or when ``mapping`` is not a mapping."""
    if not isinstance(mapping, Mapping):
        return None
    found = find_key(mapping, key)
    return None if found is None else mapping[found]


def descriptor_for_type_url(type_url: object) -> Descriptor | None:
    """The message descriptor an ``@type`` names, if the protos that define it are loaded."""
    if not isinstance(type_url, str) or not type_url:
        return None
    name = type_url.rsplit("/", 1)[-1]
    try:
        return _POOL.FindMessageTypeByName(name)
    except KeyError:
        return None


def merge_message(
    destination: Mapping[str, Any], source: Mapping[str, Any], descriptor: Descriptor | None
) -> dict[str, Any]:
    """A new JSON object: ``source`` merged into ``destination`` as message ``descriptor`` (None: by key)."""
    merged = copy.deepcopy(dict(destination))
    for key, value in source.items():
        if key == TYPE_KEY:
            merged.setdefault(TYPE_KEY, copy.deepcopy(value))
            continue
        field = _field(descriptor, key)
        if field is not None:
            _clear_oneof_siblings(merged, field, descriptor)
        existing = _key_of_field(merged, key, field, descriptor)
        if existing is None:
            merged[key] = copy.deepcopy(value)
        else:
            merged[existing] = _merge_value(merged[existing], value, field)
    return merged


def merge_any(destination: Any, source: Any) -> Any:
    """Merge two ``Any`` JSON values: same ``@type`` merges by schema, another type replaces."""
    if not isinstance(destination, Mapping) or not isinstance(source, Mapping):
        return copy.deepcopy(source)
    source_type = source.get(TYPE_KEY)
    destination_type = destination.get(TYPE_KEY)
    if source_type is not None and source_type != destination_type:
        return copy.deepcopy(source)
    return merge_message(destination, source, descriptor_for_type_url(destination_type))


def _merge_value(destination: Any, source: Any, field: FieldDescriptor | None) -> Any:
    if field is None:
        return _merge_untyped(destination, source)
    if _is_map(field):
        return _merge_map(destination, source, field)
    if _is_repeated(field):
        if isinstance(destination, list) and isinstance(source, list):
            return copy.deepcopy(destination) + copy.deepcopy(source)
        return copy.deepcopy(source)
    if field.type != _TYPE_MESSAGE:
        return copy.deepcopy(source)
    return _merge_message_value(destination, source, field.message_type)


def _merge_message_value(destination: Any, source: Any, descriptor: Descriptor) -> Any:
    if descriptor.full_name == _ANY:
        return merge_any(destination, source)
    if descriptor.full_name in _REPLACED_WHOLE:
        return copy.deepcopy(source)
    if isinstance(destination, Mapping) and isinstance(source, Mapping):
        return merge_message(destination, source, descriptor)
    return copy.deepcopy(source)


def _merge_map(destination: Any, source: Any, field: FieldDescriptor) -> Any:
    if not isinstance(destination, Mapping) or not isinstance(source, Mapping):
        return copy.deepcopy(source)
    value_field = field.message_type.fields_by_name["value"]
    merged = copy.deepcopy(dict(destination))
    for key, value in source.items():
        if key in merged and value_field.type == _TYPE_MESSAGE:
            merged[key] = _merge_message_value(merged[key], value, value_field.message_type)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_untyped(destination: Any, source: Any) -> Any:
    if isinstance(destination, Mapping) and isinstance(source, Mapping):
        if TYPE_KEY in source or TYPE_KEY in destination:
            return merge_any(destination, source)
        return merge_message(destination, source, None)
    if isinstance(destination, list) and isinstance(source, list):
        return copy.deepcopy(destination) + copy.deepcopy(source)
    return copy.deepcopy(source)


def _field(descriptor: Descriptor | None, key: str) -> FieldDescriptor | None:
    if descriptor is None:
        return None
    field: FieldDescriptor | None = descriptor.fields_by_name.get(key)
    if field is None:
        field = descriptor.fields_by_camelcase_name.get(key)
    if field is None:
        field = descriptor.fields_by_name.get(snake_case(key))
    return field


def _key_of_field(
    mapping: Mapping[str, Any], key: str, field: FieldDescriptor | None, descriptor: Descriptor | None
) -> str | None:
    if field is None:
        return find_key(mapping, key)
    return next((existing for existing in mapping if _field(descriptor, existing) is field), None)


def _clear_oneof_siblings(
    mapping: dict[str, Any], field: FieldDescriptor, descriptor: Descriptor | None
) -> None:
    oneof = field.containing_oneof
    if oneof is None or len(oneof.fields) < 2:
        return
    for existing in list(mapping):
        other = _field(descriptor, existing)
        if other is not None and other is not field and other.containing_oneof is oneof:
            del mapping[existing]


def _is_map(field: FieldDescriptor) -> bool:
    return _is_repeated(field) and field.type == _TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf 6+; older releases only have ``label``
    if flag is not None:
        return bool(flag)
    return bool(getattr(field, "label", None) == _LABEL_REPEATED)
