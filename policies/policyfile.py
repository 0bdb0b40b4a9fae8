"""A policy file's schema: types, per-field checks and unknown keys rejected (pydantic).

`policies.policy.load_policy` imports this module when it reads a file, so a run with the built-in policy
loads neither pydantic nor PyYAML. The models mirror `policies.policy`'s typed model field for field, with
the same defaults (tests hold them equal); `Exclusions` and `RolePolicy` keep the model's class names
because pydantic names them in its messages ("... or instance of Exclusions").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from policies.catalog import RULE_IDS, SLUG_TO_ID
from policies.findings import Level
from policies.profile import BODY_MODES, ProfileName


class PolicyDataError(Exception):
    """Why a policy file's text is unusable: one line naming the bad key (`reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Exclusions(BaseModel):
    """The file's `exclusions` (`policies.policy.Exclusions`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: tuple[str, ...] = ()
    opt_out_annotation: str = "extproc-guard.io/ignore"


class RolePolicy(BaseModel):
    """The file's `roles` (`policies.policy.RolePolicy`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epp_services: tuple[str, ...] = ()
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


class PolicyFile(BaseModel):
    """A whole policy file (`policies.policy.Policy`)."""

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


def describe(error: ValidationError) -> str:
    """The first error as one line: `KEY.PATH: reason` (`(top level)` for the file as a whole)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def read_policy_file(text: str) -> PolicyFile:
    """Parse and validate a policy file's text (YAML or JSON); raise `PolicyDataError` when it is unusable."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PolicyDataError(f"not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise PolicyDataError(f"must be a mapping, not a {type(data).__name__}")
    try:
        return PolicyFile.model_validate(dict(data))
    except ValidationError as exc:
        raise PolicyDataError(describe(exc)) from None
