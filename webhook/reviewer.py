"""Reviews: the engine bound to the server's policy and resolver, and a memo of recent answers."""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from policies import Evaluation, Policy, ServiceResolver, evaluate
from webhook.admission import AdmissionRequest, Verdict, Webhook, encode_review, review_request

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

    verdict: Verdict
    payload: bytes
    uid: str
    operation: str
    dry_run: bool
    summary: str
    """The log line's fields after the uid (they follow from the body without its uid)."""


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
    and reconcile loops re-apply unchanged filters. The key is the body with its one `"uid":"..."` member
    cut out, plus where it was cut, so two bodies share a key only when nothing but the uid differs.

    `recall` finds such a body before it is parsed: a body whose key matches a remembered one is that
    remembered (valid) review with another string literal where its uid was, so it is valid too and needs
    no parsing; anything else goes through `parse_review` and `answer`.
    """

    def __init__(
        self,
        policy: Policy,
        resolver: ServiceResolver,
        *,
        generation: Callable[[], int] = lambda: 0,
        memo_size: int = MEMO_SIZE,
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        self._generation = generation
        self._memo: OrderedDict[MemoKey, _Memo] = OrderedDict()
        self._memo_size = memo_size
        self.hits = 0
        self.misses = 0

    def evaluate(self, document: Mapping[str, Any]) -> Evaluation:
        return evaluate(document, policy=self.policy, resolver=self._resolver)

    def recall(self, body: bytes, *, webhook: Webhook) -> Answer | None:
        """The answer to an unparsed body that differs from a remembered one only in its uid, else None."""
        if not self._memo or len(body) > MEMO_MAX_BODY:
            return None
        match = PLAIN_UID.search(body)
        if match is None:
            return None
        at, end = match.span()
        memo = self._remembered((webhook, self._generation(), at, body[:at] + body[end:]))
        if memo is None:
            return None
        literal = match.group(1)
        return self._answer_from(memo, literal[1:-1].decode("ascii"), RESPONSE_PREFIX + literal + memo.tail)

    def answer(self, request: AdmissionRequest, *, webhook: Webhook, body: bytes) -> Answer:
        """The verdict and the response body; raises `MalformedReviewError` for a patch JSON cannot carry."""
        uid = json.dumps(request.uid).encode()
        key = self._key(uid, webhook, body)
        cached = self._remembered(key) if key is not None else None
        if cached is not None:
            return self._answer_from(cached, request.uid, RESPONSE_PREFIX + uid + cached.tail)
        self.misses += 1
        verdict = review_request(request, webhook=webhook, evaluate=self.evaluate, policy=self.policy)
        payload = encode_review(request, verdict)
        memo = _Memo(verdict, b"", request.operation, request.dry_run, summarize(request, verdict))
        head = RESPONSE_PREFIX + uid
        if key is not None and payload.startswith(head):
            self._memo[key] = replace(memo, tail=payload[len(head) :])
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        return self._answer_from(memo, request.uid, payload)

    def _remembered(self, key: MemoKey) -> _Memo | None:
        """The memo under `key`, counted as a hit and kept as the most recently used."""
        memo = self._memo.get(key)
        if memo is not None:
            self._memo.move_to_end(key)
            self.hits += 1
        return memo

    @staticmethod
    def _answer_from(memo: _Memo, uid: str, payload: bytes) -> Answer:
        return Answer(
            verdict=memo.verdict,
            payload=payload,
            uid=uid,
            operation=memo.operation,
            dry_run=memo.dry_run,
            summary=memo.summary,
        )

    def _key(self, uid: bytes, webhook: Webhook, body: bytes) -> MemoKey | None:
        if self._memo_size <= 0 or len(body) > MEMO_MAX_BODY:
            return None
        for token in (b'"uid":' + uid, b'"uid": ' + uid):
            at = body.find(token)
            if at >= 0:
                if body.find(token, at + 1) >= 0:
                    return None  # more than once: do not guess which is the request's
                return (webhook, self._generation(), at, body[:at] + body[at + len(token) :])
        return None
