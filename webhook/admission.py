"""AdmissionReview (admission.k8s.io/v1) in and out: parse once at the edge, decide, build the response.

Nothing here touches the network, and every step is a plain function that `Reviewer.review` runs in order:
`parse_review` turns bytes into a typed request (or raises `MalformedReviewError`, one plain line),
`review_request` decides a `Verdict` (it never raises: an engine failure is a verdict too), and
`encode_review` puts the verdict on the wire in the shape the apiserver expects. Which reviews are out of
scope (other kinds and operations, the policy's namespaces, the opt-out annotation) is decided in one
place, `skips_evaluation`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from policies import Finding, Level, PatchOp, Policy, ServiceLookupError

logger = logging.getLogger(__name__)

ADMISSION_API_VERSION = "admission.k8s.io/v1"
ISTIO_GROUP = "networking.istio.io"
MAX_WARNING_CHARS = 256
"""The apiserver keeps up to 256 characters of each warning; kubectl prints them as `Warning:` lines."""
MAX_LISTED_FINDINGS = 20


class Webhook(StrEnum):
    MUTATE = "mutate"
    VALIDATE = "validate"


class Outcome(StrEnum):
    """What a review ended in: the `result` label of the metrics and the log line."""

    SKIPPED = "skipped"
    ALLOWED = "allowed"
    PATCHED = "patched"
    DENIED = "denied"
    ERROR = "error"


class AdmissionError(Exception):
    """A request the server refuses to review; `status` is the HTTP status, `reason` one plain line."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class MalformedReviewError(AdmissionError):
    """The body is not an admission.k8s.io/v1 AdmissionReview request."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class GroupVersionKind(_Wire):
    group: str = ""
    version: str = ""
    kind: str


class AdmissionRequest(_Wire):
    uid: str = Field(min_length=1)
    kind: GroupVersionKind
    name: str = ""
    namespace: str = ""
    operation: Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = Field(default=None, alias="oldObject")
    dry_run: bool = Field(default=False, alias="dryRun")

    @property
    def is_envoyfilter(self) -> bool:
        return self.kind.group == ISTIO_GROUP and self.kind.kind == "EnvoyFilter"

    @property
    def object_name(self) -> str:
        """`namespace/name` of the object, for logs (the name may only be in the object on CREATE)."""
        name = self.name
        if not name and self.object is not None:
            metadata = self.object.get("metadata")
            if isinstance(metadata, Mapping):
                name = str(metadata.get("name") or metadata.get("generateName") or "")
        return f"{self.namespace or '-'}/{name or '-'}"


class AdmissionReview(_Wire):
    api_version: Literal["admission.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


def _describe_error(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return f"body is not JSON: {first['msg'].removeprefix('Invalid JSON: ')}"
    location = ".".join(str(part) for part in first["loc"])
    if not location:
        return "body must be a JSON object (an admission.k8s.io/v1 AdmissionReview)"
    if location == "apiVersion":
        return f"apiVersion must be {ADMISSION_API_VERSION!r}"
    if location == "kind":
        return "kind must be 'AdmissionReview'"
    return f"{location}: {first['msg']}"


def parse_review(body: bytes) -> AdmissionRequest:
    """Parse an AdmissionReview body; raise `MalformedReviewError` with one plain line if it is not one."""
    try:
        review = AdmissionReview.model_validate_json(body)
    except ValidationError as error:
        raise MalformedReviewError(_describe_error(error)) from None
    request = review.request
    if request.operation in ("CREATE", "UPDATE") and request.object is None:
        raise MalformedReviewError(f"request.object is required for {request.operation}")
    return request


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision about one review, before it is put on the wire."""

    outcome: Outcome
    allowed: bool = True
    patch: tuple[PatchOp, ...] = ()
    warnings: tuple[str, ...] = ()
    code: int = 200
    message: str = ""
    rules: tuple[str, ...] = ()


class EvaluationResult(Protocol):
    """What the webhook reads of the engine's `Evaluation`."""

    @property
    def applicable(self) -> bool: ...

    @property
    def findings(self) -> tuple[Finding, ...]: ...

    @property
    def patch(self) -> tuple[PatchOp, ...]: ...


