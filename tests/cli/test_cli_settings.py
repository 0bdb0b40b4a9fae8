"""Shared CLI flags: `--service` parsing, the resolver chain, `--policy` loading."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cli.settings import (
    ChainResolver,
    ResolverSettings,
    ServiceArgError,
    SettingsError,
    add_resolver_arguments,
    build_resolver,
    load_policy_file,
    merge_services,
    parse_service_arg,
    resolver_settings_from_args,
)
from policies.resolver import ServiceAddress, ServiceNotFound, ServiceRef, ServiceUnknown, StaticResolver

REF = ServiceRef("llm-d", "epp")


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("llm-d/epp=10.96.45.12", ServiceAddress("10.96.45.12")),
        ("llm-d/epp=10.96.45.12:9002", ServiceAddress("10.96.45.12", (9002,))),
        ("llm-d/epp=fd00::12", ServiceAddress("fd00::12")),
        ("llm-d/epp=[fd00::12]:9002", ServiceAddress("fd00::12", (9002,))),
    ],
    ids=["ipv4", "ipv4-port", "ipv6", "ipv6-port"],
)
def test_service_arguments_parse_into_a_ref_and_an_address(text: str, address: ServiceAddress) -> None:
    assert parse_service_arg(text) == (REF, address)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("llm-d/epp", "missing '='"),
        ("epp=10.0.0.1", "missing '/'"),
        ("LLM/epp=10.0.0.1", "namespace 'LLM' is not a DNS-1123 label"),
        ("llm-d/epp=epp.llm-d.svc", "is not an IP address"),
        ("llm-d/epp=10.0.0.1:0", "port '0' is not a number from 1 to 65535"),
        ("llm-d/epp=10.0.0.1:http", "port 'http'"),
        ("llm-d/epp=[fd00::1", "missing ']'"),
    ],
    ids=["no-equals", "no-slash", "bad-namespace", "hostname", "port-zero", "port-name", "open-bracket"],
)
def test_bad_service_arguments_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(ServiceArgError, match=reason):
        parse_service_arg(text)


def test_a_bad_service_flag_is_a_one_line_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="x")
    add_resolver_arguments(parser)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--service", "nope"])
    assert exited.value.code == 2
    assert "argument --service: 'nope' is not NAMESPACE/NAME=CLUSTER_IP[:PORT]" in capsys.readouterr().err


def test_repeated_service_flags_merge_ports_of_the_same_address() -> None:
    merged = merge_services(
        [parse_service_arg("llm-d/epp=10.0.0.1:9002"), parse_service_arg("llm-d/epp=10.0.0.1:9003")]
    )
    assert merged == {REF: ServiceAddress("10.0.0.1", (9002, 9003))}


def test_without_a_cluster_the_resolver_answers_only_from_the_static_map() -> None:
    parser = argparse.ArgumentParser()
    add_resolver_arguments(parser)
    resolver = build_resolver(
        resolver_settings_from_args(parser.parse_args(["--service", "llm-d/epp=10.0.0.1"]))
    )
    assert resolver.lookup(REF) == ServiceAddress("10.0.0.1")
    with pytest.raises(ServiceUnknown, match="--service"):
        resolver.lookup(ServiceRef("llm-d", "other"))


class Authoritative:
    """A second source that knows the answer (stands in for the cluster in this unit test)."""

    def lookup(self, ref: ServiceRef) -> ServiceAddress:
        if ref.name == "gone":
            raise ServiceNotFound(ref, "does not exist")
        return ServiceAddress("10.9.9.9")


def test_the_chain_asks_the_next_source_only_when_one_cannot_answer() -> None:
    chain = ChainResolver((StaticResolver({REF: ServiceAddress("10.0.0.1")}), Authoritative()))
    assert chain.lookup(REF).cluster_ip == "10.0.0.1"
    assert chain.lookup(ServiceRef("a", "b")).cluster_ip == "10.9.9.9"
    with pytest.raises(ServiceNotFound):
        chain.lookup(ServiceRef("a", "gone"))


def test_a_missing_kubeconfig_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="kubeconfig file not found"):
        build_resolver(ResolverSettings(services={}, kubeconfig=tmp_path / "nope"))


def test_a_kubeconfig_that_is_not_one_is_a_settings_error(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("just: text\n")
    with pytest.raises(SettingsError, match="cannot use it"):
        build_resolver(ResolverSettings(services={}, kubeconfig=bad))


def test_no_policy_flag_means_the_built_in_policy() -> None:
    assert load_policy_file(None).profile is None, "the built-in policy chooses the profile per EPP filter"


def test_a_policy_file_selects_the_profile(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("profile: gie-epp\n")
    assert load_policy_file(policy).profile.value == "gie-epp"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("profile: nonsense\n", "profile"),
        ("surprise: 1\n", "unknown key 'surprise'"),
        (": :\n", "not valid YAML"),
    ],
    ids=["bad-profile", "unknown-key", "bad-yaml"],
)
def test_a_bad_policy_file_is_one_line_naming_the_file(tmp_path: Path, content: str, reason: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(content)
    with pytest.raises(SettingsError) as caught:
        load_policy_file(policy)
    message = str(caught.value)
    assert message.startswith(str(policy))
    assert reason in message
    assert "\n" not in message


def test_a_missing_policy_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read the policy file"):
        load_policy_file(tmp_path / "missing.yaml")
