"""The Envoy config an Istio gateway would run with an EnvoyFilter: bootstrap, patches, merge. Pure."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policies.render.gateway import EXT_PROC_FILTER, Rendering, render_bootstrap, render_gateway
    from policies.render.options import RenderError, RenderOptions, RouteSpec, SocketAddress

_HOMES: dict[str, str] = {
    "EXT_PROC_FILTER": "policies.render.gateway",
    "render_bootstrap": "policies.render.gateway",
    "render_gateway": "policies.render.gateway",
    "RenderError": "policies.render.options",
    "Rendering": "policies.render.gateway",
    "RenderOptions": "policies.render.options",
    "RouteSpec": "policies.render.options",
    "SocketAddress": "policies.render.options",
}

__all__ = [
    "EXT_PROC_FILTER",
    "RenderError",
    "RenderOptions",
    "Rendering",
    "RouteSpec",
    "SocketAddress",
    "render_bootstrap",
    "render_gateway",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
