"""Envoy admin output as typed values: `/stats` text (or `?format=json`) and `/clusters` text.

Parsing is strict on shape and lenient on content: every line must look like Envoy wrote it, but stats we do
not know are kept as they are. Two snapshots give a delta, so counters from before a window do not mislead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_STAT_NAME = re.compile(r"^[^\s:]+$")
_INTEGER = re.compile(r"^-?\d+$")
_HOST_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^\[\]:\s]+):\d+$")


class StatsFormatError(ValueError):
    """The text is not Envoy admin output; the message is one plain sentence."""


@dataclass(frozen=True, slots=True)
class EnvoyStats:
    """Integer stats (counters and gauges) by full name; histograms and text readouts are dropped."""

    values: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, name: str) -> int:
        return self.values.get(name, 0)

    def has(self, name: str) -> bool:
        return name in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class HostStats:
    """One upstream host of a cluster as `/clusters` shows it."""

    address: str
    values: Mapping[str, int]
    health_flags: str


@dataclass(frozen=True, slots=True)
class ClustersView:
    """`/clusters`: the hosts of each cluster, by cluster name."""

    hosts: Mapping[str, tuple[HostStats, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def hosts_of(self, cluster: str) -> tuple[HostStats, ...]:
        return self.hosts.get(cluster, ())


def parse_stats(text: str) -> EnvoyStats:
    """Parse `/stats` text (`name: value` lines) or `/stats?format=json`; raise `StatsFormatError`."""
    stripped = text.strip()
    if not stripped:
        raise StatsFormatError("empty input: expected Envoy admin /stats output")
    if stripped.startswith("{"):
        return _parse_stats_json(stripped)
    values: dict[str, int] = {}
    for number, raw in enumerate(stripped.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        name, sep, value = line.partition(": ")
        if not sep:
            name, sep, value = line.partition(":")
            if not sep or value.strip():
                raise StatsFormatError(f"line {number} is not an Envoy stat ('name: value'): {_clip(line)}")
        name, value = name.strip(), value.strip()
        if not _STAT_NAME.match(name):
            raise StatsFormatError(f"line {number} has no valid stat name: {_clip(line)}")
        if _INTEGER.match(value):
            values[name] = int(value)
        elif not _is_histogram_or_text(value):
            raise StatsFormatError(f"line {number} has a value Envoy would not print: {_clip(line)}")
    if not values:
        raise StatsFormatError("no counters found: expected Envoy admin /stats output")
    return EnvoyStats(MappingProxyType(values))


def _is_histogram_or_text(value: str) -> bool:
    return (
        value == ""
        or value == "No recorded values"
        or value.startswith("P0(")
        or (value.startswith('"') and value.endswith('"'))
    )


def _parse_stats_json(text: str) -> EnvoyStats:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise StatsFormatError(f"not valid JSON stats: {error.msg} at line {error.lineno}") from None
    entries = document.get("stats") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise StatsFormatError("JSON stats need a top-level 'stats' list, as /stats?format=json prints")
    values: dict[str, int] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            value = entry.get("value")
            if isinstance(value, int) and not isinstance(value, bool):
                values[entry["name"]] = value
    if not values:
        raise StatsFormatError("no counters found in the JSON stats")
    return EnvoyStats(MappingProxyType(values))


def parse_clusters(text: str) -> ClustersView:
    """Parse `/clusters` text (`cluster::address::stat::value` lines); raise `StatsFormatError`."""
    stripped = text.strip()
    if not stripped:
        raise StatsFormatError("empty input: expected Envoy admin /clusters output")
    values: dict[tuple[str, str], dict[str, int]] = {}
    flags: dict[tuple[str, str], str] = {}
    order: dict[str, list[str]] = {}
    for number, raw in enumerate(stripped.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split("::")
        if len(parts) < 3 or not parts[0]:
            raise StatsFormatError(f"line {number} is not /clusters output ('cluster::...'): {_clip(line)}")
        cluster, stat, value = parts[0], parts[-2], parts[-1]
        address = "::".join(parts[1:-2])
        if not address or not _HOST_ADDRESS.match(address):
            continue  # cluster-level lines: observability_name, circuit breakers, added_via_api
        key = (cluster, address)
        if key not in values:
            values[key] = {}
            order.setdefault(cluster, []).append(address)
        if stat == "health_flags":
            flags[key] = value
        elif _INTEGER.match(value):
            values[key][stat] = int(value)
    hosts = {
        cluster: tuple(
            HostStats(
                address=address,
                values=MappingProxyType(values[(cluster, address)]),
                health_flags=flags.get((cluster, address), ""),
            )
            for address in addresses
        )
        for cluster, addresses in order.items()
    }
    return ClustersView(MappingProxyType(hosts))


def subtract_stats(before: EnvoyStats, after: EnvoyStats) -> EnvoyStats:
    """The change from `before` to `after`; a stat that went down (Envoy restarted) counts from zero."""
    values: dict[str, int] = {}
    for name, value in after.values.items():
        previous = before.values.get(name, 0)
        values[name] = value - previous if value >= previous else value
    return EnvoyStats(MappingProxyType(values))


def _clip(line: str, limit: int = 80) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."
