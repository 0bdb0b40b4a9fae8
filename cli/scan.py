"""Run the policy over inputs: read each source, evaluate every EnvoyFilter, place findings on lines.

This is the part `check` and `fix` share. Nothing here prints; results come back as data (`Report`,
`CheckedDocument`) and every unreadable input as an `InputError`, so one bad file never stops the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from cli.report import DocumentResult, LocatedFinding, Report
from cli.sources import (
    DEFAULT_MAX_BYTES,
    InputError,
    Source,
    SourceDocument,
    iter_documents,
    read_source,
)
from policies import DocumentError, Evaluation, Finding, PatchError, Policy, ServiceResolver, evaluate

logger = logging.getLogger(__name__)

ENVOYFILTER_GROUP = "networking.istio.io/"
# What the engine raises for a document it cannot take (malformed shapes deep inside a value).
ENGINE_ERRORS = (DocumentError, PatchError, ValueError, TypeError, KeyError, AttributeError, RecursionError)


@dataclass(frozen=True, slots=True)
class ScanSettings:
    """What one `check` / `fix` run needs: the policy, where ClusterIPs come from, the input size limit."""

    policy: Policy
    resolver: ServiceResolver
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True, slots=True)
class CheckedDocument:
    """A document and, for an EnvoyFilter, the engine's evaluation of it."""

    document: SourceDocument
    evaluation: Evaluation | None


def is_envoyfilter(document: Mapping[str, Any]) -> bool:
    api_version = document.get("apiVersion")
    return (
        document.get("kind") == "EnvoyFilter"
        and isinstance(api_version, str)
        and api_version.startswith(ENVOYFILTER_GROUP)
    )


def _shape_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def envoyfilter_shape_error(document: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why an EnvoyFilter's skeleton is unusable (JSON Pointer, reason), or None when it is usable.

    Only the structure the API server would reject or that makes the filter meaningless: `metadata`
    and `spec` mappings, `spec.configPatches` a list of mappings with mapping `match` / `patch`.
    """
    for key in ("metadata", "spec"):
        if key in document and not isinstance(document[key], Mapping):
            return f"/{key}", f"{key} is {_shape_name(document[key])}, not a mapping"
    spec = document.get("spec")
    if not isinstance(spec, Mapping) or "configPatches" not in spec:
        return None
    patches = spec["configPatches"]
    if not isinstance(patches, list):
        return "/spec/configPatches", f"spec.configPatches is {_shape_name(patches)}, not a list of patches"
    for position, item in enumerate(patches):
        where = f"/spec/configPatches/{position}"
        if not isinstance(item, Mapping):
            return where, f"spec.configPatches[{position}] is {_shape_name(item)}, not a mapping"
        for key in ("match", "patch"):
            if key in item and not isinstance(item[key], Mapping):
                return (
                    f"{where}/{key}",
                    f"spec.configPatches[{position}].{key} is {_shape_name(item[key])}, not a mapping",
                )
    return None


def check_document(document: SourceDocument, settings: ScanSettings) -> CheckedDocument:
    """Evaluate one document; a document the engine cannot take is an `InputError` naming it."""
    if not is_envoyfilter(document.data):
        return CheckedDocument(document, None)
    shape_error = envoyfilter_shape_error(document.data)
    if shape_error is not None:
        pointer, reason = shape_error
        where = f"document {document.index + 1} (line {document.line_of(pointer)})"
        raise InputError(document.file, f"{where}: not a usable EnvoyFilter: {reason}")
    try:
        evaluation = evaluate(document.data, policy=settings.policy, resolver=settings.resolver)
    except ENGINE_ERRORS as exc:
        raise _engine_failure(document, "evaluate", exc) from None
    return CheckedDocument(document, evaluation)


def _engine_failure(document: SourceDocument, action: str, exc: Exception) -> InputError:
    logger.debug("engine failed file=%s document=%d", document.file, document.index, exc_info=True)
    where = f"document {document.index + 1} (line {document.start_line})"
    reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
    return InputError(document.file, f"{where}: cannot {action} this EnvoyFilter: {reason}")


def compute_fix(checked: CheckedDocument) -> CheckedDocument:
    """Have the (lazy) engine compute the fix now, so a failure is an `InputError` naming the document."""
    if checked.evaluation is not None:
        try:
            _ = checked.evaluation.patch
        except ENGINE_ERRORS as exc:
            raise _engine_failure(checked.document, "fix", exc) from None
    return checked


def iter_checked(source: Source, text: str, settings: ScanSettings) -> Iterator[CheckedDocument | InputError]:
    """Every document of one source, evaluated; per-document problems are yielded, a syntax error raised."""
    for item in iter_documents(source, text):
        if isinstance(item, InputError):
            yield item
            continue
        try:
            yield check_document(item, settings)
        except InputError as exc:
            yield exc


def metadata_of(document: Mapping[str, Any]) -> tuple[str | None, str | None]:
    metadata = document.get("metadata")
    if not isinstance(metadata, Mapping):
        return None, None
    namespace, name = metadata.get("namespace"), metadata.get("name")
    return (
        str(namespace) if namespace is not None else None,
        str(name) if name is not None else None,
    )


def locate_findings(document: SourceDocument, findings: Iterable[Finding]) -> DocumentResult:
    """`findings` of one document, each placed on the line of the node its pointer names."""
    namespace, name = metadata_of(document.data)
    located = tuple(LocatedFinding(finding, document.line_of(finding.path)) for finding in findings)
    return DocumentResult(document.file, document.start_line, namespace, name, located)


def check_sources(
    sources: Iterable[Source],
    settings: ScanSettings,
    *,
    stdin: BinaryIO,
    errors: Iterable[InputError] = (),
) -> Report:
    """`check`: evaluate every document of every source; `errors` are earlier problems (path expansion)."""
    results: list[DocumentResult] = []
    problems = list(errors)
    documents = 0
    for source in sources:
        try:
            text = read_source(source, max_bytes=settings.max_bytes, stdin=stdin)
            for item in iter_checked(source, text, settings):
                if isinstance(item, InputError):
                    problems.append(item)
                    continue
                documents += 1
                if item.evaluation is not None:
                    results.append(locate_findings(item.document, item.evaluation.findings))
        except InputError as exc:
            problems.append(exc)
    return Report(tuple(results), tuple(problems), documents)
