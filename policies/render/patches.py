"""Istio's EnvoyFilter patch semantics, applied to a gateway bootstrap (plain JSON data).

Supported (the rest is reported as skipped, never raised):

- ``HTTP_FILTER``: ADD (append), INSERT_FIRST, INSERT_BEFORE / INSERT_AFTER the named sub-filter (without a
  sub-filter: at the beginning / at the end), REPLACE the first filter of that name (none: no effect, as in
  Istio), MERGE into and REMOVE every filter of that name (these three need a sub-filter name and are
  reported as skipped without one). As in Istio, ``listener.name`` must be the listener's name,
  ``listener.portNumber`` the gateway port, ``listener.filterChain.name`` the filter chain's own name
  (a chain without a name matches no name), ``listener.filterChain.filter.name`` the network filter's
  name (only the HTTP connection manager carries HTTP filters). A patch nothing matches is reported as
  applying to nothing.
- ``CLUSTER``: ADD, and REMOVE / MERGE / REPLACE on clusters matched by ``cluster.name`` (or Istio's
  ``outbound|PORT|SUBSET|HOST`` parts ``portNumber``, ``subset``, ``service``).
- ``HTTP_ROUTE``: MERGE, REMOVE, INSERT_FIRST, INSERT_BEFORE / INSERT_AFTER; ``VIRTUAL_HOST``: MERGE, ADD,
  REMOVE; matched by ``routeConfiguration`` (``portNumber``, ``name``, ``vhost.name``, ``vhost.route.name``,
  ``vhost.route.action``).

``match.context`` GATEWAY or ANY applies; SIDECAR_INBOUND / SIDECAR_OUTBOUND never reach a gateway.
Keys of the EnvoyFilter and of Envoy values are matched under both JSON spellings.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from policies.render.merge import (
    CLUSTER,
    HTTP_FILTER,
    ROUTE,
    VIRTUAL_HOST,
    Descriptor,
    find_key,
    get_field,
    merge_message,
)
from policies.render.options import HCM_FILTER, RenderError, RenderOptions

GATEWAY_CONTEXTS = frozenset({"ANY", "GATEWAY"})
_HCM_NAMES = frozenset({HCM_FILTER, "envoy.http_connection_manager"})
_ROUTE_ACTIONS = {"ROUTE": "route", "REDIRECT": "redirect", "DIRECT_RESPONSE": "direct_response"}


@dataclass(frozen=True, slots=True)
class SkippedPatch:
    """A config patch that changed nothing, and why."""

    index: int
    apply_to: str
    operation: str
    reason: str

    def __str__(self) -> str:
        return f"configPatches[{self.index}] {self.apply_to} {self.operation}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ConfigPatch:
    """One entry of ``spec.configPatches``, read leniently (both spellings, upper-cased enums)."""

    index: int
    apply_to: str
    operation: str
    match: Mapping[str, Any]
    value: Mapping[str, Any] | None

    def skip(self, reason: str) -> SkippedPatch:
        return SkippedPatch(self.index, self.apply_to, self.operation, reason)


def read_config_patch(index: int, entry: object) -> ConfigPatch:
    """Parse one ``configPatches`` entry; a shape that cannot be a patch is a `RenderError`."""
    where = f"spec.configPatches[{index}]"
    if not isinstance(entry, Mapping):
        raise RenderError(f"{where} must be a mapping, got {_kind(entry)}")
    match = get_field(entry, "match")
    if match is None:
        match = {}
    if not isinstance(match, Mapping):
        raise RenderError(f"{where}.match must be a mapping, got {_kind(match)}")
    patch = get_field(entry, "patch")
    if not isinstance(patch, Mapping):
        raise RenderError(f"{where}.patch must be a mapping, got {_kind(patch)}")
    operation = str(get_field(patch, "operation") or "").upper()
    value = get_field(patch, "value")
    if operation != "REMOVE" and not isinstance(value, Mapping):
        raise RenderError(f"{where}.patch.value must be a mapping, got {_kind(value)}")
    return ConfigPatch(
        index=index,
        apply_to=str(get_field(entry, "applyTo") or "").upper(),
        operation=operation,
        match=match,
        value=value if isinstance(value, Mapping) else None,
    )


def apply_config_patch(
    bootstrap: dict[str, Any], patch: ConfigPatch, options: RenderOptions
) -> SkippedPatch | None:
    """Apply one patch to ``bootstrap`` in place; return why it changed nothing, if it did not."""
    context = str(get_field(patch.match, "context") or "ANY").upper()
    if context not in GATEWAY_CONTEXTS:
        return patch.skip(f"context {context} does not apply to a gateway")
    appliers: dict[str, Callable[[dict[str, Any], ConfigPatch, RenderOptions], str | None]] = {
        "HTTP_FILTER": _apply_http_filter,
        "CLUSTER": _apply_cluster,
        "HTTP_ROUTE": _apply_http_route,
        "VIRTUAL_HOST": _apply_virtual_host,
    }
    applier = appliers.get(patch.apply_to)
    if applier is None:
        return patch.skip(f"applyTo {patch.apply_to or '(empty)'} is not rendered")
    reason = applier(bootstrap, patch, options)
    return None if reason is None else patch.skip(reason)


# HTTP_FILTER


def _apply_http_filter(bootstrap: dict[str, Any], patch: ConfigPatch, options: RenderOptions) -> str | None:
    listener_match = get_field(patch.match, "listener") or {}
    filter_chain = get_field(listener_match, "filterChain") or {}
    network_filter = get_field(filter_chain, "filter") or {}
    sub_filter = get_field(network_filter, "subFilter") or {}
    sub_name = get_field(sub_filter, "name")
    chains = _matching_http_filter_lists(bootstrap, listener_match, options)
    if not chains:
        chain_name = get_field(filter_chain, "name")
        if chain_name:
            return (
                f"the patch applies to nothing: no filter chain is named {chain_name!r} "
                "(listener.filterChain.name matches a chain's own name, not a filter's)"
            )
        return "the patch applies to nothing: no listener with an HTTP connection manager matches"
    operation = patch.operation
    if operation in {"REPLACE", "MERGE", "REMOVE"} and not sub_name:
        return f"{operation} needs match.listener.filterChain.filter.subFilter.name"
    changed = False
    for filters in chains:
        changed = _patch_http_filters(filters, patch, sub_name) or changed
    if changed:
        return None
    if operation in {"REPLACE", "MERGE", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER"}:
        return f"no http filter named {sub_name} (Istio ignores the patch)"
    return f"operation {operation or '(empty)'} is not rendered for HTTP_FILTER"


def _patch_http_filters(filters: list[Any], patch: ConfigPatch, sub_name: str | None) -> bool:
    positions = [i for i, item in enumerate(filters) if _name_of(item) == sub_name] if sub_name else []
    return _patch_list(filters, patch, positions, named=bool(sub_name), descriptor=HTTP_FILTER)


def _patch_list(
    items: list[Any], patch: ConfigPatch, positions: list[int], *, named: bool, descriptor: Descriptor
) -> bool:
    """Apply a positional operation to a list of filters or routes; `positions` are the matched entries,
    `named` says whether the match names one (without a name INSERT_BEFORE / INSERT_AFTER go to the
    beginning / the end). False when nothing changed."""
    operation, value = patch.operation, patch.value
    if operation == "ADD":
        items.append(copy.deepcopy(value))
    elif operation == "INSERT_FIRST" or (operation == "INSERT_BEFORE" and not named):
        items.insert(0, copy.deepcopy(value))
    elif operation == "INSERT_AFTER" and not named:
        items.append(copy.deepcopy(value))
    elif operation in {"INSERT_BEFORE", "INSERT_AFTER"} and positions:
        offset = 0 if operation == "INSERT_BEFORE" else 1
        items.insert(positions[0] + offset, copy.deepcopy(value))
    elif operation == "REPLACE" and positions:
        items[positions[0]] = copy.deepcopy(value)
    elif operation == "MERGE" and positions and value is not None:
        for i in positions:
            items[i] = merge_message(items[i], value, descriptor)
    elif operation == "REMOVE" and positions:
        items[:] = [item for i, item in enumerate(items) if i not in positions]
    else:
        return False
    return True


def _matching_http_filter_lists(
    bootstrap: Mapping[str, Any], listener_match: Mapping[str, Any], options: RenderOptions
) -> list[list[Any]]:
    port = get_field(listener_match, "portNumber")
    if port and _as_int(port) != options.gateway_port:
        return []
    filter_chain = get_field(listener_match, "filterChain") or {}
    if get_field(filter_chain, "sni"):
        return []  # the gateway's plaintext chain has no server name
    network_filter = get_field(filter_chain, "filter") or {}
    network_name = get_field(network_filter, "name")
    if network_name and network_name not in _HCM_NAMES:
        return []
    wanted_listener = get_field(listener_match, "name")
    wanted_chain = get_field(filter_chain, "name")
    found: list[list[Any]] = []
    for listener in _list(_static(bootstrap), "listeners"):
        if wanted_listener and get_field(listener, "name") != wanted_listener:
            continue
        for chain in _list(listener, "filterChains"):
            if wanted_chain and (get_field(chain, "name") or "") != wanted_chain:
                continue
            for item in _list(chain, "filters"):
                if _name_of(item) not in _HCM_NAMES:
                    continue
                manager = get_field(item, "typedConfig")
                if isinstance(manager, dict):
                    key = find_key(manager, "http_filters") or "http_filters"
                    found.append(manager.setdefault(key, []))
    return found


# CLUSTER


def _apply_cluster(bootstrap: dict[str, Any], patch: ConfigPatch, options: RenderOptions) -> str | None:
    static = _static(bootstrap)
    key = find_key(static, "clusters") or "clusters"
    clusters: list[Any] = static.setdefault(key, [])
    if patch.operation == "ADD":
        clusters.append(copy.deepcopy(patch.value))
        return None
    if patch.operation not in {"REMOVE", "MERGE", "REPLACE"}:
        return f"operation {patch.operation or '(empty)'} is not rendered for CLUSTER"
    cluster_match = get_field(patch.match, "cluster") or {}
    positions = [i for i, item in enumerate(clusters) if _cluster_matches(item, cluster_match)]
    if not positions:
        return "no cluster matches"
    if patch.operation == "REMOVE":
        clusters[:] = [item for i, item in enumerate(clusters) if i not in positions]
    elif patch.operation == "REPLACE":
        for i in positions:
            clusters[i] = copy.deepcopy(patch.value)
    elif patch.value is not None:
        for i in positions:
            clusters[i] = merge_message(clusters[i], patch.value, CLUSTER)
    return None


def _cluster_matches(cluster: Any, cluster_match: Mapping[str, Any]) -> bool:
    name = get_field(cluster, "name") if isinstance(cluster, Mapping) else None
    if not isinstance(name, str):
        return False
    wanted = get_field(cluster_match, "name")
    if wanted and wanted != name:
        return False
    parts = name.split("|")
    istio = len(parts) == 4
    port = get_field(cluster_match, "portNumber")
    if port and not (istio and parts[1] == str(_as_int(port))):
        return False
    subset = get_field(cluster_match, "subset")
    if subset and not (istio and parts[2] == subset):
        return False
    service = get_field(cluster_match, "service")
    return not (service and not (istio and parts[3] == service))


# HTTP_ROUTE and VIRTUAL_HOST


def _apply_http_route(bootstrap: dict[str, Any], patch: ConfigPatch, options: RenderOptions) -> str | None:
    operation = patch.operation
    if operation not in {"MERGE", "REMOVE", "INSERT_FIRST", "INSERT_BEFORE", "INSERT_AFTER"}:
        return f"operation {operation or '(empty)'} is not rendered for HTTP_ROUTE"
    route_match = get_field(
        get_field(get_field(patch.match, "routeConfiguration") or {}, "vhost") or {}, "route"
    )
    route_match = route_match or {}
    named = bool(get_field(route_match, "name"))
    changed = False
    for virtual_host in _matching_virtual_hosts(bootstrap, patch.match, options):
        key = find_key(virtual_host, "routes") or "routes"
        routes: list[Any] = virtual_host.setdefault(key, [])
        positions = [i for i, item in enumerate(routes) if _route_matches(item, route_match)]
        changed = _patch_list(routes, patch, positions, named=named, descriptor=ROUTE) or changed
    return None if changed else "no route matches"


def _apply_virtual_host(bootstrap: dict[str, Any], patch: ConfigPatch, options: RenderOptions) -> str | None:
    operation = patch.operation
    if operation not in {"MERGE", "ADD", "REMOVE"}:
        return f"operation {operation or '(empty)'} is not rendered for VIRTUAL_HOST"
    changed = False
    if operation == "ADD":
        for route_config in _matching_route_configs(bootstrap, patch.match, options):
            key = find_key(route_config, "virtual_hosts") or "virtual_hosts"
            route_config.setdefault(key, []).append(copy.deepcopy(patch.value))
            changed = True
        return None if changed else "no route configuration matches"
    vhost_match = get_field(get_field(patch.match, "routeConfiguration") or {}, "vhost") or {}
    for route_config in _matching_route_configs(bootstrap, patch.match, options):
        key = find_key(route_config, "virtual_hosts") or "virtual_hosts"
        hosts: list[Any] = route_config.setdefault(key, [])
        positions = [i for i, item in enumerate(hosts) if _virtual_host_matches(item, vhost_match)]
        if not positions:
            continue
        if operation == "REMOVE":
            hosts[:] = [item for i, item in enumerate(hosts) if i not in positions]
        elif patch.value is not None:
            for i in positions:
                hosts[i] = merge_message(hosts[i], patch.value, VIRTUAL_HOST)
        changed = True
    return None if changed else "no virtual host matches"


def _matching_route_configs(
    bootstrap: Mapping[str, Any], match: Mapping[str, Any], options: RenderOptions
) -> list[dict[str, Any]]:
    route_match = get_field(match, "routeConfiguration") or {}
    port = get_field(route_match, "portNumber")
    if port and _as_int(port) != options.gateway_port:
        return []
    wanted = get_field(route_match, "name")
    found: list[dict[str, Any]] = []
    for listener in _list(_static(bootstrap), "listeners"):
        for chain in _list(listener, "filterChains"):
            for item in _list(chain, "filters"):
                manager = get_field(item, "typedConfig") if _name_of(item) in _HCM_NAMES else None
                route_config = get_field(manager, "routeConfig") if isinstance(manager, Mapping) else None
                if isinstance(route_config, dict) and (
                    not wanted or get_field(route_config, "name") == wanted
                ):
                    found.append(route_config)
    return found


def _matching_virtual_hosts(
    bootstrap: Mapping[str, Any], match: Mapping[str, Any], options: RenderOptions
) -> list[dict[str, Any]]:
    vhost_match = get_field(get_field(match, "routeConfiguration") or {}, "vhost") or {}
    return [
        host
        for route_config in _matching_route_configs(bootstrap, match, options)
        for host in _list(route_config, "virtualHosts")
        if isinstance(host, dict) and _virtual_host_matches(host, vhost_match)
    ]


def _virtual_host_matches(host: Any, vhost_match: Mapping[str, Any]) -> bool:
    wanted = get_field(vhost_match, "name")
    return isinstance(host, Mapping) and (not wanted or get_field(host, "name") == wanted)


def _route_matches(route: Any, route_match: Mapping[str, Any]) -> bool:
    if not isinstance(route, Mapping):
        return False
    wanted = get_field(route_match, "name")
    if wanted and get_field(route, "name") != wanted:
        return False
    action = str(get_field(route_match, "action") or "ANY").upper()
    return action == "ANY" or (
        action in _ROUTE_ACTIONS and find_key(route, _ROUTE_ACTIONS[action]) is not None
    )


# helpers


def _static(bootstrap: Mapping[str, Any]) -> dict[str, Any]:
    static = get_field(bootstrap, "staticResources")
    if not isinstance(static, dict):
        raise RenderError("the bootstrap has no static_resources")
    return static


def _list(mapping: Any, key: str) -> list[Any]:
    value = get_field(mapping, key) if isinstance(mapping, Mapping) else None
    return value if isinstance(value, list) else []


def _name_of(item: Any) -> Any:
    return get_field(item, "name") if isinstance(item, Mapping) else None


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
