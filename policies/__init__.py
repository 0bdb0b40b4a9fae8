"""The pure policy engine: EnvoyFilter model, rules (check + fix), policy file, findings, JSON Patch.

Nothing in this package touches the network, the file system or the clock. Two more pure engines live in
sub-packages: `policies.render` (the Envoy config a gateway would run) and `policies.doctor` (causes from
Envoy's counters). Adapters import from these facades; names load on first use, so importing one part
of the engine does not load the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policies.catalog import CATALOG, RULE_IDS
    from policies.context import EMPTY_CONTEXT, Context, ContextSource, FixedContext
    from policies.engine import Evaluation, evaluate
    from policies.findings import Finding, Level
    from policies.model import DocumentError
    from policies.patch import PatchError, PatchOp, apply_op, apply_patch, split_pointer
    from policies.policy import Policy, PolicyFileError, default_policy, load_policy
    from policies.profile import ProfileName
    from policies.resolver import (
        ChainResolver,
        ServiceAddress,
        ServiceLookupError,
        ServiceNotFound,
        ServiceRef,
        ServiceResolver,
        ServiceUnknown,
        ServiceWithoutClusterIP,
        StaticResolver,
    )
    from policies.rules import RULES
    from policies.rules.base import Rule

_HOMES: dict[str, str] = {
    "apply_op": "policies.patch",
    "apply_patch": "policies.patch",
    "CATALOG": "policies.catalog",
    "Context": "policies.context",
    "ContextSource": "policies.context",
    "FixedContext": "policies.context",
    "EMPTY_CONTEXT": "policies.context",
    "ChainResolver": "policies.resolver",
    "default_policy": "policies.policy",
    "DocumentError": "policies.model",
    "evaluate": "policies.engine",
    "Evaluation": "policies.engine",
    "Finding": "policies.findings",
    "Level": "policies.findings",
    "load_policy": "policies.policy",
    "PatchError": "policies.patch",
    "PatchOp": "policies.patch",
    "Policy": "policies.policy",
    "PolicyFileError": "policies.policy",
    "ProfileName": "policies.profile",
    "Rule": "policies.rules.base",
    "RULE_IDS": "policies.catalog",
    "RULES": "policies.rules",
    "ServiceAddress": "policies.resolver",
    "ServiceLookupError": "policies.resolver",
    "ServiceNotFound": "policies.resolver",
    "ServiceRef": "policies.resolver",
    "ServiceResolver": "policies.resolver",
    "ServiceUnknown": "policies.resolver",
    "ServiceWithoutClusterIP": "policies.resolver",
    "split_pointer": "policies.patch",
    "StaticResolver": "policies.resolver",
}

__all__ = [
    "CATALOG",
    "EMPTY_CONTEXT",
    "RULES",
    "RULE_IDS",
    "ChainResolver",
    "Context",
    "ContextSource",
    "DocumentError",
    "Evaluation",
    "Finding",
    "FixedContext",
    "Level",
    "PatchError",
    "PatchOp",
    "Policy",
    "PolicyFileError",
    "ProfileName",
    "Rule",
    "ServiceAddress",
    "ServiceLookupError",
    "ServiceNotFound",
    "ServiceRef",
    "ServiceResolver",
    "ServiceUnknown",
    "ServiceWithoutClusterIP",
    "StaticResolver",
    "apply_op",
    "apply_patch",
    "default_policy",
    "evaluate",
    "load_policy",
    "split_pointer",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
