"""`extproc-guard check` end to end: the real engine on the shipped examples, every output format, bad input.

In-process runs go through `cli.main.main`; exit codes and stderr are also checked through the
installed console script in a subprocess, as CI and pre-commit run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.cli.clirun import SCRIPT, SERVICE, run
from tests.documents import EXAMPLES, ROOT, SEED_BAD, SEED_CORRECTED


def run_script(
    args: list[str], *, stdin: bytes | None = None, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), str(SCRIPT), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def line_containing(path: Path, needle: str, *, after: str | None = None) -> int:
    """The 1-based line of the first line containing `needle` (after the first line containing `after`)."""
    lines = path.read_text().splitlines()
    start = 0 if after is None else next(i for i, line in enumerate(lines) if after in line)
    return next(i for i, line in enumerate(lines) if i >= start and needle in line) + 1


def check_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code, out, _ = run(["check", "-o", "json", *args], capsys)
    return code, json.loads(out)


def findings_of(data: dict[str, object]) -> list[dict[str, object]]:
    findings = data["findings"]
    assert isinstance(findings, list)
    return findings


def test_the_seed_filter_fails_with_every_incident_problem_named(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check", str(SEED_BAD), *SERVICE], capsys)
    assert code == 1
    assert err == ""
    for rule in ("EPX001 ext-proc-operation", "EPX002 body-mode-streamed", "EPX003 epp-cluster-dns"):
        assert rule in out
    for rule in ("EPX004 header-mode-global", "EPX005 epp-cluster-http2", "EPX011 processing-mode-partial"):
        assert rule in out
    assert out.startswith(f"envoyfilter/epp-ext-proc (namespace llm-d-inference-scheduler) in {SEED_BAD}:")
    assert "    fix: " in out


@pytest.mark.parametrize(
    ("rule", "needle", "after"),
    [
        ("EPX001", "operation: INSERT_BEFORE", None),
        ("EPX003", "type: STRICT_DNS", None),
        ("EPX004", "request_header_mode: SEND", None),
        ("EPX002", "request_body_mode: STREAMED", "applyTo: HTTP_ROUTE"),
    ],
    ids=["operation", "cluster-type", "global-header-mode", "per-route-body-mode"],
)
def test_findings_carry_the_line_of_the_offending_field(
    capsys: pytest.CaptureFixture[str], rule: str, needle: str, after: str | None
) -> None:
    _, data = check_json([str(SEED_BAD), *SERVICE], capsys)
    lines = {finding["line"] for finding in findings_of(data) if finding["rule"] == rule}
    assert line_containing(SEED_BAD, needle, after=after) in lines


def test_json_output_has_the_documented_keys_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, data = check_json([str(EXAMPLES), *SERVICE], capsys)
    assert code == 1
    assert set(data) == {"findings", "summary", "errors", "skipped"}
    assert data["summary"] == {
        "documents": 5,
        "envoyfilters": 4,
        "enforce": sum(1 for f in findings_of(data) if f["level"] == "enforce"),
        "warn": sum(1 for f in findings_of(data) if f["level"] == "warn"),
        "input_errors": 0,
        "skipped": 0,
    }
    keys = {
        "rule",
        "slug",
        "level",
        "file",
        "line",
        "namespace",
        "name",
        "path",
        "message",
        "fix",
        "role",
        "role_why",
    }
    assert all(set(finding) == keys for finding in findings_of(data))
    assert all(f["role"] == "epp" and f["role_why"] for f in findings_of(data))
    # The folder is one context: seed-bad.yaml's per-route override (same namespace, same filter) enables
    # failure-mode-allow.yaml's filter, so that file keeps only its warning.
    assert {f["file"] for f in findings_of(data) if f["level"] == "enforce"} == {
        str(EXAMPLES / name) for name in ("camelcase-no-http2.yaml", "seed-bad.yaml")
    }


def test_the_corrected_seed_has_no_enforce_finding(capsys: pytest.CaptureFixture[str]) -> None:
    code, data = check_json([str(SEED_CORRECTED), *SERVICE], capsys)
    assert code == 0
    assert all(finding["level"] == "warn" for finding in findings_of(data))


def test_camel_case_spelling_is_understood_and_lines_point_at_camel_case_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    camel = EXAMPLES / "camelcase-no-http2.yaml"
    code, data = check_json([str(camel), *SERVICE], capsys)
    assert code == 1
    by_rule = {f["rule"]: f for f in findings_of(data)}
    assert {"EPX005", "EPX006"} <= set(by_rule)
    assert by_rule["EPX006"]["line"] == line_containing(camel, "address: 10.96.3.7")


def test_a_service_nobody_resolves_is_reported_not_guessed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", str(SEED_BAD)], capsys)
    assert code == 1
    assert "EPX003 epp-cluster-dns" in out


def test_sarif_output_locates_each_result_like_the_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    _, data = check_json([str(SEED_BAD), *SERVICE], capsys)
    code, out, _ = run(["check", "-o", "sarif", str(SEED_BAD), *SERVICE], capsys)
    assert code == 1
    sarif = json.loads(out)
    assert sarif["version"] == "2.1.0"
    run_ = sarif["runs"][0]
    rule_ids = [rule["id"] for rule in run_["tool"]["driver"]["rules"]]
    located = [
        (
            result["ruleId"],
            result["level"],
            result["locations"][0]["physicalLocation"]["region"]["startLine"],
            result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        )
        for result in run_["results"]
    ]
    expected = [
        (f["rule"], "error" if f["level"] == "enforce" else "warning", f["line"], SEED_BAD.as_uri())
        for f in findings_of(data)
    ]
    assert located == expected
    assert all(rule_ids[result["ruleIndex"]] == result["ruleId"] for result in run_["results"])


def test_junit_output_has_a_testcase_per_envoyfilter_and_failures_per_enforce_finding(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, data = check_json([str(EXAMPLES), *SERVICE], capsys)
    code, out, _ = run(["check", "-o", "junit", str(EXAMPLES), *SERVICE], capsys)
    assert code == 1
    cases = ET.fromstring(out).findall("testsuite/testcase")
    assert len(cases) == 4
    failures = sum(len(case.findall("failure")) for case in cases)
    assert failures == sum(1 for f in findings_of(data) if f["level"] == "enforce")
    clean = [case for case in cases if not case.findall("failure")]
    # seed-corrected.yaml, and failure-mode-allow.yaml whose filter seed-bad.yaml's override enables.
    assert sorted(case.get("name") or "" for case in clean) == [
        "envoyfilter/llm-d-inference-scheduler/epp-ext-proc",
        "envoyfilter/llm-d-inference-scheduler/epp-ext-proc-open",
    ]


def test_github_output_annotates_file_and_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", "-o", "github", str(SEED_BAD), *SERVICE], capsys)
    assert code == 1
    line = line_containing(SEED_BAD, "operation: INSERT_BEFORE")
    assert f"::error file={SEED_BAD},line={line},title=EPX001 ext-proc-operation::" in out
    assert all("\n" not in annotation for annotation in out.splitlines())


def test_json_files_are_checked_with_their_own_line_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    as_json = tmp_path / "seed.json"
    as_json.write_text(json.dumps(yaml.safe_load(SEED_BAD.read_text()), indent=2))
    code, data = check_json([str(as_json), *SERVICE], capsys)
    assert code == 1
    dns = next(f for f in findings_of(data) if f["rule"] == "EPX003")
    assert dns["line"] == line_containing(as_json, '"type": "STRICT_DNS"')


def test_stdin_is_read_for_a_dash_through_the_console_script() -> None:
    result = run_script(["check", "-", "-o", "json", *SERVICE], stdin=SEED_BAD.read_bytes())
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    operation = next(f for f in data["findings"] if f["rule"] == "EPX001")
    assert (operation["file"], operation["line"]) == ("<stdin>", line_containing(SEED_BAD, "INSERT_BEFORE"))


def test_other_kinds_are_skipped_and_a_clean_run_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n")
    code, out, err = run(["check", str(tmp_path)], capsys)
    assert (code, err) == (0, "")
    assert out == "1 document, 0 envoyfilters: no findings\n"


def test_a_policy_file_turns_rules_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text('rules:\n  failure-mode-allow: "off"\n  EPX004: "off"\n  EPX012: "off"\n')
    target = EXAMPLES / "failure-mode-allow.yaml"
    code, data = check_json([str(target), "--policy", str(policy), *SERVICE], capsys)
    assert (code, findings_of(data)) == (0, [])


# Bad input: one line on stderr per problem, exit 2, no traceback, and the good file is still checked.
BAD_INPUTS: dict[str, bytes] = {
    "invalid-yaml": b"kind: EnvoyFilter\n  spec: [unclosed\n",
    "non-mapping": b"- just\n- a list\n",
    "config-patches-null": (
        b"apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\n"
        b"metadata: {name: n, namespace: ns}\nspec:\n  configPatches: null\n"
    ),
    "recursive-alias": (
        b"apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: n, namespace: ns}\n"
        b"spec: &s\n  configPatches:\n  - patch: {value: *s}\n"
    ),
    "binary": bytes(range(256)) * 4,
    "not-utf8": b"kind: ConfigMap\ndata: {a: caf\xe9}\n",
}
BAD_REASONS = {
    "invalid-yaml": "invalid YAML at line 2",
    "non-mapping": "document 1 (line 1) is a list, not a mapping",
    "config-patches-null": "document 1 (line 5): not a usable EnvoyFilter: spec.configPatches is null",
    "recursive-alias": "document 1: a recursive alias (the node at line 4 contains an alias to itself)",
    "binary": "binary file (contains NUL bytes)",
    "not-utf8": "not UTF-8 text (byte 0xe9 at offset 29)",
    "too-big": "50 MiB, larger than the 16 MiB limit; not read",
    "missing": "no such file or folder",
    "empty-folder": "no *.yaml, *.yml or *.json files in this folder",
}


def assert_one_error_line(stderr: str, name: str, reason: str) -> None:
    lines = stderr.splitlines()
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"extproc-guard: error: {name}: ")
    assert reason in lines[0]


@pytest.mark.parametrize("case", [*BAD_INPUTS, "too-big", "missing", "empty-folder"])
def test_bad_input_is_one_clear_line_exit_two_and_other_files_are_still_checked(
    tmp_path: Path, case: str
) -> None:
    if case in BAD_INPUTS:
        bad = tmp_path / f"{case}.yaml"
        bad.write_bytes(BAD_INPUTS[case])
    elif case == "too-big":
        bad = tmp_path / "huge.yaml"
        with bad.open("wb") as handle:
            handle.truncate(50 * 1024 * 1024)
    elif case == "missing":
        bad = tmp_path / "missing.yaml"
    else:
        bad = tmp_path / "folder"
        bad.mkdir()
        (bad / "README.txt").write_text("nothing to check here\n")
    result = run_script(["check", str(bad), str(SEED_BAD), *SERVICE])
    assert result.returncode == 2
    assert_one_error_line(result.stderr, str(bad), BAD_REASONS[case])
    assert "EPX001 ext-proc-operation" in result.stdout


DROP_FILE_CAPS = [
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]


def test_an_unreadable_file_is_one_clear_line_and_the_readable_one_is_checked(tmp_path: Path) -> None:
    """As root the CLI runs under `setpriv` without the capabilities that let root read any file."""
    secret = tmp_path / "secret.yaml"
    secret.write_bytes(SEED_BAD.read_bytes())
    secret.chmod(0)
    readable = tmp_path / "readable.yaml"
    readable.write_bytes(SEED_BAD.read_bytes())
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: every file is readable")
        prefix = [setpriv, *DROP_FILE_CAPS]
    result = run_script(["check", str(secret), str(readable), *SERVICE], prefix=prefix)
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr, str(secret), "cannot read: permission denied")
    assert f"in {readable}:" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "x.yaml", "--service", "nope"], "argument --service: 'nope' is not NAMESPACE/NAME="),
        (["check", "x.yaml", "-o", "xml"], "argument -o/--output: invalid choice: 'xml'"),
        (["check", "x.yaml", "--policy", "/nonexistent/policy.yaml"], "cannot read the policy file"),
        (["check", "x.yaml", "--kubeconfig", "/nonexistent/kubeconfig"], "kubeconfig file not found"),
        (["check"], "the following arguments are required: PATH"),
    ],
    ids=["bad-service", "bad-format", "missing-policy", "missing-kubeconfig", "no-paths"],
)
def test_usage_errors_exit_two_with_one_line(args: list[str], message: str) -> None:
    result = run_script(args)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
