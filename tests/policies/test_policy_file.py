"""The policy file: the packaged default, profiles, and clear one-line errors for bad files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import BaseModel

from policies.findings import Level
from policies.policy import Exclusions, Policy, PolicyFileError, RolePolicy, default_policy, load_policy
from policies.policyfile import Exclusions as ExclusionsFile
from policies.policyfile import PolicyFile
from policies.policyfile import RolePolicy as RolePolicyFile
from policies.profile import ProfileName

PACKAGED = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


def test_default_policy_is_the_packaged_file_and_the_model_defaults() -> None:
    policy = default_policy()
    assert policy == load_policy(PACKAGED.read_text())
    assert policy.levels == Policy().levels
    assert policy.profile is None, "the built-in policy pins no profile: it is chosen per EPP filter"
    assert policy.filter_name == "envoy.filters.http.ext_proc"
    assert policy.epp_cluster == "epp-cluster"
    assert policy.cluster_domain == "cluster.local"
    assert policy.exclusions.opt_out_annotation == "extproc-guard.io/ignore"


def test_the_built_in_policy_is_exactly_what_validating_the_packaged_file_gives() -> None:
    """`default_policy` builds the policy without pydantic or PyYAML; equality alone would let a `str`
    pass for a `Level` (a StrEnum), so the reprs, which name each value's type, are compared too."""
    validated = load_policy(PACKAGED.read_text(), source="built-in policy")
    assert default_policy() == validated
    assert repr(default_policy()) == repr(validated)


@pytest.mark.parametrize(
    ("model", "schema"),
    [(Policy, PolicyFile), (Exclusions, ExclusionsFile), (RolePolicy, RolePolicyFile)],
    ids=["policy", "exclusions", "roles"],
)
def test_the_file_schema_has_the_model_s_fields(model: type, schema: type[BaseModel]) -> None:
    assert [item.name for item in dataclasses.fields(model)] == list(schema.model_fields)


def test_the_file_schema_s_defaults_are_the_model_s() -> None:
    assert repr(load_policy("")) == repr(Policy())


def test_default_levels_enforce_all_but_the_warnings() -> None:
    levels = default_policy().levels
    warnings = {rule for rule, level in levels.items() if level is Level.WARN}
    assert warnings == {"EPX009", "EPX012", "EPX015", "EPX016"}
    assert len(levels) == 16


def test_streamed_is_not_allowed_by_default_and_the_gie_profile_allows_full_duplex() -> None:
    assert "STREAMED" not in default_policy().body_modes
    assert "FULL_DUPLEX_STREAMED" in load_policy("profile: gie-epp").body_modes


def test_rule_levels_accept_slugs_and_yaml_off() -> None:
    policy = load_policy("rules:\n  epp-cluster-http2: off\n  EPX009: enforce\n")
    assert policy.level("EPX005") is Level.OFF
    assert policy.level("EPX009") is Level.ENFORCE


def test_an_empty_file_is_the_default_policy() -> None:
    assert load_policy("") == Policy()


BAD_FILES = {
    "unknown top-level key": ("profle: gie-epp", "unknown key 'profle'"),
    "unknown nested key": ("exclusions: {namespace: [a]}", "unknown key 'exclusions.namespace'"),
    "unknown profile": ("profile: grpc-epp", "profile"),
    "unknown rule": ("rules: {EPX099: warn}", "unknown rule 'EPX099'"),
    "bad level": ("rules: {EPX001: loud}", "rules.EPX001"),
    "unknown body mode": ("allowed_body_modes: [NONE, SOMETIMES]", "unknown body mode 'SOMETIMES'"),
    "profile body mode not allowed": (
        "profile: gie-epp\nallowed_body_modes: [NONE]",
        "allowed_body_modes must include FULL_DUPLEX_STREAMED",
    ),
    "not a mapping": ("- profile", "must be a mapping, not a list"),
    "invalid YAML": ("profile: [", "not valid YAML at line"),
    "empty filter name": ("filter_name: ''", "filter_name"),
}


@pytest.mark.parametrize(("text", "expected"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_policy_file_is_one_clear_line(text: str, expected: str) -> None:
    with pytest.raises(PolicyFileError) as caught:
        load_policy(text, source="team.yaml")
    message = str(caught.value)
    assert message.startswith("team.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_policy_is_immutable() -> None:
    policy = default_policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.profile = ProfileName.GIE_EPP  # type: ignore[misc]
