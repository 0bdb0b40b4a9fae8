"""The policy file: profile, rule levels, names and exclusions (pydantic-validated, unknown keys rejected)."""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policies.catalog import CATALOG, RULE_IDS, SLUG_TO_ID
from policies.findings import Level
from policies.profile import BODY_MODES, PROFILES, Profile, ProfileName

_ALLOWED_BY_DEFAULT = ("NONE", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED")


class PolicyFileError(Exception):
    """A policy file that cannot be used; `str()` is one line naming the bad key."""

    def __init__(self, reason: str, *, source: str = "policy") -> None:
        super().__init__(reason)
        self.reason = reason
        self.source = source

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


class Exclusions(BaseModel):
    """EnvoyFilters the policy never touches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: tuple[str, ...] = ()
    opt_out_annotation: str = "extproc-guard.io/ignore"


class RolePolicy(BaseModel):
    """What the policy says about whose ext_proc filter is whose (see `policies.role`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epp_services: tuple[str, ...] = ()
    """NAMESPACE/NAME of EPP Services: a filter whose cluster reaches one is the EPP's."""
    other_services: tuple[str, ...] = ()
    epp_filter_names: tuple[str, ...] = ()
    other_filter_names: tuple[str, ...] = ()

    @field_validator("epp_services", "other_services")
    @classmethod
    def _check_services(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            namespace, slash, name = entry.partition("/")
            if not slash or not namespace or not name or "/" in name:
                raise ValueError(f"{entry!r} is not NAMESPACE/NAME")
        return value


class Policy(BaseModel):
    """One policy: every rule reads its parameters from here.

    `profile` None (the built-in policy) chooses the profile per EPP filter; see `policies.profile`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: ProfileName | None = None
    filter_name: str = Field(default="envoy.filters.http.ext_proc", min_length=1)
    epp_cluster: str = Field(default="epp-cluster", min_length=1)
    cluster_domain: str = Field(default="cluster.local", min_length=1)
    allowed_body_modes: tuple[str, ...] | None = None
    rules: dict[str, Level] = Field(default_factory=dict)
    exclusions: Exclusions = Exclusions()
    roles: RolePolicy = RolePolicy()
    root_namespace: str = Field(default="istio-system", min_length=1)
    """Istio's root namespace: its EnvoyFilters apply to every workload."""

    @field_validator("rules", mode="before")
    @classmethod
    def _normalise_rule_keys(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        normalised: dict[str, Any] = {}
        for key, level in value.items():
            rule_id = SLUG_TO_ID.get(str(key), str(key).upper())
            if rule_id not in RULE_IDS:
                raise ValueError(f"unknown rule {key!r} (known: EPX001..EPX016 or their slugs)")
            # YAML 1.1 reads a bare `off` as false.
            normalised[rule_id] = "off" if level is False else level
        return normalised

    @field_validator("allowed_body_modes")
    @classmethod
    def _check_body_modes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        unknown = [mode for mode in value if mode not in BODY_MODES]
        if unknown:
            raise ValueError(f"unknown body mode {unknown[0]!r} (known: {', '.join(BODY_MODES)})")
        return value

    @field_validator("cluster_domain")
    @classmethod
    def _strip_domain(cls, value: str) -> str:
        return value.strip(".")

    @model_validator(mode="after")
    def _profile_body_modes_allowed(self) -> Policy:
        allowed = self.body_modes
        pinned = [self.profile] if self.profile is not None else list(PROFILES)
        for name in pinned:
            for field, mode in PROFILES[name].pinned.items():
                if field.endswith("_body_mode") and mode not in allowed:
                    raise ValueError(f"allowed_body_modes must include {mode} (the {name} profile's {field})")
        return self

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


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def load_policy(text: str, *, source: str = "policy") -> Policy:
    """Parse and validate a policy file's text (YAML or JSON); raise `PolicyFileError` when it is unusable."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PolicyFileError(f"not valid YAML{where}: {problem}", source=source) from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise PolicyFileError(f"must be a mapping, not a {type(data).__name__}", source=source)
    try:
        return Policy.model_validate(dict(data))
    except ValidationError as exc:
        raise PolicyFileError(_describe(exc), source=source) from None


def default_policy() -> Policy:
    """The built-in policy (the packaged `default.yaml`)."""
    text = importlib.resources.files("policies").joinpath("default.yaml").read_text(encoding="utf-8")
    return load_policy(text, source="built-in policy")
