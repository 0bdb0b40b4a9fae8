"""Run the policy over inputs: read each source, evaluate every EnvoyFilter, place findings on lines.

This is the part `check` and `fix` share. Nothing here prints; results come back as data (`Report`,
`CheckedDocument`) and every unreadable input as an `InputError`, so one bad file never stops the others.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, BinaryIO

from cli.rapidparse import emit_stream, load_stream
from cli.report import DocumentResult, LocatedFinding, Report
from cli.sources import (
    DEFAULT_MAX_BYTES,
    InputError,
    SkippedInput,
    Source,
    SourceDocument,
    iter_documents,
    read_source,
    reads_as_json,
    stream_documents,
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

if TYPE_CHECKING:
    from cli.workshare import CpuSplit

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
    workers: int = 1
    """Processes that may judge documents at once (`check` over many documents; offline resolvers only)."""


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


def parse_source(source: Source, text: str, *, fast: bool = False) -> ParsedSource:
    """`fast`: see `iter_documents` (for `check`; `fix` edits the text through libyaml's marks)."""
    items: list[SourceDocument | InputError] = []
    try:
        items.extend(iter_documents(source, text, fast=fast))
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
    sources: Iterable[Source],
    settings: ScanSettings,
    *,
    stdin: BinaryIO,
    fast: bool = False,
    stats: ScanStats | None = None,
) -> list[ParsedSource | InputError]:
    """Read every source, then parse them (in order; an unreadable one is its `InputError`), so each
    document is judged with all of them as its context. `fast`: see `parse_all`."""
    read: list[tuple[Source, str] | InputError] = []
    for source in sources:
        try:
            read.append((source, read_source(source, max_bytes=settings.max_bytes, stdin=stdin)))
        except InputError as exc:
            read.append(exc)
    texts = [item for item in read if not isinstance(item, InputError)]
    parsed = iter(parse_all(texts, workers=settings.workers if fast else 1, fast=fast, stats=stats))
    return [item if isinstance(item, InputError) else next(parsed) for item in read]


PARALLEL_MIN_CHARACTERS = 1_000_000
"""Below this much text one process parses every input: a worker would cost more than it saves."""


