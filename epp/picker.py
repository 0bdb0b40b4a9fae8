"""The picker: endpoint health and load as the scraper last saw them, and the per-request choice."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from epp.endpoints import Endpoint
from epp.protocol import Subset
from epp.scorer import LoadSample, ScoreWeights, pick_least_loaded, score_load
from epp.telemetry import EppMetrics

logger = logging.getLogger(__name__)


class Health(enum.StrEnum):
    UNKNOWN = "unknown"  # not scraped yet, or scraping is off: may be picked, by rotation
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class PickerSettings:
    stale_after: float = 3.0  # seconds without a good scrape before an endpoint is unhealthy; 0 = never
    weights: ScoreWeights = field(default_factory=ScoreWeights)
    fallbacks: int = 0  # endpoints listed after the primary, next least loaded first (proxy retries them)
    shed_queue_depth: float | None = (
        None  # shed (429) when every candidate has this many waiting; None = never
    )


PICKED, NO_ENDPOINT, SHED = "picked", "no_endpoint", "shed"


@dataclass(frozen=True, slots=True)
class Choice:
    """One decision: the endpoints (primary first) when picked, else why not and the error to answer."""

    pick: tuple[Endpoint, ...]
    outcome: str = PICKED
    reason: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    endpoint: Endpoint
    health: Health
    sample: LoadSample | None
    score: float | None
    reason: str


@dataclass(slots=True)
class _State:
    endpoint: Endpoint
    health: Health = Health.UNKNOWN
    sample: LoadSample | None = None
    last_ok: float = 0.0
    assigned: int = 0
    base: float | None = None  # the sample's score, computed once per scrape
    reason: str = "not scraped yet"
    engine: str = ""  # the engine-type label ("" = the default engine)
    alone: Choice | None = None  # the decision for this endpoint without fallbacks, built once


class Picker:
    def __init__(
        self,
        settings: PickerSettings,
        *,
        metrics: EppMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._states: dict[Endpoint, _State] = {}
        self._turn = 0
        self._adapters_seen = False  # some endpoint reports LoRA adapters: requests may have affinity
        self.synced = False  # an endpoint set has been given (static, or the first list of discovery)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(self._states)

    def engine_of(self, endpoint: Endpoint) -> str:
        """The endpoint's engine-type label, "" when it has none (the default engine applies)."""
        state = self._states.get(endpoint)
        return state.engine if state else ""

    def set_endpoints(
        self, endpoints: Iterable[Endpoint], *, engines: Mapping[Endpoint, str] | None = None
    ) -> None:
        """Replace the endpoint set; endpoints already known keep their health and load.

        `engines` gives engine-type labels (endpoints it leaves out have none); None keeps the labels.
        """
        wanted = list(dict.fromkeys(endpoints))
        added = [e for e in wanted if e not in self._states]
        removed = [e for e in self._states if e not in wanted]
        self._states = {e: self._states.get(e) or _State(e) for e in wanted}
        if engines is not None:
            for endpoint, state in self._states.items():
                state.engine = engines.get(endpoint, "")
        self.synced = True
        if added or removed:
            logger.info(
                "endpoints changed count=%d added=%s removed=%s",
                len(wanted),
                ",".join(map(str, added)) or "-",
                ",".join(map(str, removed)) or "-",
            )
        for endpoint in removed:
            if self._metrics:
                self._metrics.forget_endpoint(str(endpoint))
        for endpoint in added:
            self._publish(self._states[endpoint])

    def record_sample(self, endpoint: Endpoint, sample: LoadSample | None) -> None:
        """A scrape succeeded; `sample` is None when the endpoint exposes no load metrics."""
        state = self._states.get(endpoint)
        if state is None:
            return
        state.sample = sample
        state.base = (
            None if sample is None else score_load(sample, assigned=0, weights=self._settings.weights)
        )
        state.last_ok = self._clock()
        state.assigned = 0
        if sample is not None and (sample.running_adapters or sample.waiting_adapters):
            self._adapters_seen = True
        self._set_health(state, Health.HEALTHY, "scrape ok" if sample else "scrape ok, no load metrics")
        self._publish(state)

    def record_failure(self, endpoint: Endpoint, reason: str) -> None:
        state = self._states.get(endpoint)
        if state is None:
            return
        state.sample = None
        state.base = None
        self._set_health(state, Health.UNHEALTHY, reason)
        self._publish(state)

    def pick(self) -> Endpoint | None:
        """The primary endpoint of a decision without a subset hint, or None."""
        choice = self.choose()
        return choice.pick[0] if choice.pick else None

    def choose(self, subset: Subset | None = None, model: str | None = None) -> Choice:
        """Decide for one request: the least loaded eligible endpoint, then fallbacks; or a refusal.

        Eligible: healthy (or not scraped yet), and admitted by the request's subset hint if it has one.
        With `model` known and some eligible endpoint serving it as a LoRA adapter, those are preferred.
        Shed when every eligible endpoint reports at least `shed_queue_depth` requests waiting (an endpoint
        without load metrics never counts as saturated).
        """
        settings = self._settings
        stale_after = settings.stale_after
        now = self._clock() if stale_after else 0.0
        per_assigned = settings.weights.assigned
        candidates: list[_State] = []
        loads: list[float | None] = []
        for state in self._states.values():
            if state.health is Health.UNHEALTHY:
                continue
            if stale_after and state.health is Health.HEALTHY and now - state.last_ok > stale_after:
                self._set_health(state, Health.UNHEALTHY, f"no good scrape for {now - state.last_ok:.1f}s")
                self._publish(state)
                continue
            if subset is not None and not subset.admits(state.endpoint):
                continue
            candidates.append(state)
            loads.append(None if state.base is None else state.base + per_assigned * state.assigned)
        if not candidates:
            return self._no_candidate(subset)
        if model is not None and self._adapters_seen:
            serving = [i for i, s in enumerate(candidates) if s.sample and s.sample.has_adapter(model)]
            if serving and len(serving) < len(candidates):
                candidates = [candidates[i] for i in serving]
                loads = [loads[i] for i in serving]
        threshold = settings.shed_queue_depth
        if threshold is not None and all(s.sample and s.sample.waiting >= threshold for s in candidates):
            reason = f"all {len(candidates)} candidate endpoints have {threshold:g} or more requests waiting"
            return Choice((), SHED, reason, "request_shed")
        index = pick_least_loaded(loads, turn=self._turn, tolerance=settings.weights.tie_tolerance)
        self._turn += 1
        assert index is not None  # candidates is not empty
        chosen = candidates[index]
        chosen.assigned += 1
        if settings.fallbacks <= 0 or len(candidates) == 1:
            if chosen.alone is None:
                chosen.alone = Choice((chosen.endpoint,))
            return chosen.alone
        return Choice((chosen.endpoint, *self._fallbacks(candidates, loads, index)))

    def _fallbacks(self, candidates: list[_State], loads: list[float | None], index: int) -> list[Endpoint]:
        """The next best candidates after the primary: least loaded first, else in turn after it."""
        count = len(candidates)
        after = [(index + step) % count for step in range(1, count)]
        if None not in loads:
            after.sort(key=lambda i: loads[i])  # type: ignore[arg-type,return-value]
        return [candidates[i].endpoint for i in after[: self._settings.fallbacks]]

    def _no_candidate(self, subset: Subset | None) -> Choice:
        if subset is None:
            return Choice((), NO_ENDPOINT, "no healthy model-server endpoint", "no_healthy_endpoint")
        if not subset.endpoints and not subset.hosts:
            reason = "the request's subset hint lists no endpoint"
        else:
            reason = f"no endpoint of the request's subset hint is ready: {subset.describe()}"
        return Choice((), NO_ENDPOINT, reason, "no_endpoint_in_subset")

    def statuses(self) -> tuple[EndpointStatus, ...]:
        return tuple(
            EndpointStatus(s.endpoint, s.health, s.sample, s.base, s.reason) for s in self._states.values()
        )

    def _set_health(self, state: _State, health: Health, reason: str) -> None:
        if state.health is not health:
            log = logger.warning if health is Health.UNHEALTHY else logger.info
            log("endpoint health endpoint=%s health=%s reason=%r", state.endpoint, health, reason)
        state.health = health
        state.reason = reason

    def _publish(self, state: _State) -> None:
        if self._metrics is None:
            return
        name = str(state.endpoint)
        self._metrics.endpoint_healthy.labels(name).set(0 if state.health is Health.UNHEALTHY else 1)
        self._metrics.endpoint_score.labels(name).set(state.base if state.base is not None else float("nan"))
