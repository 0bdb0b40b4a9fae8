"""Inputs every command reads the same way: one error wording, Helm templates skipped, the pre-commit hook.

`data/chart/` is shaped like a real chart: `Chart.yaml`, `values.yaml`, and templates (an EnvoyFilter
inside `{{- if }}`, a ConfigMap with `{{ include }}` and `toYaml`) that are not YAML until rendered.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from cli.main import main

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
CHART = DATA / "chart"
TEMPLATES = sorted((CHART / "templates").glob("*.yaml"))
PLAIN = DATA / "lua-no-ext-proc.yaml"
SERVICE = ["--service", "llm-d/llm-d-epp=10.96.0.20:9002"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


BAD_FILES = {
    "binary": b"kind: EnvoyFilter\n\x00\x01\x02",
    "not-utf8": b"kind: caf\xe9\n",
    "invalid-yaml": b"kind: [unclosed\n",
}


@pytest.mark.parametrize("content", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_every_command_words_an_unreadable_file_the_same_way(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    lines = {}
    for name, argv in {
        "check": ["check", str(path)],
        "fix": ["fix", str(path)],
        "render": ["render", str(path)],
        "doctor": ["doctor", "--stats", str(PLAIN), "--filter", str(path)],
    }.items():
        code, _, err = run(argv, capsys)
        assert code == 2, (name, err)
        error_lines = [line for line in err.splitlines() if line.startswith("extproc-guard")]
        assert len(error_lines) == 1, (name, err)
        lines[name] = error_lines[0]
    assert lines["check"].startswith(f"extproc-guard: error: {path}: ")
    assert set(lines.values()) == {lines["check"]}, lines


def test_a_missing_file_is_worded_the_same_by_check_and_render(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.yaml"
    _, _, render_err = run(["render", str(missing)], capsys)
    _, _, doctor_err = run(["doctor", "--stats", str(missing)], capsys)
    assert render_err == doctor_err
    assert render_err.startswith(f"extproc-guard: error: {missing}: cannot read: ")


@pytest.mark.parametrize("command", ["check", "fix"])
def test_helm_templates_are_skipped_with_one_line_each_and_the_exit_code_unaffected(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([command, str(CHART), *SERVICE], capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == len(TEMPLATES)
    for line, template in zip(lines, TEMPLATES, strict=True):
        assert line.startswith(
            f"extproc-guard: skipped {template}: a Helm template (template syntax at line "
        )
    if command == "fix":
        assert "{{" not in out
        assert next(doc for doc in yaml.safe_load_all(out) if doc)["name"] == "epp-filter"


@pytest.mark.parametrize("command", ["check", "fix"])
def test_strict_fails_on_a_helm_template(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([command, "--strict", str(TEMPLATES[0]), *SERVICE], capsys)
    assert code == 2
    assert err.startswith(f"extproc-guard: error: {TEMPLATES[0]}: a Helm template")


def test_a_template_among_good_files_leaves_their_findings_and_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    alone, _, _ = run(["check", str(DATA / "empty-match.yaml")], capsys)
    code, out, _ = run(["check", "-o", "json", str(DATA / "empty-match.yaml"), *map(str, TEMPLATES)], capsys)
    data = json.loads(out)
    assert code == alone == 1
    assert data["summary"]["skipped"] == len(TEMPLATES)
    assert data["summary"]["input_errors"] == 0
    assert [entry["file"] for entry in data["skipped"]] == [str(path) for path in TEMPLATES]
    assert data["summary"]["envoyfilters"] == 1


@pytest.mark.parametrize("output", ["sarif", "junit", "github"])
def test_every_output_format_names_a_skipped_template(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["check", "-o", output, str(TEMPLATES[0])], capsys)
    assert code == 0
    assert "a Helm template" in out
    assert TEMPLATES[0].name in out


def test_a_quoted_template_expression_in_valid_yaml_is_checked_not_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text('apiVersion: v1\nkind: ConfigMap\ndata:\n  summary: "{{ $labels.instance }} is down"\n')
    code, out, err = run(["check", str(path)], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("1 document, 0 envoyfilters")


def test_json_output_counts_and_lists_input_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_bytes(BAD_FILES["invalid-yaml"])
    code, out, err = run(
        ["check", "-o", "json", str(broken), str(DATA / "empty-match.yaml"), *SERVICE], capsys
    )
    assert code == 2
    data = json.loads(out)
    assert data["summary"]["input_errors"] == 1
    [error] = data["errors"]
    assert error["file"] == str(broken)
    assert f"extproc-guard: error: {broken}: {error['reason']}\n" in err
    assert all("fix" in finding for finding in data["findings"])
    assert any(finding["fix"] for finding in data["findings"])


def test_the_pre_commit_hook_leaves_chart_templates_out() -> None:
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    exclude = re.compile(hook["exclude"])
    assert hook["types_or"] == ["yaml", "json"]
    for path in ("charts/epp/templates/envoyfilter.yaml", "templates/configmap.yaml"):
        assert exclude.search(path), path
    for path in ("charts/epp/values.yaml", "manifests/envoyfilter.yaml", "my-templates.yaml"):
        assert not exclude.search(path), path
