"""Output formats of `check`, on hand-made findings (the engine's own findings are covered end to end)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import jsonschema
import pytest

from cli.report import (
    DocumentResult,
    LocatedFinding,
    OutputFormat,
    Report,
    escape_github_data,
    escape_github_property,
    render_report,
)
from cli.sources import InputError, SkippedInput
from policies.catalog import CATALOG
from policies.findings import Finding, Level

DNS = Finding(
    rule="EPX003",
    slug="epp-cluster-dns",
    level=Level.ENFORCE,
    path="/spec/configPatches/1/patch/value/type",
    message="the EPP cluster is STRICT_DNS, resolved from the gateway pod",
    fix="type: STATIC with the Service's ClusterIP",
    fixable=True,
)
OPEN = Finding(
    rule="EPX009",
    slug="failure-mode-allow",
    level=Level.WARN,
    path="/spec/configPatches/0/patch/value/typed_config/failure_mode_allow",
    message="failure_mode_allow: true hides a broken EPP, with 100% of traffic, and more",
    fix="",
    fixable=False,
)
BAD = DocumentResult(
    file="dir/a b,c.yaml",
    line=3,
    namespace="ns",
    name="epp",
    findings=(LocatedFinding(DNS, 46), LocatedFinding(OPEN, 31)),
)
CLEAN = DocumentResult(file="dir/ok.yaml", line=1, namespace="ns", name="fine")
REPORT = Report(results=(BAD, CLEAN), errors=(), documents=3)
WITH_ERROR = Report(
    results=(BAD,), errors=(InputError("broken.yaml", "invalid YAML at line 2, column 3: x"),), documents=1
)

# The parts of the SARIF 2.1.0 schema that code-scanning uploads rely on (required properties and enums).
SARIF_SUBSET: dict[str, Any] = {
    "type": "object",
    "required": ["version", "runs"],
    "properties": {
        "version": {"const": "2.1.0"},
        "$schema": {"type": "string"},
        "runs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["tool", "results"],
                "properties": {
                    "tool": {
                        "type": "object",
                        "required": ["driver"],
                        "properties": {
                            "driver": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "rules": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["id"],
                                            "properties": {
                                                "id": {"type": "string"},
                                                "name": {"type": "string"},
                                                "shortDescription": {"$ref": "#/$defs/message"},
                                                "help": {"$ref": "#/$defs/message"},
                                                "defaultConfiguration": {
                                                    "type": "object",
                                                    "properties": {"level": {"$ref": "#/$defs/level"}},
                                                },
                                            },
                                        },
                                    },
                                },
                            }
                        },
                    },
                    "results": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["message"],
                            "properties": {
                                "ruleId": {"type": "string"},
                                "ruleIndex": {"type": "integer", "minimum": 0},
                                "level": {"$ref": "#/$defs/level"},
                                "message": {"$ref": "#/$defs/message"},
                                "locations": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "physicalLocation": {
                                                "type": "object",
                                                "required": ["artifactLocation"],
                                                "properties": {
                                                    "artifactLocation": {
                                                        "type": "object",
                                                        "required": ["uri"],
                                                        "properties": {
                                                            "uri": {
                                                                "type": "string",
                                                                "format": "uri-reference",
                                                            }
                                                        },
                                                    },
                                                    "region": {
                                                        "type": "object",
                                                        "required": ["startLine"],
                                                        "properties": {
                                                            "startLine": {"type": "integer", "minimum": 1}
                                                        },
                                                    },
                                                },
                                            }
                                        },
                                    },
                                },
                                "partialFingerprints": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "$defs": {
        "level": {"enum": ["none", "note", "warning", "error"]},
        "message": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    },
}


def test_text_reads_like_kubectl_with_file_line_rule_and_fix() -> None:
    text = render_report(REPORT, OutputFormat.TEXT)
    assert text.splitlines() == [
        "envoyfilter/epp (namespace ns) in dir/a b,c.yaml:46: EPX003 epp-cluster-dns: "
        "the EPP cluster is STRICT_DNS, resolved from the gateway pod",
        "    fix: type: STATIC with the Service's ClusterIP",
        "envoyfilter/epp (namespace ns) in dir/a b,c.yaml:31: EPX009 failure-mode-allow (warn): "
        "failure_mode_allow: true hides a broken EPP, with 100% of traffic, and more",
        "3 documents, 2 envoyfilters: 1 enforce, 1 warn",
    ]


def test_json_has_exactly_the_documented_shape() -> None:
    data = json.loads(render_report(REPORT, OutputFormat.JSON))
    assert data == {
        "findings": [
            {
                "rule": "EPX003",
                "slug": "epp-cluster-dns",
                "level": "enforce",
                "file": "dir/a b,c.yaml",
                "line": 46,
                "namespace": "ns",
                "name": "epp",
                "path": "/spec/configPatches/1/patch/value/type",
                "message": "the EPP cluster is STRICT_DNS, resolved from the gateway pod",
                "fix": "type: STATIC with the Service's ClusterIP",
                "role": None,
                "role_why": None,
            },
            {
                "rule": "EPX009",
                "slug": "failure-mode-allow",
                "level": "warn",
                "file": "dir/a b,c.yaml",
                "line": 31,
                "namespace": "ns",
                "name": "epp",
                "path": "/spec/configPatches/0/patch/value/typed_config/failure_mode_allow",
                "message": "failure_mode_allow: true hides a broken EPP, with 100% of traffic, and more",
                "fix": None,
                "role": None,
                "role_why": None,
            },
        ],
        "summary": {
            "documents": 3,
            "envoyfilters": 2,
            "enforce": 1,
            "warn": 1,
            "input_errors": 0,
            "skipped": 0,
        },
        "errors": [],
        "skipped": [],
    }


def test_json_lists_input_errors_and_skipped_inputs_like_the_other_formats() -> None:
    report = Report(
        results=WITH_ERROR.results,
        errors=WITH_ERROR.errors,
        documents=1,
        skipped=(SkippedInput("chart/templates/f.yaml", "a Helm template"),),
    )
    data = json.loads(render_report(report, OutputFormat.JSON))
    assert data["errors"] == [{"file": "broken.yaml", "reason": "invalid YAML at line 2, column 3: x"}]
    assert data["skipped"] == [{"file": "chart/templates/f.yaml", "reason": "a Helm template"}]
    assert (data["summary"]["input_errors"], data["summary"]["skipped"]) == (1, 1)
    assert data["findings"][0]["fix"] == "type: STATIC with the Service's ClusterIP"


def test_sarif_gives_the_message_and_its_fix_as_two_sentences() -> None:
    sarif = json.loads(render_report(REPORT, OutputFormat.SARIF))
    texts = [result["message"]["text"] for result in sarif["runs"][0]["results"]]
    assert texts[0] == (
        "the EPP cluster is STRICT_DNS, resolved from the gateway pod.\n"
        "Fix: type: STATIC with the Service's ClusterIP."
    )
    assert texts[1] == "failure_mode_allow: true hides a broken EPP, with 100% of traffic, and more."


def test_sarif_is_valid_against_the_schema_subset_with_rules_levels_and_regions() -> None:
    sarif = json.loads(render_report(REPORT, OutputFormat.SARIF))
    jsonschema.validate(sarif, SARIF_SUBSET, format_checker=jsonschema.FormatChecker())
    run = sarif["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [rule["id"] for rule in rules] == [info.id for info in CATALOG]
    first, second = run["results"]
    assert (first["ruleId"], first["level"], second["level"]) == ("EPX003", "error", "warning")
    assert rules[first["ruleIndex"]]["id"] == "EPX003"
    location = first["locations"][0]["physicalLocation"]
    assert location == {"artifactLocation": {"uri": "dir/a%20b%2Cc.yaml"}, "region": {"startLine": 46}}
    assert "Fix: type: STATIC" in rules[first["ruleIndex"]]["help"]["text"]
    assert run["invocations"][0]["executionSuccessful"] is True


def test_sarif_reports_unreadable_inputs_as_a_failed_invocation() -> None:
    sarif = json.loads(render_report(WITH_ERROR, OutputFormat.SARIF))
    invocation = sarif["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    assert invocation["toolExecutionNotifications"][0]["message"]["text"].startswith("invalid YAML")


def test_junit_has_one_testcase_per_envoyfilter_and_a_failure_per_enforce_finding() -> None:
    root = ET.fromstring(render_report(WITH_ERROR, OutputFormat.JUNIT))
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "1")
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == ["envoyfilter/ns/epp", "read input"]
    failures = cases[0].findall("failure")
    assert [f.get("type") for f in failures] == ["EPX003"]
    assert "dir/a b,c.yaml:46" in (failures[0].text or "")
    assert "EPX009" in (cases[0].findtext("system-out") or "")
    assert cases[1].find("error") is not None


def test_junit_stays_well_formed_with_control_characters_in_messages() -> None:
    nasty = DocumentResult("f.yaml", 1, "ns", "bad\x01name<&>", (LocatedFinding(DNS, 2),))
    root = ET.fromstring(render_report(Report((nasty,), (), 1), OutputFormat.JUNIT))
    assert root.find("testsuite/testcase") is not None


def test_github_commands_escape_data_and_properties() -> None:
    lines = render_report(WITH_ERROR, OutputFormat.GITHUB).splitlines()
    assert lines[0] == (
        "::error file=dir/a b%2Cc.yaml,line=46,title=EPX003 epp-cluster-dns::envoyfilter/epp (namespace ns): "
        "the EPP cluster is STRICT_DNS, resolved from the gateway pod"
        "%0Afix: type: STATIC with the Service's ClusterIP"
    )
    assert lines[1].startswith("::warning file=dir/a b%2Cc.yaml,line=31,title=EPX009 failure-mode-allow::")
    assert "with 100%25 of traffic" in lines[1]
    assert lines[2] == "::error file=broken.yaml::invalid YAML at line 2, column 3: x"


@pytest.mark.parametrize(
    ("raw", "data", "prop"),
    [
        ("a%b", "a%25b", "a%25b"),
        ("l1\nl2\r", "l1%0Al2%0D", "l1%0Al2%0D"),
        ("k: v, w", "k: v, w", "k%3A v%2C w"),
    ],
    ids=["percent", "newlines", "colon-comma"],
)
def test_github_escaping_follows_the_workflow_command_rules(raw: str, data: str, prop: str) -> None:
    assert (escape_github_data(raw), escape_github_property(raw)) == (data, prop)


@pytest.mark.parametrize(
    ("report", "code"),
    [(REPORT, 1), (WITH_ERROR, 2), (Report((CLEAN,), (), 1), 0)],
    ids=["enforce-finding", "unreadable-input", "clean"],
)
def test_exit_code_follows_the_contract(report: Report, code: int) -> None:
    assert report.exit_code == code
