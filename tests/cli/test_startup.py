"""The CLI's start-up: listing the commands loads none of their heavy modules; `--version`; a bare call.

Each probe runs in a fresh interpreter (a subprocess), because this test process has long since imported
everything. Timing is measured by `bench/startup_bench.py`, never asserted here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from cli.commands import check, command_names, doctor
from cli.main import build_parser, command_to_run
from cli.report import OutputFormat
from policies.doctor import DEFAULT_EPP_CLUSTER

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "extproc-guard"
SEED_CORRECTED = ROOT / "manifests" / "examples" / "seed-corrected.yaml"
SERVICE = "llm-d-inference-scheduler/gaie-inference-scheduling-epp=10.96.45.12:9002"
# What a command loads only when it runs. `yaml` and `asyncio` are not heavy, but nothing in the parser
# needs them either, so their absence shows the registration stayed light.
HEAVY = ("pydantic", "kubernetes", "aiohttp", "grpc", "cryptography", "google.protobuf", "ruamel", "yaml")
ALSO_NOT_FOR_LISTING = ("asyncio", "ssl", "urllib.request", "importlib.metadata", "policies.policy")

PROBE = """\
import json, sys
from cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
sys.stdout.flush()
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def loaded_after(argv: list[str]) -> tuple[int, set[str]]:
    """Exit code and the modules a fresh interpreter holds after `extproc-guard ARGV`."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    result = json.loads(done.stderr.strip().splitlines()[-1])
    return int(result["code"]), set(result["modules"])


def roots_of(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(name for name in names if name in modules)


def test_the_help_lists_every_command_without_loading_what_the_commands_run_on() -> None:
    code, modules = loaded_after(["--help"])
    assert code == 0
    assert roots_of(modules, HEAVY + ALSO_NOT_FOR_LISTING) == []
    assert {f"cli.commands.{name}" for name in command_names()} <= modules


@pytest.mark.parametrize("command", [name.replace("_", "-") for name in command_names()])
def test_a_command_s_own_help_loads_none_of_the_heavy_modules(command: str) -> None:
    code, modules = loaded_after([command, "--help"])
    assert code == 0
    assert roots_of(modules, HEAVY) == []


def test_check_loads_the_engine_but_no_server_cluster_or_certificate_code() -> None:
    code, modules = loaded_after(["check", str(SEED_CORRECTED), "--service", SERVICE])
    assert code == 0
    assert {"policies.policy", "policies.engine", "google.protobuf"} <= modules  # the probe sees real loading
    assert roots_of(modules, ("kubernetes", "aiohttp", "grpc", "cryptography", "asyncio")) == []


# What `check` with the built-in policy and the text output loads only when it needs it: the policy file
# schema (pydantic, PyYAML), the libyaml reader, the version (SARIF) and hashes (SARIF), XML (JUnit).
NOT_FOR_THE_BUILT_IN_POLICY = (
    "pydantic",
    "yaml",
    "policies.policyfile",
    "cli.yamlread",
    "importlib.metadata",
    "hashlib",
    "xml.etree",
)


def test_check_with_the_built_in_policy_loads_neither_pydantic_nor_pyyaml() -> None:
    code, modules = loaded_after(["check", str(SEED_CORRECTED), "--service", SERVICE])
    assert code == 0
    assert roots_of(modules, NOT_FOR_THE_BUILT_IN_POLICY) == []


def test_a_policy_file_loads_its_schema(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("profile: headers-epp\n")
    argv = ["check", str(SEED_CORRECTED), "--service", SERVICE, "--policy", str(policy)]
    code, modules = loaded_after(argv)
    assert code == 0
    assert {"pydantic", "yaml", "policies.policyfile"} <= modules


def test_the_spelled_out_choices_match_the_engine_s() -> None:
    assert tuple(output.value for output in OutputFormat) == check.OUTPUT_FORMATS
    assert doctor.DEFAULT_EPP_CLUSTER == DEFAULT_EPP_CLUSTER


def test_version_prints_the_installed_package_version() -> None:
    done = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(f"extproc-guard {metadata.version('extproc-guard')} (Python ")


def test_epp_version_names_the_ext_proc_grpc_method_it_serves() -> None:
    done = subprocess.run(
        [str(SCRIPT), "epp", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0] == f"extproc-guard epp {metadata.version('extproc-guard')}"
    assert "gRPC envoy.service.ext_proc.v3.ExternalProcessor/Process" in lines[1]
    assert lines[2] == f"protos: xds-protos {metadata.version('xds-protos')}"


def test_a_bare_call_lists_the_commands_and_exits_2() -> None:
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (2, "")
    for name in command_names():
        assert f"\n    {name.replace('_', '-')} " in done.stderr
    assert done.stderr.rstrip().endswith("extproc-guard: error: give a COMMAND (listed above)")


def test_the_doctor_command_names_the_engine_s_default_epp_cluster() -> None:
    from cli.commands import doctor
    from policies.doctor import DEFAULT_EPP_CLUSTER

    assert doctor.DEFAULT_EPP_CLUSTER == DEFAULT_EPP_CLUSTER


EXT_PROC_ONLY = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: epp-ext-proc, namespace: llm-d-inference-scheduler}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match: {context: GATEWAY}
    patch:
      operation: REPLACE
      value:
        name: envoy.filters.http.ext_proc
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
          grpc_service: {envoy_grpc: {cluster_name: epp-cluster}}
"""
EXT_PROC_MODULE = "envoy.extensions.filters.http.ext_proc.v3.ext_proc_pb2"
CLUSTER_MODULE = "envoy.config.cluster.v3.cluster_pb2"
HTTP_OPTIONS_MODULE = "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2"
TLS_MODULE = "envoy.extensions.transport_sockets.tls.v3.tls_pb2"
JSON_FORMAT = "google.protobuf.json_format"


