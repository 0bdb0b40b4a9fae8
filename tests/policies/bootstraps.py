"""Readers for a rendered reference bootstrap: its listener's HTTP connection manager and what it holds."""

from __future__ import annotations

from typing import Any


def manager_of(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The HTTP connection manager's typed_config."""
    chain = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
    manager: dict[str, Any] = chain["filters"][0]["typed_config"]
    return manager


def http_filters(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = manager_of(bootstrap)["http_filters"]
    return filters


def routes(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = manager_of(bootstrap)["route_config"]["virtual_hosts"][0]["routes"]
    return found
