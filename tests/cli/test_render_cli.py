"""`extproc-guard render FILE`: output formats, options, and one-line errors with exit code 2.

The command module is driven through a parser holding only this command (as the CLI registers it), so
these tests do not depend on the other commands' modules.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli.commands import render
from tests.documents import SEED_CORRECTED
from tests.policies.bootstraps import manager_of

SINGLE_COMMAND_CLI = (
    "import argparse, sys\n"
    "from cli.commands import render\n"
    "parser = argparse.ArgumentParser(prog='extproc-guard')\n"
    "render.register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.handler(args))\n"
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="extproc-guard")
    render.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["render", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_render_prints_the_bootstrap_as_yaml_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([str(SEED_CORRECTED)], capsys)
    bootstrap = yaml.safe_load(out)
    assert (code, err) == (0, "")
    assert {c["name"] for c in bootstrap["static_resources"]["clusters"]} == {"inference-pool", "epp-cluster"}


def test_render_prints_json_and_applies_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(SEED_CORRECTED), "-o", "json", "--listen-port", "18080", "--admin-port", "19001"]
    argv += [
        "--stat-prefix",
        "ingress",
        "--baseline-route",
        "/baseline",
        "--endpoint",
        "epp-cluster=127.0.0.1:9002",
    ]
    code, out, _ = run(argv, capsys)
    bootstrap = json.loads(out)
    assert code == 0
    assert bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] == 18080
    assert bootstrap["admin"]["address"]["socket_address"]["port_value"] == 19001
    manager = manager_of(bootstrap)
    assert manager["stat_prefix"] == "ingress"
    routes = {r["match"]["prefix"]: r for r in manager["route_config"]["virtual_hosts"][0]["routes"]}
    assert routes["/baseline"]["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["disabled"] is True
    epp = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}["epp-cluster"]
    endpoint = epp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9002}


def test_render_picks_the_first_envoyfilter_of_a_multi_document_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump(service) + "---\n" + SEED_CORRECTED.read_text("utf-8"), "utf-8")
    code, out, _ = run([str(path)], capsys)
    assert code == 0
    assert manager_of(yaml.safe_load(out))["http_filters"][0]["typed_config"]["message_timeout"] == "5s"


def test_render_notes_patches_it_did_not_apply_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = {
        "kind": "EnvoyFilter",
        "spec": {"configPatches": [{"applyTo": "LISTENER", "patch": {"operation": "MERGE", "value": {}}}]},
    }
    path = tmp_path / "f.json"
    path.write_text(json.dumps(document), "utf-8")
    code, out, err = run([str(path)], capsys)
    assert code == 0
    assert yaml.safe_load(out)["static_resources"]
    assert (
        err
        == "extproc-guard render: note: configPatches[0] LISTENER MERGE: applyTo LISTENER is not rendered\n"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"kind: [unclosed\n", "invalid YAML"),
        (b"apiVersion: v1\nkind: Service\n", "no EnvoyFilter document"),
        (b"\xff\xfe\x00binary", "not valid utf-16-le text"),
        (b"kind: EnvoyFilter\n\x00\x01", "binary file"),
        (b"kind: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9)"),
        (
            b"kind: EnvoyFilter\nspec:\n  configPatches:\n"
            b"  - applyTo: CLUSTER\n    patch: {operation: ADD, value: 3}\n",
            "spec.configPatches[0].patch.value must be a mapping, got int",
        ),
        (b"kind: EnvoyFilter\nspec:\n  configPatches: {}\n", "spec.configPatches must be a list"),
    ],
    ids=[
        "invalid-yaml",
        "no-envoyfilter",
        "utf16-bom",
        "binary",
        "not-utf8",
        "value-not-a-mapping",
        "patches-not-a-list",
    ],
)
def test_bad_input_is_one_line_on_stderr_with_exit_2(
    content: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.yaml"
    path.write_bytes(content)
    code, out, err = run([str(path)], capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert message in err


def test_an_unreadable_path_is_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([str(tmp_path / "missing.yaml")], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "cannot read" in err


@pytest.mark.parametrize(
    "argv",
    [["--listen-port", "70000"], ["--endpoint", "no-address"], ["-o", "xml"]],
    ids=["port-out-of-range", "endpoint-without-address", "unknown-format"],
)
def test_bad_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["render", str(SEED_CORRECTED), *argv])
    assert exit_info.value.code == 2
    assert "render: error: argument" in capsys.readouterr().err


def test_render_reads_stdin_in_a_real_process() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SINGLE_COMMAND_CLI, "render", "-", "-o", "json"],
        input=SEED_CORRECTED.read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert manager_of(json.loads(result.stdout))["http_filters"][0]["name"] == "envoy.filters.http.ext_proc"


def test_garbage_on_stdin_exits_2_without_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SINGLE_COMMAND_CLI, "render", "-"],
        input=b"{{{",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr
    assert result.stderr.count(b"\n") == 1
