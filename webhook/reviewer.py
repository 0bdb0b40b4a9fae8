"""Reviews in one call: `Reviewer.review(body, webhook=...)` parses, decides and encodes an AdmissionReview.

The reviewer binds the engine to the server's policy and resolver and keeps a memo of recent answers. Its
result is either an `Answer` (the response body, plus what the metrics and the audit line need) or a
`Refusal` (a body that is not a review: one plain line for an HTTP 4xx). It never raises for a bad body or
a failing engine; `admission.py` holds the pure steps it runs.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from policies import EMPTY_CONTEXT, ContextSource, Evaluation, FixedContext, Policy, ServiceResolver, evaluate
from webhook.admission import (
    AdmissionRequest,
    MalformedReviewError,
    Outcome,
    Verdict,
    Webhook,
    encode_review,
    parse_review,
    review_request,
)

MEMO_SIZE = 256
MEMO_MAX_BODY = 64 * 1024
RESPONSE_PREFIX = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":'

# A `"uid"` member whose value is a plain string: printable ASCII without quotes or escapes, so the bytes
# between the quotes are the value and `json.dumps` spells it the same way.
PLAIN_UID = re.compile(rb'"uid": ?("[\x20\x21\x23-\x5b\x5d-\x7e]+")')

MemoKey = tuple[Webhook, int, int, bytes]


@dataclass(frozen=True, slots=True)
class Answer:
    """A review's verdict and response body, with what the log line and metrics need of the request."""

    webhook: Webhook
    verdict: Verdict
    payload: bytes
    uid: str
    operation: str
    dry_run: bool
    summary: str
    """The log line's fields after the uid (they follow from the body without its uid)."""

    @property
    def outcome(self) -> Outcome:
        return self.verdict.outcome

    @property
    def rules(self) -> tuple[str, ...]:
        return self.verdict.rules

    @property
    def patch_applied(self) -> bool:
        """A patch the apiserver will apply: a dry run gets the same answer but changes nothing."""
        return bool(self.verdict.patch) and not self.dry_run

    def audit_line(self, *, seconds: float) -> str:
        """The one log line per review (the fields after the uid are formatted once per distinct body)."""
        return (
            f"review webhook={self.webhook.value} uid={log_value(self.uid)} {self.summary} "
            f"ms={seconds * 1000:.2f}"
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """A body that is not a review the server can answer: HTTP `status` with one plain line."""

    reason: str
    status: int = 400


Reviewed = Answer | Refusal


@dataclass(frozen=True, slots=True)
class _Memo:
    verdict: Verdict
    tail: bytes
    operation: str
    dry_run: bool
    summary: str


_UNSAFE_IN_LOG = frozenset(' "=\\')


def log_value(text: str) -> str:
    """`text` as one `key=value` field: quoted and escaped when it could forge or split a log line."""
    if text and text.isprintable() and _UNSAFE_IN_LOG.isdisjoint(text):
        return text
    return json.dumps(text)


def summarize(request: AdmissionRequest, verdict: Verdict) -> str:
    """The log line's fields after the uid: the same for every body that differs only in its uid."""
    return (
        f"kind={log_value(request.kind.kind)} object={log_value(request.object_name)} "
        f"operation={log_value(request.operation)} "
        f"dry_run={'true' if request.dry_run else 'false'} result={verdict.outcome.value} "
        f"rules={','.join(verdict.rules) or '-'}"
    )


class Reviewer:
    """Answers reviews; an answer is reused for a body that differs from an earlier one only in its uid.

    A verdict depends only on the request (its body), the policy and the resolver's answers, so it is reused
    while the resolver's `generation` has not moved: the apiserver re-sends the same object on reinvocation,
    and reconcile loops re-apply unchanged filters. The key is the body with its first `"uid":"..."` member
    (a plain string) cut out, plus where it was cut, so two bodies share a key only when nothing but that
    member differs. An answer is remembered only when that member is the request's uid and the only one
    with its value; so a body whose key matches a remembered one is that remembered (valid) review with
    another uid literal, valid too: it is answered before it is parsed (`recall`).
    """

    def __init__(
        self,
        policy: Policy,
        resolver: ServiceResolver,
        *,
        generation: Callable[[], int] = lambda: 0,
        memo_size: int = MEMO_SIZE,
        context: ContextSource | None = None,
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        self._context = context if context is not None else FixedContext(EMPTY_CONTEXT)
        self._resolver_generation = generation
        self._memo: OrderedDict[MemoKey, _Memo] = OrderedDict()
        self._memo_size = memo_size
        self.hits = 0
        self.misses = 0

    def review(self, body: bytes, *, webhook: Webhook) -> Reviewed:
        """Parse, decide and encode one AdmissionReview body. Never raises for what the body holds.

        A body that is not a review is a `Refusal`; an engine failure is a verdict (denied at validate, no
        change at mutate); a denial is an `Answer` with `allowed: false`.
        """
        member = self._uid_member(body)
        if member is not None:
            recalled = self._recall(member, body, webhook)
            if recalled is not None:
                return recalled
        generation = self._generation()  # before the engine reads the resolver
        try:
            request = parse_review(body)
            self.misses += 1
            evaluate_one = self._evaluate_to_fix if webhook is Webhook.MUTATE else self._evaluate
            verdict = review_request(request, webhook=webhook, evaluate=evaluate_one, policy=self.policy)
            payload = encode_review(request, verdict)
        except MalformedReviewError as error:
            return Refusal(error.reason, status=error.status)
        memo = _Memo(verdict, b"", request.operation, request.dry_run, summarize(request, verdict))
        if member is not None and self._is_request_uid(member, request, body):
            head = RESPONSE_PREFIX + member.group(1)
            if payload.startswith(head):
                key = self._key(member, body, webhook, generation)
                self._remember(key, replace(memo, tail=payload[len(head) :]))
        return self._answer_from(memo, webhook, request.uid, payload)

    def recall(self, body: bytes, *, webhook: Webhook) -> Answer | None:
        """The answer to an unparsed body that differs from a remembered one only in its uid, else None."""
        member = self._uid_member(body)
        return self._recall(member, body, webhook) if member is not None else None

    def _generation(self) -> int:
        """Moves whenever a remembered answer may no longer hold: the Services or the context changed."""
        return self._resolver_generation() * 1_000_003 + self._context.generation

    def _evaluate(self, document: Mapping[str, Any], *, fixing_only: bool = False) -> Evaluation:
        metadata = document.get("metadata")
        namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
        context = self._context.context_for(namespace if isinstance(namespace, str) else "")
        return evaluate(
            document, policy=self.policy, resolver=self._resolver, context=context, fixing_only=fixing_only
        )

    def _evaluate_to_fix(self, document: Mapping[str, Any]) -> Evaluation:
        """The mutating webhook's evaluation: it patches and names what it fixed, so only the rules with a
        fix are checked (the validating webhook judges the mutated object with every rule)."""
        return self._evaluate(document, fixing_only=True)

    def _uid_member(self, body: bytes) -> re.Match[bytes] | None:
        """The body's first plain-string `"uid"` member, when the body is one the memo may hold."""
        if self._memo_size <= 0 or len(body) > MEMO_MAX_BODY:
            return None
        return PLAIN_UID.search(body)

    @staticmethod
    def _key(member: re.Match[bytes], body: bytes, webhook: Webhook, generation: int) -> MemoKey:
        at, end = member.span()
        return (webhook, generation, at, body[:at] + body[end:])

    @staticmethod
    def _is_request_uid(member: re.Match[bytes], request: AdmissionRequest, body: bytes) -> bool:
        """Whether the cut member is the request's uid: its value, and no other member spelled with it."""
        literal = member.group(1)
        if literal[1:-1].decode("ascii") != request.uid:
            return False
        return body.count(b'"uid":' + literal) + body.count(b'"uid": ' + literal) == 1

    def _recall(self, member: re.Match[bytes], body: bytes, webhook: Webhook) -> Answer | None:
        if not self._memo:
            return None
        key = self._key(member, body, webhook, self._generation())
        memo = self._memo.get(key)
        if memo is None:
            return None
        self._memo.move_to_end(key)
        self.hits += 1
        literal = member.group(1)
        uid = literal[1:-1].decode("ascii")
        return self._answer_from(memo, webhook, uid, RESPONSE_PREFIX + literal + memo.tail)

    def _remember(self, key: MemoKey, memo: _Memo) -> None:
        self._memo[key] = memo
        if len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)

    @staticmethod
    def _answer_from(memo: _Memo, webhook: Webhook, uid: str, payload: bytes) -> Answer:
        return Answer(
            webhook=webhook,
            verdict=memo.verdict,
            payload=payload,
            uid=uid,
            operation=memo.operation,
            dry_run=memo.dry_run,
            summary=memo.summary,
        )
