"""The picker: endpoint health and load as the scraper last saw them, and the per-request choice."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from epp.endpoints import Endpoint
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

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(self._states)

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the endpoint set; endpoints already known keep their health and load."""
        wanted = list(dict.fromkeys(endpoints))
        added = [e for e in wanted if e not in self._states]
        removed = [e for e in self._states if e not in wanted]
        self._states = {e: self._states.get(e) or _State(e) for e in wanted}
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
        stale_after = self._settings.stale_after
        now = self._clock() if stale_after else 0.0
        per_assigned = self._settings.weights.assigned
        healthy: list[_State] = []
        loads: list[float | None] = []
        for state in self._states.values():
            if state.health is Health.UNHEALTHY:
                continue
            if stale_after and state.health is Health.HEALTHY and now - state.last_ok > stale_after:
                self._set_health(state, Health.UNHEALTHY, f"no good scrape for {now - state.last_ok:.1f}s")
                self._publish(state)
                continue
            healthy.append(state)
            loads.append(None if state.base is None else state.base + per_assigned * state.assigned)
        index = pick_least_loaded(loads, turn=self._turn, tolerance=self._settings.weights.tie_tolerance)
        self._turn += 1
        if index is None:
            return None
        chosen = healthy[index]
        chosen.assigned += 1
        return chosen.endpoint

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