def test_an_ext_proc_filter_alone_loads_the_ext_proc_protos_only(tmp_path: Path) -> None:
    document = tmp_path / "ext-proc.yaml"
    document.write_text(EXT_PROC_ONLY)
    code, modules = loaded_after(["check", str(document), "--service", SERVICE])
    assert code in (0, 1)
    assert EXT_PROC_MODULE in modules  # EPX008 ran
    assert roots_of(modules, (CLUSTER_MODULE, HTTP_OPTIONS_MODULE, TLS_MODULE, JSON_FORMAT)) == []


def test_a_cluster_patch_loads_the_cluster_protos_and_what_its_any_names() -> None:
    code, modules = loaded_after(["check", str(SEED_CORRECTED), "--service", SERVICE])
    assert code == 0
    assert {EXT_PROC_MODULE, CLUSTER_MODULE, HTTP_OPTIONS_MODULE} <= modules
    assert roots_of(modules, (TLS_MODULE, JSON_FORMAT)) == []  # no TLS; the walk was sure of every value


def test_a_command_line_that_names_its_command_loads_only_that_command() -> None:
    code, modules = loaded_after(["-v", "check", str(SEED_CORRECTED), "--service", SERVICE])
    assert code == 0
    assert {name for name in modules if name.startswith("cli.commands.")} == {"cli.commands.check"}


ONE_COMMAND = {
    "check": ["check", "a.yaml", "--service", SERVICE, "-o", "json", "--strict"],
    "verbose first": ["-vv", "--verbose", "check", "-", "--policy", "p.yaml"],
    "fix": ["fix", "--in-place", "a.yaml"],
    "render": ["render", "a.yaml"],
    "sim-model": ["sim-model", "--help"],
    "a command's help": ["check", "--help"],
    "a missing argument": ["check"],
    "a bad value": ["check", "a.yaml", "--service", "nope"],
    "an unknown flag": ["doctor", "--no-such-flag"],
    "help after the command": ["serve", "-h"],
}
EVERY_COMMAND = {
    "no command": [],
    "help first": ["--help", "check"],
    "version": ["--version"],
    "an abbreviated flag": ["--verb", "check", "a.yaml"],
    "an unknown command": ["chek", "a.yaml"],
    "the module's spelling": ["sim_model"],
    "verbose only": ["-v"],
}


def parse_outcome(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[Any, ...]:
    """What parsing `argv` gives: the namespace, or the exit code with what was printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            return ("parsed", vars(parser.parse_args(argv)))
        except SystemExit as exit:
            return ("exit", exit.code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("argv", ONE_COMMAND.values(), ids=ONE_COMMAND.keys())
def test_the_parser_of_the_named_command_alone_parses_as_the_whole_parser(argv: list[str]) -> None:
    command = command_to_run(argv)
    assert command is not None
    assert parse_outcome(build_parser(command), argv) == parse_outcome(build_parser(), argv)


@pytest.mark.parametrize("argv", EVERY_COMMAND.values(), ids=EVERY_COMMAND.keys())
def test_a_command_line_without_a_plain_command_gets_every_command(argv: list[str]) -> None:
    assert command_to_run(argv) is None


@pytest.mark.parametrize("name", command_names())
def test_each_command_s_help_is_the_same_from_its_parser_alone(name: str) -> None:
    argv = [name.replace("_", "-"), "--help"]
    assert command_to_run(argv) == name
    assert parse_outcome(build_parser(name), argv) == parse_outcome(build_parser(), argv)
