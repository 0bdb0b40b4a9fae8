"""The policy: profile, rule levels, names and exclusions, as the typed values every rule reads.

A policy file is validated strictly (pydantic, unknown keys rejected) by `policies.policyfile`, which
`load_policy` imports when it reads one. The built-in policy is the model's own defaults with every rule's
level spelled out, exactly what validating the packaged `default.yaml` gives (a test holds the two equal):
a run with the built-in policy loads neither pydantic nor PyYAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from policies.catalog import CATALOG
from policies.findings import Level
from policies.profile import PROFILES, Profile, ProfileName

if TYPE_CHECKING:
    from policies.policyfile import PolicyFile

_ALLOWED_BY_DEFAULT = ("NONE", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED")


class PolicyFileError(Exception):
    """A policy file that cannot be used; `str()` is one line naming the bad key."""

    def __init__(self, reason: str, *, source: str = "policy") -> None:
        super().__init__(reason)
        self.reason = reason
        self.source = source

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass(frozen=True)
class Exclusions:
    """EnvoyFilters the policy never touches."""

    namespaces: tuple[str, ...] = ()
    opt_out_annotation: str = "extproc-guard.io/ignore"


@dataclass(frozen=True)
class RolePolicy:
    """What the policy says about whose ext_proc filter is whose (see `policies.role`)."""

    epp_services: tuple[str, ...] = ()
    """NAMESPACE/NAME of EPP Services: a filter whose cluster reaches one is the EPP's."""
    other_services: tuple[str, ...] = ()
    epp_filter_names: tuple[str, ...] = ()
    other_filter_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """One policy: every rule reads its parameters from here.

    `profile` None (the built-in policy) chooses the profile per EPP filter; see `policies.profile`.
    """

    profile: ProfileName | None = None
    filter_name: str = "envoy.filters.http.ext_proc"
    epp_cluster: str = "epp-cluster"
    cluster_domain: str = "cluster.local"
    allowed_body_modes: tuple[str, ...] | None = None
    rules: dict[str, Level] = field(default_factory=dict)
    exclusions: Exclusions = field(default_factory=Exclusions)
    roles: RolePolicy = field(default_factory=RolePolicy)
    root_namespace: str = "istio-system"
    """Istio's root namespace: its EnvoyFilters apply to every workload."""

    @cached_property
    def profile_spec(self) -> Profile | None:
        """The pinned profile, or None when the profile is chosen per EPP filter."""
        return PROFILES[self.profile] if self.profile is not None else None

    @cached_property
    def body_modes(self) -> frozenset[str]:
        """The body modes EPX002 allows."""
        modes = self.allowed_body_modes if self.allowed_body_modes is not None else _ALLOWED_BY_DEFAULT
        return frozenset(modes)

    @cached_property
    def levels(self) -> Mapping[str, Level]:
        """Every rule's level: the file's setting, else the rule's default."""
        return {info.id: self.rules.get(info.id, info.default_level) for info in CATALOG}

    def level(self, rule_id: str) -> Level:
        """The level of one rule (`KeyError` for an unknown id)."""
        return self.levels[rule_id]

    def excludes(self, namespace: str, annotations: Mapping[str, Any]) -> bool:
        """Whether the policy leaves a filter in `namespace` with `annotations` alone."""
        if namespace in self.exclusions.namespaces:
            return True
        flag = annotations.get(self.exclusions.opt_out_annotation)
        return str(flag).strip().lower() == "true"


def _disallowed_profile_body_mode(policy: Policy) -> str | None:
    """Why the allowed body modes leave out a profile's own body mode, or None."""
    allowed = policy.body_modes
    pinned = [policy.profile] if policy.profile is not None else list(PROFILES)
    for name in pinned:
        for mode_field, mode in PROFILES[name].pinned.items():
            if mode_field.endswith("_body_mode") and mode not in allowed:
                return f"allowed_body_modes must include {mode} (the {name} profile's {mode_field})"
    return None


def _from_file(file: PolicyFile) -> Policy:
    """The typed model of a validated file (the two have the same fields; a test holds them so)."""
    return Policy(
        profile=file.profile,
        filter_name=file.filter_name,
        epp_cluster=file.epp_cluster,
        cluster_domain=file.cluster_domain,
        allowed_body_modes=file.allowed_body_modes,
        rules=dict(file.rules),
        exclusions=Exclusions(
            namespaces=file.exclusions.namespaces,
            opt_out_annotation=file.exclusions.opt_out_annotation,
        ),
        roles=RolePolicy(
            epp_services=file.roles.epp_services,
            other_services=file.roles.other_services,
            epp_filter_names=file.roles.epp_filter_names,
            other_filter_names=file.roles.other_filter_names,
        ),
        root_namespace=file.root_namespace,
    )


def load_policy(text: str, *, source: str = "policy") -> Policy:
    """Parse and validate a policy file's text (YAML or JSON); raise `PolicyFileError` when it is unusable."""
    from policies.policyfile import PolicyDataError, read_policy_file

    try:
        policy = _from_file(read_policy_file(text))
    except PolicyDataError as exc:
        raise PolicyFileError(exc.reason, source=source) from None
    disallowed = _disallowed_profile_body_mode(policy)
    if disallowed is not None:
        # worded as the schema's other errors are, for the file as a whole (`policyfile.describe`)
        raise PolicyFileError(f"(top level): {disallowed}", source=source)
    return policy


def default_policy() -> Policy:
    """The built-in policy: the model's defaults, every rule at its catalogue level (the packaged
    `default.yaml` says the same, and is the file to copy for `--policy`)."""
    return Policy(rules={info.id: info.default_level for info in CATALOG})