Evaluator = Callable[[Mapping[str, Any]], EvaluationResult]
"""The engine with its policy and resolver bound: document in, evaluation out."""


def clip_warning(text: str, limit: int = MAX_WARNING_CHARS) -> str:
    """One line, at most `limit` characters: what the apiserver passes on to kubectl as a warning."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    return line[: max(0, limit - 3)].rstrip() + "..."


def format_warning(finding: Finding) -> str:
    """Rule, path and fix always fit; the explanation gets what is left of the 256 characters."""
    head = clip_warning(f"{finding.rule} {finding.slug} at {finding.path}:", MAX_WARNING_CHARS // 2)
    tail = clip_warning(f"Fix: {finding.fix}", MAX_WARNING_CHARS // 3) if finding.fix else ""
    room = MAX_WARNING_CHARS - len(head) - len(tail) - 2
    message = clip_warning(finding.message, room) if room >= 20 else ""
    return clip_warning(" ".join(part for part in (head, message, tail) if part))


def format_denial(findings: Iterable[Finding], *, object_name: str) -> str:
    """The message kubectl prints after `admission webhook "..." denied the request:`."""
    listed = list(findings)
    ids = ", ".join(sorted({f.rule for f in listed}))
    lines = [f"extproc-guard: envoyfilter {object_name} breaks the ext_proc policy ({ids})"]
    for finding in listed[:MAX_LISTED_FINDINGS]:
        message = " ".join(finding.message.split())
        fix = " ".join(finding.fix.split())
        lines.append(f"- {finding.rule} {finding.slug} at {finding.path}: {message} Fix: {fix}")
    if len(listed) > MAX_LISTED_FINDINGS:
        lines.append(f"- and {len(listed) - MAX_LISTED_FINDINGS} more (run `extproc-guard check` on it)")
    return "\n".join(lines)


def _annotations(document: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = document.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    return annotations if isinstance(annotations, Mapping) else {}


def skips_evaluation(request: AdmissionRequest, *, policy: Policy) -> bool:
    """True when a review is allowed untouched without running the engine. The one place the webhook
    decides that a review is out of its scope:

    - not a CREATE or UPDATE (DELETE and CONNECT carry nothing to check), or no object;
    - not a networking.istio.io EnvoyFilter (by the request's kind);
    - excluded by the policy (`Policy.excludes`): the request's namespace is one of `exclusions.namespaces`
      (the shipped policy lists kube-system and the webhook's own namespace, which the webhook
      configurations' namespaceSelector also keeps the apiserver from sending), or the object carries the
      opt-out annotation set to "true".

    The engine applies the same policy exclusions to the document it is given; `document_of` gives it the
    request's namespace and the object's annotations, so it cannot decide otherwise. What only the engine
    can see (an EnvoyFilter without ext_proc content) comes back as a not-applicable evaluation.
    """
    return (
        request.operation not in ("CREATE", "UPDATE")
        or request.object is None
        or not request.is_envoyfilter
        or policy.excludes(request.namespace, _annotations(request.object))
    )


def document_of(request: AdmissionRequest) -> dict[str, Any]:
    """The object to evaluate, in the request's namespace: filled in when the object leaves it out.

    The request's namespace is where the apiserver stores the object (it refuses an object that names
    another one before admission), and the one `skips_evaluation` judged; the engine sees the same. Only
    `metadata.namespace` may be set (Service names resolve against it); patch paths stay valid for the
    object the apiserver holds because `metadata` itself already exists there.
    """
    document = request.object or {}
    metadata = document.get("metadata")
    if request.namespace and isinstance(metadata, dict) and metadata.get("namespace") != request.namespace:
        return {**document, "metadata": {**metadata, "namespace": request.namespace}}
    return document


def decide_mutation(evaluation: EvaluationResult) -> Verdict:
    """Mutate (an applicable evaluation): the engine's minimal patch (with its provenance annotation), and
    what it fixed as warnings."""
    if not evaluation.patch:
        return Verdict(outcome=Outcome.ALLOWED)
    fixed = [f for f in evaluation.findings if f.fixable and f.level is not Level.OFF]
    rules = tuple(sorted({f.rule for f in fixed}))
    notes = tuple(clip_warning(f"extproc-guard fixed {f.rule} {f.slug} at {f.path}") for f in fixed)
    return Verdict(outcome=Outcome.PATCHED, patch=evaluation.patch, warnings=notes, rules=rules)


def decide_validation(evaluation: EvaluationResult, *, object_name: str) -> Verdict:
    """Validate (an applicable evaluation): deny enforce findings (the object is already mutated), report
    warn findings."""
    enforced = [f for f in evaluation.findings if f.level is Level.ENFORCE]
    warned = [f for f in evaluation.findings if f.level is Level.WARN]
    warnings = tuple(format_warning(f) for f in warned)
    if enforced:
        return Verdict(
            outcome=Outcome.DENIED,
            allowed=False,
            warnings=warnings,
            code=403,
            message=format_denial(enforced, object_name=object_name),
            rules=tuple(sorted({f.rule for f in enforced})),
        )
    return Verdict(outcome=Outcome.ALLOWED, warnings=warnings, rules=tuple(sorted({f.rule for f in warned})))


def review_request(
    request: AdmissionRequest,
    *,
    webhook: Webhook,
    evaluate: Evaluator,
    policy: Policy,
) -> Verdict:
    """Decide one review. Never raises: an engine failure denies at validate and is a no-op at mutate.

    Skipped (allowed untouched) when `skips_evaluation` says so, or when the engine finds nothing it judges.
    """
    if skips_evaluation(request, policy=policy):
        return Verdict(outcome=Outcome.SKIPPED)
    try:
        evaluation = evaluate(document_of(request))
    except ServiceLookupError as error:
        return _failed(webhook, f"extproc-guard cannot check {request.object_name}: {error}", code=403)
    except Exception as error:
        logger.exception("engine failed uid=%s object=%s", request.uid, request.object_name)
        reason = f"extproc-guard could not evaluate {request.object_name}: {type(error).__name__}: {error}"
        return _failed(webhook, reason, code=500)
    if not evaluation.applicable:
        return Verdict(outcome=Outcome.SKIPPED)
    if webhook is Webhook.MUTATE:
        return decide_mutation(evaluation)
    return decide_validation(evaluation, object_name=request.object_name)


def _failed(webhook: Webhook, reason: str, *, code: int) -> Verdict:
    if webhook is Webhook.MUTATE:
        return Verdict(outcome=Outcome.ERROR, warnings=(clip_warning(reason),))
    return Verdict(outcome=Outcome.ERROR, allowed=False, code=code, message=reason)


def encode_patch(ops: Iterable[PatchOp]) -> str:
    """RFC 6902 JSON, base64 (raises ValueError for numbers JSON cannot carry)."""
    text = json.dumps([op.to_json() for op in ops], separators=(",", ":"), allow_nan=False)
    return base64.b64encode(text.encode()).decode("ascii")


def build_response(request: AdmissionRequest, verdict: Verdict) -> dict[str, Any]:
    """The AdmissionReview the apiserver reads: apiVersion, kind and uid echoed."""
    response: dict[str, Any] = {"uid": request.uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        response["status"] = {
            "status": "Failure",
            "reason": "Forbidden" if verdict.code == 403 else "InternalError",
            "code": verdict.code,
            "message": verdict.message,
        }
    if verdict.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = encode_patch(verdict.patch)
    if verdict.warnings:
        response["warnings"] = list(verdict.warnings)
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


def encode_review(request: AdmissionRequest, verdict: Verdict) -> bytes:
    """The response body; a patch holding NaN or Infinity (not JSON) makes it a malformed review."""
    try:
        return json.dumps(build_response(request, verdict), separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        raise MalformedReviewError("the object holds a number JSON cannot carry (NaN or Infinity)") from None