def parse_all(
    texts: Sequence[tuple[Source, str]], *, workers: int, fast: bool, stats: ScanStats | None = None
) -> list[ParsedSource]:
    """Every source parsed (see `parse_source`), in order.

    With `fast`, `workers` > 1 and enough text, this process and `workers - 1` forked ones parse at once,
    taking chunks of sources from one queue (`cli.workshare`). A worker does the first half of the fast
    path (`emit_stream`: rapidyaml's JSON of each document, checked) and sends that back; this process
    loads the JSON (which it would otherwise have to unpickle: the same cost, paid once) and builds the
    documents around it (`stream_documents`, the text is here already); a source the fast path does not
    read (JSON, libyaml's) is parsed here."""
    total = sum(len(text) for _, text in texts)
    if workers < 2 or not fast or total < PARALLEL_MIN_CHARACTERS or not hasattr(os, "fork"):
        return [parse_source(source, text, fast=fast) for source, text in texts]
    chunks = _chunks_by_size([len(text) for _, text in texts], most=total // (workers * CHUNKS_PER_WORKER))
    from cli.workshare import Sending, run_shared  # only for many inputs (import costs a small run time)

    run = run_shared(
        len(chunks),
        lambda number: [parse_source(*texts[index], fast=True) for index in chunks[number]],
        workers=workers,
        sending=Sending(
            lambda number: [_fast_read(*texts[index]) for index in chunks[number]],
            lambda number, sent: [
                _from_fast_read(*texts[index], read) for index, read in zip(chunks[number], sent, strict=True)
            ],
        ),
    )
    if stats is not None:
        stats.reading = run.cpu
    parsed: dict[int, ParsedSource] = {}
    for chunk, results in zip(chunks, run.results, strict=True):
        parsed.update(zip(chunk, results, strict=True))
    return [parsed[index] for index in range(len(texts))]


def _fast_read(source: Source, text: str) -> list[str] | None:
    """A stream the fast path reads, as rapidyaml's JSON of each document; None for any other source."""
    return None if reads_as_json(source, text) else emit_stream(text)


def _from_fast_read(source: Source, text: str, encoded: list[str] | None) -> ParsedSource:
    documents = load_stream(encoded) if encoded is not None else None
    if documents is None:
        return parse_source(source, text, fast=True)
    return ParsedSource(source, text, list(stream_documents(source, text, documents)))


def _chunks_by_size(sizes: Sequence[int], *, most: int) -> list[list[int]]:
    """Indexes of `sizes`, largest first, put together in chunks of up to `most` (one larger alone)."""
    from cli.workshare import MAX_CHUNKS

    most = max(most, -(-2 * sum(sizes) // (MAX_CHUNKS - 1)), 1)  # as in `chunks_by_namespace`
    chunks: list[list[int]] = []
    packed: list[int] = []
    size = 0
    for index in sorted(range(len(sizes)), key=lambda index: -sizes[index]):
        if packed and size + sizes[index] > most:
            chunks.append(packed)
            packed, size = [], 0
        packed.append(index)
        size += sizes[index]
    if packed:
        chunks.append(packed)
    return chunks


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


def locate_findings(
    document: SourceDocument, findings: Iterable[Finding], shared: dict[Finding, Finding] | None = None
) -> DocumentResult:
    """`findings` of one document, each placed on the line of the node its pointer names. With `shared`,
    equal findings (of different documents) become one object: what a worker sends back pickles smaller,
    as pickle writes an object once and then refers to it."""
    namespace, name = metadata_of(document.data)
    if shared is not None:
        findings = [shared.setdefault(finding, finding) for finding in findings]
    located = tuple(LocatedFinding(finding, document.line_of(finding.path)) for finding in findings)
    return DocumentResult(document.file, document.start_line, namespace, name, located)


@dataclass(slots=True)
class SourceOutcome:
    """What judging one parsed source gave: its EnvoyFilters' results, its problems, its document count."""

    results: list[DocumentResult] = field(default_factory=list)
    problems: list[InputError] = field(default_factory=list)
    documents: int = 0


Verdict = DocumentResult | InputError | None
"""One item of a source judged: an EnvoyFilter's result, a problem, or None for another document."""


def judge_item(
    item: SourceDocument | InputError, settings: ScanSettings, shared: dict[Finding, Finding] | None = None
) -> Verdict:
    """One document evaluated, its findings placed on lines (lines are read only for findings); `shared`:
    see `locate_findings`."""
    if isinstance(item, InputError):
        return item
    try:
        checked = check_document(item, settings)
    except InputError as exc:
        return exc
    if checked.evaluation is None:
        return None
    return locate_findings(item, checked.evaluation.findings, shared)


def _outcome(source: ParsedSource, verdicts: Iterable[Verdict]) -> SourceOutcome:
    outcome = SourceOutcome()
    for item, verdict in zip(source.items, verdicts, strict=True):
        if isinstance(verdict, InputError):
            outcome.problems.append(verdict)
            continue
        if isinstance(item, SourceDocument):
            outcome.documents += 1
        if verdict is not None:
            outcome.results.append(verdict)
    if source.error is not None:
        outcome.problems.append(source.error)
    return outcome


def judge_source(source: ParsedSource, settings: ScanSettings) -> SourceOutcome:
    """Every document of one source judged, in order; a syntax error that ended it comes last."""
    return _outcome(source, [judge_item(item, settings) for item in source.items])


@dataclass(slots=True)
class ScanStats:
    """Where a parallel run's CPU time went (for `bench/check_bench.py`): for each part of the run that
    forked workers shared, this process's CPU seconds beside them and each worker's."""

    reading: CpuSplit | None = None
    judging: CpuSplit | None = None

    @property
    def parts(self) -> dict[str, CpuSplit]:
        return {name: part for name, part in (("reading", self.reading), ("judging", self.judging)) if part}


PARALLEL_MIN_DOCUMENTS = 2000
"""Below this many documents one process judges them all: starting workers would cost more than it saves."""

CHUNKS_PER_WORKER = 16
"""About how many chunks each process takes: enough that they finish close together, few enough that a
namespace's documents (and the index of its EnvoyFilters) mostly stay in one process."""

Position = tuple[int, int]
"""(source, item) of a document among the parsed sources."""


def judge_all(
    sources: Sequence[ParsedSource], settings: ScanSettings, stats: ScanStats | None = None
) -> list[SourceOutcome]:
    """Judge every source, in order.

    With `settings.workers` > 1 and enough documents, this process and `workers - 1` forked ones judge
    them at once: each sees the whole context (a worker inherits it) and takes chunks of whole namespaces
    from one queue until none is left (`cli.workshare`), so the index of a namespace's EnvoyFilters is
    mostly built by one process only and the processes finish together. The verdicts come back by
    position and are put in order here; a chunk a worker did not send back is judged here."""
    count = sum(len(source.items) for source in sources)
    workers = settings.workers
    if workers < 2 or count < PARALLEL_MIN_DOCUMENTS or not hasattr(os, "fork"):
        return [judge_source(source, settings) for source in sources]
    chunks = chunks_by_namespace(sources, most=max(1, count // (workers * CHUNKS_PER_WORKER)))
    settings.context.indexed()
    from cli.workshare import Sending, run_shared  # only for many inputs (import costs a small run time)

    shared: dict[Finding, Finding] = {}  # a worker's findings, made one object where equal (to send)
    run = run_shared(
        len(chunks),
        lambda number: [judge_item(sources[index].items[item], settings) for index, item in chunks[number]],
        workers=workers,
        sending=Sending(
            lambda number: [
                judge_item(sources[index].items[item], settings, shared) for index, item in chunks[number]
            ],
            lambda _, verdicts: verdicts,
        ),
    )
    if stats is not None:
        stats.judging = run.cpu
    verdicts: dict[Position, Verdict] = {}
    for chunk, judged in zip(chunks, run.results, strict=True):
        verdicts.update(zip(chunk, judged, strict=True))
    return [
        _outcome(source, [verdicts[(index, item)] for item in range(len(source.items))])
        for index, source in enumerate(sources)
    ]


def chunks_by_namespace(sources: Sequence[ParsedSource], *, most: int) -> list[list[Position]]:
    """Positions of every document once, in chunks of whole namespaces, largest first: a namespace of more
    than `most` documents is cut into nearly equal pieces (in document order), namespaces of a few
    documents are put together up to `most`; among namespaces of the same size in an order that has
    nothing to do with their names (so that `team-0`, `team-2`... do not all come together). `most` is
    raised when the chunks would be more than the queue takes (`MAX_CHUNKS`)."""
    by_namespace: dict[str, list[Position]] = {}
    for index, source in enumerate(sources):
        for item, document in enumerate(source.items):
            namespace = metadata_of(document.data)[0] if isinstance(document, SourceDocument) else None
            by_namespace.setdefault(namespace or "", []).append((index, item))
    total = sum(len(positions) for positions in by_namespace.values())
    from cli.workshare import MAX_CHUNKS

    # a chunk and the namespace that came after it hold over `most`, and so does a piece and its neighbour:
    # there are fewer than 2 * total / most chunks, and one more
    most = max(most, -(-2 * total // (MAX_CHUNKS - 1)))
    ordered = sorted(by_namespace.items(), key=lambda entry: (-len(entry[1]), zlib.crc32(entry[0].encode())))
    chunks: list[list[Position]] = []
    packed: list[Position] = []
    for _, positions in ordered:
        if len(positions) > most:
            pieces = -(-len(positions) // most)
            bounds = [len(positions) * piece // pieces for piece in range(pieces + 1)]
            chunks.extend(positions[begin:end] for begin, end in itertools.pairwise(bounds))
            continue
        if len(packed) + len(positions) > most:
            chunks.append(packed)
            packed = []
        packed.extend(positions)
    if packed:
        chunks.append(packed)
    return chunks


@contextmanager
def collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a run builds its (acyclic) documents and results:
    with every document alive at once, each collection would walk all of them again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            # Move what the run left to the oldest generation unscanned (freeze, then unfreeze): else the
            # first collection after enabling walks every object the run ever made.
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def check_sources(
    sources: Iterable[Source],
    settings: ScanSettings,
    *,
    stdin: BinaryIO,
    errors: Iterable[InputError] = (),
    stats: ScanStats | None = None,
) -> Report:
    """`check`: evaluate every document of every source; `errors` are earlier problems (path expansion).

    Every input is read first, so that each document is judged with all of them as its context."""
    results: list[DocumentResult] = []
    problems = list(errors)
    skipped: list[SkippedInput] = []
    documents = 0
    with collection_paused():
        parsed = read_and_parse(sources, settings, stdin=stdin, fast=True, stats=stats)
        settings = with_context(settings, parsed_only(parsed))
        judged = [source for source in parsed_only(parsed) if source.skipped is None]
        outcomes = iter(judge_all(judged, settings, stats))
        for source in parsed:
            if isinstance(source, InputError):
                problems.append(source)
                continue
            if source.skipped is not None:
                skipped.append(source.skipped)
                continue
            outcome = next(outcomes)
            results.extend(outcome.results)
            problems.extend(outcome.problems)
            documents += outcome.documents
    return Report(tuple(results), tuple(problems), documents, tuple(skipped), strict=settings.strict)
