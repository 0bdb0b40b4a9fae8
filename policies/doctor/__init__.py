"""Causes of a broken ext_proc path, named from Envoy's own counters. Pure: stats text in, diagnosis out."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policies.doctor.configdump import is_config_dump, read_config_dump_facts
    from policies.doctor.diagnosis import DEFAULT_EPP_CLUSTER, Evidence, diagnose
    from policies.doctor.filter import FilterFacts, read_filter_facts
    from policies.doctor.model import Diagnosis, DoctorSettings, Verdict
    from policies.doctor.stats import (
        ClustersView,
        EnvoyStats,
        StatsFormatError,
        parse_clusters,
        parse_stats,
        subtract_stats,
    )

_HOMES: dict[str, str] = {
    "ClustersView": "policies.doctor.stats",
    "DEFAULT_EPP_CLUSTER": "policies.doctor.diagnosis",
    "diagnose": "policies.doctor.diagnosis",
    "Diagnosis": "policies.doctor.model",
    "DoctorSettings": "policies.doctor.model",
    "EnvoyStats": "policies.doctor.stats",
    "Evidence": "policies.doctor.diagnosis",
    "FilterFacts": "policies.doctor.filter",
    "is_config_dump": "policies.doctor.configdump",
    "parse_clusters": "policies.doctor.stats",
    "parse_stats": "policies.doctor.stats",
    "read_config_dump_facts": "policies.doctor.configdump",
    "read_filter_facts": "policies.doctor.filter",
    "StatsFormatError": "policies.doctor.stats",
    "subtract_stats": "policies.doctor.stats",
    "Verdict": "policies.doctor.model",
}

__all__ = [
    "DEFAULT_EPP_CLUSTER",
    "ClustersView",
    "Diagnosis",
    "DoctorSettings",
    "EnvoyStats",
    "Evidence",
    "FilterFacts",
    "StatsFormatError",
    "Verdict",
    "diagnose",
    "is_config_dump",
    "parse_clusters",
    "parse_stats",
    "read_config_dump_facts",
    "read_filter_facts",
    "subtract_stats",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
