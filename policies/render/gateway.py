"""Render an EnvoyFilter into the Envoy bootstrap an Istio gateway would run with it.

Pure: a mapping in, a JSON-like bootstrap out. The EnvoyFilter's ``configPatches`` are applied with Istio's
semantics (see `policies.render.patches`) to the reference gateway of `policies.render.reference`: a
listener with the HTTP connection manager, an inert ``envoy.filters.http.ext_proc`` placeholder and the
router; the routes of `RenderOptions`; an ``ORIGINAL_DST`` pool cluster that reads
``x-gateway-destination-endpoint``. The result passes ``envoy --mode validate`` when the filter's values are
valid Envoy config, and is what the demo, the benchmarks and the live tests boot.

    rendering = render_gateway(envoy_filter, options=RenderOptions(listen_port=0, admin_port=0))
    rendering.bootstrap   # dict: Envoy v3 bootstrap (static_resources + admin)
    rendering.skipped     # patches that changed nothing, with the reason

Patches the renderer does not model (other ``applyTo`` values, sidecar contexts, REPLACE of a filter the
gateway lacks) are reported in ``skipped``; a shape that cannot be a patch raises `RenderError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.pieces import PER_ROUTE_TYPE
from policies.render.merge import find_key, get_field
from policies.render.options import (
    DESTINATION_HEADER,
    EXT_PROC_FILTER,
    RenderError,
    RenderOptions,
    RouteSpec,
    SocketAddress,
)
from policies.render.patches import SkippedPatch, apply_config_patch, read_config_patch
from policies.render.reference import build_reference

__all__ = [
    "DESTINATION_HEADER",
    "EXT_PROC_FILTER",
    "RenderError",
    "RenderOptions",
    "Rendering",
    "RouteSpec",
    "SkippedPatch",
    "SocketAddress",
    "render_bootstrap",
    "render_gateway",
]

logger = logging.getLogger(__name__)

_KIND = "EnvoyFilter"


@dataclass(frozen=True, slots=True)
class Rendering:
    """A rendered bootstrap and the patches that did not change it."""

    bootstrap: dict[str, Any]
    skipped: tuple[SkippedPatch, ...]


def render_gateway(envoy_filter: Mapping[str, Any], *, options: RenderOptions) -> Rendering:
    """Apply ``envoy_filter``'s config patches to the reference gateway; the input is not modified."""
    patches = [read_config_patch(i, entry) for i, entry in enumerate(_config_patches(envoy_filter))]
    bootstrap = build_reference(options)
    skipped: list[SkippedPatch] = []
    for patch in patches:
        note = apply_config_patch(bootstrap, patch, options)
        if note is not None:
            logger.debug("patch skipped: %s", note)
            skipped.append(note)
    _disable_ext_proc_on_baseline_routes(bootstrap, options)
    _override_endpoints(bootstrap, options)
    return Rendering(bootstrap=bootstrap, skipped=tuple(skipped))


def render_bootstrap(envoy_filter: Mapping[str, Any], *, options: RenderOptions) -> dict[str, Any]:
    """The bootstrap of `render_gateway` alone (for callers that do not report skipped patches)."""
    return render_gateway(envoy_filter, options=options).bootstrap


def _config_patches(envoy_filter: object) -> list[Any]:
    if not isinstance(envoy_filter, Mapping):
        raise RenderError(f"an EnvoyFilter must be a mapping, got {type(envoy_filter).__name__}")
    kind = envoy_filter.get("kind")
    if kind != _KIND:
        raise RenderError(f"expected kind {_KIND}, got {kind!r}")
    spec = envoy_filter.get("spec")
    if spec is None:
        return []
    if not isinstance(spec, Mapping):
        raise RenderError(f"spec must be a mapping, got {type(spec).__name__}")
    patches = get_field(spec, "configPatches")
    if patches is None:
        return []
    if not isinstance(patches, list):
        raise RenderError(f"spec.configPatches must be a list, got {type(patches).__name__}")
    return patches


def _routes_by_name(bootstrap: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    static = get_field(bootstrap, "staticResources")
    for listener in get_field(static, "listeners") or []:
        for chain in get_field(listener, "filterChains") or []:
            for item in get_field(chain, "filters") or []:
                route_config = get_field(get_field(item, "typedConfig"), "routeConfig")
                for host in get_field(route_config, "virtualHosts") or []:
                    for route in get_field(host, "routes") or []:
                        name = get_field(route, "name")
                        if isinstance(route, dict) and isinstance(name, str):
                            found.setdefault(name, []).append(route)
    return found


def _disable_ext_proc_on_baseline_routes(bootstrap: Mapping[str, Any], options: RenderOptions) -> None:
    routes = _routes_by_name(bootstrap)
    for spec in options.routes:
        if not spec.ext_proc_disabled:
            continue
        for route in routes.get(spec.name, []):
            key = find_key(route, "typed_per_filter_config") or "typed_per_filter_config"
            per_filter = route.setdefault(key, {})
            per_filter[EXT_PROC_FILTER] = {"@type": PER_ROUTE_TYPE, "disabled": True}


def _override_endpoints(bootstrap: Mapping[str, Any], options: RenderOptions) -> None:
    if not options.endpoint_overrides:
        return
    clusters = get_field(get_field(bootstrap, "staticResources"), "clusters") or []
    by_name = {get_field(c, "name"): c for c in clusters if isinstance(c, dict)}
    for name, addresses in options.endpoint_overrides.items():
        cluster = by_name.get(name)
        if cluster is None:
            raise RenderError(
                f"endpoint override for cluster {name!r}: no such cluster in the rendered config"
            )
        for stale in ("load_assignment", "loadAssignment", "hosts"):
            cluster.pop(stale, None)
        cluster["load_assignment"] = {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": address.address, "port_value": address.port}
                                }
                            }
                        }
                        for address in addresses
                    ]
                }
            ],
        }
