"""Run the policy over inputs: read each source, evaluate every EnvoyFilter, place findings on lines.

This is the part `check` and `fix` share. Nothing here prints; results come back as data (`Report`,
`CheckedDocument`) and every unreadable input as an `InputError`, so one bad file never stops the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

from cli.report import DocumentResult, LocatedFinding, Report
from cli.sources import (
    DEFAULT_MAX_BYTES,
    InputError,
    SkippedInput,
    Source,
    SourceDocument,
    iter_documents,
    read_source,
    template_skip,
)
from policies import (
    ChainResolver,
    DocumentError,
    Evaluation,
    Finding,
    PatchError,
    Policy,
    ServiceAddress,
    ServiceRef,
    ServiceResolver,
    StaticResolver,
    evaluate,
)
from policies.context import EMPTY_CONTEXT, Context, collect_context

logger = logging.getLogger(__name__)

ENVOYFILTER_GROUP = "networking.istio.io/"
# What the engine raises for a document it cannot take (malformed shapes deep inside a value).
ENGINE_ERRORS = (DocumentError, PatchError, ValueError, TypeError, KeyError, AttributeError, RecursionError)


@dataclass(frozen=True, slots=True)
class ScanSettings:
    """What one `check` / `fix` run needs: the policy, where ClusterIPs come from, the input size limit.

    `declared` are the Services given with `--service` (a cluster that reaches one is the EPP's);
    `context` is what the inputs hold besides each judged document (see `with_context`).
    """

    policy: Policy
    resolver: ServiceResolver
    max_bytes: int = DEFAULT_MAX_BYTES
    declared: Mapping[ServiceRef, ServiceAddress] = field(default_factory=dict)
    context: Context = EMPTY_CONTEXT
    strict: bool = False
    """Whether a skipped input (a Helm template) counts as an input error."""


@dataclass(slots=True)
class ParsedSource:
    """One source read and parsed: its text and documents, or the error that stopped it."""

    source: Source
    text: str | None
    items: list[SourceDocument | InputError]
    error: InputError | None = None
    skipped: SkippedInput | None = None

    @property
    def documents(self) -> Iterator[SourceDocument]:
        return (item for item in self.items if isinstance(item, SourceDocument))


def parse_source(source: Source, text: str) -> ParsedSource:
    items: list[SourceDocument | InputError] = []
    try:
        items.extend(iter_documents(source, text))
    except InputError as exc:
        skipped = template_skip(source.name, text)
        if skipped is not None:
            return ParsedSource(source, text, [], skipped=skipped)
        return ParsedSource(source, text, items, exc)
    return ParsedSource(source, text, items)


def with_context(settings: ScanSettings, parsed: Iterable[ParsedSource]) -> ScanSettings:
    """Settings whose context is every document of the inputs given together: EnvoyFilters (clusters and
    overrides another one relies on), Services (their ClusterIP and ports answer like `--service`, after
    it), DestinationRules and InferencePools."""
    objects = collect_context(
        document.data for source in parsed if source.error is None for document in source.documents
    )
    resolver = settings.resolver
    if objects.services:
        resolver = ChainResolver(
            (StaticResolver(settings.declared), StaticResolver(objects.services), settings.resolver)
        )
    policy = settings.policy
    context = Context(
        envoy_filters=objects.envoy_filters,
        inference_pools=objects.inference_pools,
        destination_rules=objects.destination_rules,
        declared=settings.declared,
        root_namespace=policy.root_namespace,
        cluster_domain=policy.cluster_domain,
        settled=True,
    )
    return replace(settings, resolver=resolver, context=context)


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
            # `match:` left empty (null) is an empty match: the API server accepts it, Istio matches all.
            if item.get(key) is not None and not isinstance(item[key], Mapping):
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
        evaluation = evaluate(
            document.data, policy=settings.policy, resolver=settings.resolver, context=settings.context
        )
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


def iter_checked(parsed: ParsedSource, settings: ScanSettings) -> Iterator[CheckedDocument | InputError]:
    """Every document of one parsed source, evaluated; per-document problems are yielded, and the error
    that stopped the parse (a syntax error) is raised after the documents before it."""
    for item in parsed.items:
        if isinstance(item, InputError):
            yield item
            continue
        try:
            yield check_document(item, settings)
        except InputError as exc:
            yield exc
    if parsed.error is not None:
        raise parsed.error


def read_and_parse(
    sources: Iterable[Source], settings: ScanSettings, *, stdin: BinaryIO
) -> list[ParsedSource | InputError]:
    """Read and parse every source first (in order; an unreadable one is its `InputError`), so each
    document is judged with all of them as its context."""
    parsed: list[ParsedSource | InputError] = []
    for source in sources:
        try:
            text = read_source(source, max_bytes=settings.max_bytes, stdin=stdin)
        except InputError as exc:
            parsed.append(exc)
            continue
        parsed.append(parse_source(source, text))
    return parsed


def parsed_only(parsed: Iterable[ParsedSource | InputError]) -> list[ParsedSource]:
    return [item for item in parsed if isinstance(item, ParsedSource)]


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
    skipped: list[SkippedInput] = []
    documents = 0
    parsed = read_and_parse(sources, settings, stdin=stdin)
    settings = with_context(settings, parsed_only(parsed))
    for source in parsed:
        if isinstance(source, InputError):
            problems.append(source)
            continue
        if source.skipped is not None:
            skipped.append(source.skipped)
            continue
        try:
            for item in iter_checked(source, settings):
                if isinstance(item, InputError):
                    problems.append(item)
                    continue
                documents += 1
                if item.evaluation is not None:
                    results.append(locate_findings(item.document, item.evaluation.findings))
        except InputError as exc:
            problems.append(exc)
    return Report(tuple(results), tuple(problems), documents, tuple(skipped), strict=settings.strict)
