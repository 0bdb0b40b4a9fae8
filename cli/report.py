"""What `check` found, and its output formats: text, json, sarif, junit, github.

A `Report` is plain data (findings placed at file and line, input errors, counts); each `render_*`
function turns it into one string for stdout. Input errors also go to stderr in every format (the
command prints them), so a format never has to be parsed to learn that an input was skipped.

What only one format needs (the package version and hashes for SARIF, XML for JUnit) is imported by that
format's renderer: `check` with the default text output loads none of it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath
from typing import Any, Final
from urllib.parse import quote  # pathlib, which every command uses, imports it anyway

from cli.sources import STDIN_NAME, InputError, SkippedInput
from policies import CATALOG, Finding, Level

TOOL_NAME: Final = "extproc-guard"
SARIF_SCHEMA: Final = "https://json.schemastore.org/sarif-2.1.0.json"


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"
    JUNIT = "junit"
    GITHUB = "github"


@dataclass(frozen=True, slots=True)
class LocatedFinding:
    """A finding with the line of the node its JSON Pointer names."""

    finding: Finding
    line: int


@dataclass(frozen=True, slots=True)
class DocumentResult:
    """One EnvoyFilter that was checked: where it is, who it is, what is wrong with it."""

    file: str
    line: int
    namespace: str | None
    name: str | None
    findings: tuple[LocatedFinding, ...] = ()

    @property
    def label(self) -> str:
        return f"envoyfilter/{self.name or '(unnamed)'}"

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace or '(no namespace)'}/{self.name or '(unnamed)'}"


@dataclass(frozen=True, slots=True)
class Report:
    """Everything one `check` run learned. `documents` counts every mapping document read."""

    results: tuple[DocumentResult, ...]
    errors: tuple[InputError, ...]
    documents: int
    skipped: tuple[SkippedInput, ...] = ()
    strict: bool = False
    """With `strict`, a skipped input (a Helm template) fails the run like an input error."""

    @property
    def envoyfilters(self) -> int:
        return len(self.results)

    def findings(self) -> Iterator[tuple[DocumentResult, LocatedFinding]]:
        for result in self.results:
            for located in result.findings:
                yield result, located

    def count(self, level: Level) -> int:
        return sum(1 for _, located in self.findings() if located.finding.level is level)

    @property
    def exit_code(self) -> int:
        """2 when an input could not be read, else 1 when an `enforce` finding exists, else 0."""
        if self.errors or (self.strict and self.skipped):
            return 2
        return 1 if self.count(Level.ENFORCE) else 0


def summary_line(report: Report) -> str:
    enforce, warn = report.count(Level.ENFORCE), report.count(Level.WARN)
    counts = f"{enforce} enforce, {warn} warn" if enforce or warn else "no findings"
    errors = f", {_plural(len(report.errors), 'input error')}" if report.errors else ""
    skipped = f", {len(report.skipped)} skipped" if report.skipped else ""
    return (
        f"{_plural(report.documents, 'document')}, {_plural(report.envoyfilters, 'envoyfilter')}: "
        f"{counts}{errors}{skipped}"
    )


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def describe_finding(result: DocumentResult, located: LocatedFinding) -> str:
    """`envoyfilter/NAME (namespace NS) in FILE:LINE: EPX003 epp-cluster-dns: MESSAGE` (kubectl-like)."""
    finding = located.finding
    level = "" if finding.level is Level.ENFORCE else f" ({finding.level.value})"
    namespace = result.namespace or "(none)"
    return (
        f"{result.label} (namespace {namespace}) in {result.file}:{located.line}: "
        f"{finding.rule} {finding.slug}{level}: {finding.message}"
    )


def finding_lines(results: Iterable[DocumentResult]) -> Iterator[str]:
    """Each finding as `describe_finding` says it, with its fix on an indented line when it has one."""
    for result in results:
        for located in result.findings:
            yield describe_finding(result, located)
            if located.finding.fix:
                yield f"    fix: {located.finding.fix}"


def render_text(report: Report) -> str:
    return "\n".join([*finding_lines(report.results), summary_line(report)]) + "\n"


def render_json(report: Report) -> str:
    findings = [
        {
            "rule": located.finding.rule,
            "slug": located.finding.slug,
            "level": located.finding.level.value,
            "file": result.file,
            "line": located.line,
            "namespace": result.namespace,
            "name": result.name,
            "path": located.finding.path,
            "message": located.finding.message,
            "fix": located.finding.fix or None,
            "role": located.finding.role or None,
            "role_why": located.finding.role_why or None,
        }
        for result, located in report.findings()
    ]
    summary = {
        "documents": report.documents,
        "envoyfilters": report.envoyfilters,
        "enforce": report.count(Level.ENFORCE),
        "warn": report.count(Level.WARN),
        "input_errors": len(report.errors),
        "skipped": len(report.skipped),
    }
    document = {
        "findings": findings,
        "summary": summary,
        "errors": [{"file": error.file, "reason": error.reason} for error in report.errors],
        "skipped": [{"file": skip.file, "reason": skip.reason} for skip in report.skipped],
    }
    return json.dumps(document, indent=2) + "\n"


def as_sentence(text: str) -> str:
    """`text` ending in a full stop (unless it already ends in punctuation)."""
    text = text.rstrip()
    return text if not text or text[-1] in ".!?" else text + "."


def tool_version() -> str:
    from importlib import metadata

    try:
        return metadata.version(TOOL_NAME)
    except metadata.PackageNotFoundError:
        return "0.0.0"


def artifact_uri(file: str) -> str:
    """A SARIF artifact URI: a relative path stays relative (forward slashes), an absolute one a file URI."""
    if file == STDIN_NAME:
        return "stdin"
    path = PurePath(file)
    if path.is_absolute():
        return path.as_uri()
    return quote(path.as_posix(), safe="/")


def _sarif_level(level: Level) -> str:
    return {Level.ENFORCE: "error", Level.WARN: "warning"}.get(level, "none")


def _fingerprint(result: DocumentResult, finding: Finding) -> str:
    import hashlib

    key = "\0".join((finding.rule, result.qualified_name, finding.path))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def render_sarif(report: Report) -> str:
    fixes: dict[str, str] = {}
    for _, located in report.findings():
        fixes.setdefault(located.finding.rule, located.finding.fix)
    rules = []
    index_of: dict[str, int] = {}
    for position, info in enumerate(CATALOG):
        index_of[info.id] = position
        help_text = f"{info.summary}." + (f" Fix: {fixes[info.id]}" if fixes.get(info.id) else "")
        rules.append(
            {
                "id": info.id,
                "name": info.slug,
                "shortDescription": {"text": info.summary},
                "help": {"text": help_text},
                "defaultConfiguration": {"level": _sarif_level(info.default_level)},
                "properties": {"tags": ["envoy", "ext_proc", "istio"]},
            }
        )
    results: list[dict[str, Any]] = []
    for result, located in report.findings():
        finding = located.finding
        entry: dict[str, Any] = {
            "ruleId": finding.rule,
            "level": _sarif_level(finding.level),
            "message": {
                "text": as_sentence(finding.message)
                + (f"\nFix: {as_sentence(finding.fix)}" if finding.fix else "")
            },
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": artifact_uri(result.file)},
                        "region": {"startLine": located.line},
                    },
                    "logicalLocations": [
                        {
                            "fullyQualifiedName": f"envoyfilter/{result.qualified_name}{finding.path}",
                            "kind": "object",
                        }
                    ],
                }
            ],
            "partialFingerprints": {"extprocGuardFinding/v1": _fingerprint(result, finding)},
        }
        if finding.rule in index_of:
            entry["ruleIndex"] = index_of[finding.rule]
        results.append(entry)
    notifications = [
        {
            "level": "error",
            "message": {"text": error.reason},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact_uri(error.file)}}}],
        }
        for error in report.errors
    ] + [
        {
            "level": "error" if report.strict else "note",
            "message": {"text": f"skipped: {skip.reason}"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact_uri(skip.file)}}}],
        }
        for skip in report.skipped
    ]
    run = {
        "tool": {"driver": {"name": TOOL_NAME, "version": tool_version(), "rules": rules}},
        "invocations": [
            {"executionSuccessful": report.exit_code != 2, "toolExecutionNotifications": notifications}
        ],
        "results": results,
    }
    return json.dumps({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2) + "\n"


@functools.cache
def _xml_invalid() -> re.Pattern[str]:
    """Characters XML 1.0 cannot hold."""
    return re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    return _xml_invalid().sub("\ufffd", text)


def render_junit(report: Report) -> str:
    """One testcase per EnvoyFilter, one `<failure>` per enforce finding; unreadable inputs are `<error>`s."""
    import xml.etree.ElementTree as ET

    failures = sum(1 for result in report.results if enforced(result))
    suites = ET.Element("testsuites", name=TOOL_NAME)
    suite = ET.SubElement(suites, "testsuite", name=f"{TOOL_NAME} check")
    for result in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=_xml_text(result.file),
            name=_xml_text(f"envoyfilter/{result.qualified_name}"),
            file=_xml_text(result.file),
            line=str(result.line),
        )
        warnings: list[str] = []
        for located in result.findings:
            text = _xml_text(describe_finding(result, located))
            fix = _xml_text(located.finding.fix)
            if located.finding.level is Level.ENFORCE:
                failure = ET.SubElement(
                    case,
                    "failure",
                    type=located.finding.rule,
                    message=_xml_text(f"{located.finding.slug}: {located.finding.message}"),
                )
                failure.text = f"{text}\nfix: {fix}" if fix else text
            else:
                warnings.append(text)
        if warnings:
            ET.SubElement(case, "system-out").text = "\n".join(warnings)
    for error in report.errors:
        case = ET.SubElement(
            suite, "testcase", classname=_xml_text(error.file), name="read input", file=_xml_text(error.file)
        )
        ET.SubElement(case, "error", type="input", message=_xml_text(error.reason)).text = _xml_text(
            str(error)
        )
    for skip in report.skipped:
        case = ET.SubElement(
            suite, "testcase", classname=_xml_text(skip.file), name="read input", file=_xml_text(skip.file)
        )
        ET.SubElement(case, "skipped", message=_xml_text(skip.reason))
    counts = {
        "tests": str(len(report.results) + len(report.errors) + len(report.skipped)),
        "failures": str(failures),
        "errors": str(len(report.errors)),
        "skipped": str(len(report.skipped)),
    }
    for element in (suites, suite):
        element.attrib.update(counts)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def enforced(result: DocumentResult) -> bool:
    """Whether the EnvoyFilter has a finding at `enforce` level (a JUnit failure, exit 1 for `fix`)."""
    return any(located.finding.level is Level.ENFORCE for located in result.findings)


def escape_github_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_github_property(text: str) -> str:
    return escape_github_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(report: Report) -> str:
    """GitHub Actions workflow commands: one `::error` / `::warning` annotation per finding."""
    lines: list[str] = []
    for result, located in report.findings():
        finding = located.finding
        command = "error" if finding.level is Level.ENFORCE else "warning"
        title = escape_github_property(f"{finding.rule} {finding.slug}")
        message = f"{result.label} (namespace {result.namespace or '(none)'}): {finding.message}"
        if finding.fix:
            message += f"\nfix: {finding.fix}"
        lines.append(
            f"::{command} file={escape_github_property(result.file)},line={located.line},"
            f"title={title}::{escape_github_data(message)}"
        )
    for error in report.errors:
        lines.append(f"::error file={escape_github_property(error.file)}::{escape_github_data(error.reason)}")
    for skip in report.skipped:
        command = "error" if report.strict else "notice"
        reason = escape_github_data(f"skipped: {skip.reason}")
        lines.append(f"::{command} file={escape_github_property(skip.file)}::{reason}")
    lines.append(summary_line(report))
    return "\n".join(lines) + "\n"


RENDERERS: Final[dict[OutputFormat, Callable[[Report], str]]] = {
    OutputFormat.TEXT: render_text,
    OutputFormat.JSON: render_json,
    OutputFormat.SARIF: render_sarif,
    OutputFormat.JUNIT: render_junit,
    OutputFormat.GITHUB: render_github,
}


def render_report(report: Report, output: OutputFormat) -> str:
    return RENDERERS[output](report)
