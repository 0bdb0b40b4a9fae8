"""Typed, read-only views of an EnvoyFilter document.

The views wrap the plain document without copying it: every field the model does not name stays in the
mapping, so nothing is lost. Fixes are JSON Patch operations on that same plain document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

ISTIO_NETWORKING_GROUP: Final = "networking.istio.io"
API_VERSIONS: Final = frozenset(f"{ISTIO_NETWORKING_GROUP}/{v}" for v in ("v1alpha3", "v1beta1", "v1"))
EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


class DocumentError(Exception):
    """The document is not something the engine can read at all (not a mapping)."""


def as_mapping(value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping, else an empty one (malformed shapes are read as absent)."""
    return value if isinstance(value, dict) else EMPTY


def is_envoy_filter(document: Mapping[str, Any]) -> bool:
    api_version = document.get("apiVersion")
    if not isinstance(api_version, str):
        return False
    return document.get("kind") == "EnvoyFilter" and api_version in API_VERSIONS


@dataclass(slots=True)
class ConfigPatch:
    """One entry of `spec.configPatches` that is a mapping."""

    index: int
    raw: Mapping[str, Any]
    path: str
    """`/spec/configPatches/<index>`."""
    apply_to: str
    patch: Mapping[str, Any]
    """The entry's `patch` (empty when missing or malformed)."""
    operation: str
    value: Mapping[str, Any] | None
    """`patch.value` when it is a mapping."""

    @property
    def value_path(self) -> str:
        return self.path + "/patch/value"

    @property
    def match(self) -> Mapping[str, Any]:
        return as_mapping(self.raw.get("match"))

    @property
    def context(self) -> str | None:
        context = self.match.get("context")
        return context if isinstance(context, str) else None

    @property
    def sub_filter_name(self) -> str | None:
        """`match.listener.filterChain.filter.subFilter.name`, if set."""
        listener = as_mapping(self.match.get("listener"))
        chain = as_mapping(listener.get("filterChain"))
        network_filter = as_mapping(chain.get("filter"))
        sub_filter = as_mapping(network_filter.get("subFilter"))
        name = sub_filter.get("name")
        return name if isinstance(name, str) else None


def read_config_patch(index: int, raw: Mapping[str, Any]) -> ConfigPatch:
    patch = as_mapping(raw.get("patch"))
    value = patch.get("value")
    return ConfigPatch(
        index=index,
        raw=raw,
        path=f"/spec/configPatches/{index}",
        apply_to=str(raw.get("applyTo") or ""),
        patch=patch,
        operation=str(patch.get("operation") or ""),
        value=value if isinstance(value, dict) else None,
    )


@dataclass(slots=True)
class EnvoyFilter:
    """A view of a networking.istio.io EnvoyFilter (v1alpha3, v1beta1 or v1)."""

    raw: Mapping[str, Any]
    metadata: Mapping[str, Any]
    name: str
    namespace: str
    annotations: Mapping[str, Any]

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> EnvoyFilter:
        metadata = as_mapping(raw.get("metadata"))
        return cls(
            raw=raw,
            metadata=metadata,
            name=str(metadata.get("name") or ""),
            namespace=str(metadata.get("namespace") or ""),
            annotations=as_mapping(metadata.get("annotations")),
        )

    @property
    def api_version(self) -> str:
        return str(self.raw.get("apiVersion") or "")

    @property
    def spec(self) -> Mapping[str, Any]:
        return as_mapping(self.raw.get("spec"))

    @property
    def config_patches(self) -> tuple[ConfigPatch, ...]:
        """The entries of `spec.configPatches` that are mappings (anything else is skipped)."""
        patches = self.spec.get("configPatches")
        if not isinstance(patches, list):
            return ()
        return tuple(
            read_config_patch(index, entry) for index, entry in enumerate(patches) if isinstance(entry, dict)
        )

    @property
    def patch_count(self) -> int:
        patches = self.spec.get("configPatches")
        return len(patches) if isinstance(patches, list) else 0


def read_envoy_filter(document: Any) -> EnvoyFilter | None:
    """A view of an EnvoyFilter; None for other kinds; `DocumentError` for a non-mapping."""
    if not isinstance(document, Mapping):
        raise DocumentError(f"a document must be a mapping, not a {type(document).__name__}")
    if not is_envoy_filter(document):
        return None
    return EnvoyFilter.of(document)
