"""Leader election with a coordination.k8s.io/v1 Lease: only the holder writes.

`LeaseElector.step()` is one blocking round (run it with `asyncio.to_thread`): read the Lease; create it if
absent; renew it if we hold it; take it over if it is free (no holder) or its holder has not renewed it for
`duration_seconds`, measured on our own clock since we last saw the record change (clocks of different
nodes are never compared). Every write carries the resourceVersion read, so two replicas racing for the
Lease cannot both win: the loser gets 409.

`holds()` is what guards every write of the reconciler: true only while the last successful renewal is
younger than `renew_deadline_seconds` (shorter than the duration others wait), so a replica cut off from
the API stops writing before another may take over. `release()` hands the Lease over at once on shutdown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from reconciler.api import LEASES, ConflictError, KubeAPIError, KubeObjects, NotFoundError
from reconciler.events import micro_time
from reconciler.settings import LeaseSettings

logger = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _record(spec: Mapping[str, Any]) -> tuple[str, str, int, int]:
    return (
        str(spec.get("holderIdentity") or ""),
        str(spec.get("renewTime") or ""),
        int(spec.get("leaseTransitions") or 0),
        int(spec.get("leaseDurationSeconds") or 0),
    )


class LeaseElector:
    def __init__(
        self,
        kube: KubeObjects,
        settings: LeaseSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._clock = clock
        self._wall = wall
        self._observed: tuple[str, str, int, int] | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None
        self._leader = False

    @property
    def identity(self) -> str:
        return self._settings.identity

    def holds(self) -> bool:
        """True while this replica may write: it holds the Lease and renewed it recently enough."""
        if not self._leader or self._renewed_at is None:
            return False
        return self._clock() - self._renewed_at < self._settings.renew_deadline_seconds

    def step(self) -> bool:
        """One election round; returns `holds()` afterwards."""
        settings = self._settings
        now = self._clock()
        try:
            lease = self._kube.get_object(LEASES, settings.namespace, settings.name)
        except NotFoundError:
            return self._create(now)
        except KubeAPIError as error:
            logger.warning("lease %s/%s: %s", settings.namespace, settings.name, error)
            return self.holds()
        spec = lease.get("spec") or {}
        record = _record(spec)
        if record != self._observed:
            self._observed, self._observed_at = record, now
        holder, _renew, transitions, duration = record
        if holder and holder != settings.identity:
            wait = duration or settings.duration_seconds
            if self._observed_at + wait > now:
                self._lose(f"held by {holder}")
                return False
            logger.info(
                "lease %s/%s: %s stopped renewing; taking over", settings.namespace, settings.name, holder
            )
        mine = holder == settings.identity
        stamp = micro_time(self._wall())
        lease_spec = dict(spec)
        lease_spec.update(
            holderIdentity=settings.identity,
            leaseDurationSeconds=settings.duration_seconds,
            renewTime=stamp,
            acquireTime=spec.get("acquireTime") if mine and spec.get("acquireTime") else stamp,
            leaseTransitions=transitions if mine else transitions + 1,
        )
        body = {**lease, "spec": lease_spec}
        try:
            written = self._kube.replace_object(LEASES, body)
        except ConflictError:
            self._lose("another replica wrote the Lease first")
            return False
        except KubeAPIError as error:
            logger.warning("lease %s/%s: renew failed: %s", settings.namespace, settings.name, error)
            return self.holds()
        self._win(written, now)
        return True

    def _create(self, now: float) -> bool:
        settings = self._settings
        stamp = micro_time(self._wall())
        body = {
            "apiVersion": LEASES.api_version,
            "kind": "Lease",
            "metadata": {"name": settings.name, "namespace": settings.namespace},
            "spec": {
                "holderIdentity": settings.identity,
                "leaseDurationSeconds": settings.duration_seconds,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        }
        try:
            written = self._kube.create_object(LEASES, settings.namespace, body)
        except ConflictError:
            self._lose("another replica created the Lease first")
            return False
        except KubeAPIError as error:
            logger.warning("lease %s/%s: create failed: %s", settings.namespace, settings.name, error)
            return False
        self._win(written, now)
        return True

    def _win(self, written: Mapping[str, Any], now: float) -> None:
        if not self._leader:
            logger.info(
                "lease %s/%s acquired identity=%s",
                self._settings.namespace,
                self._settings.name,
                self.identity,
            )
        self._leader = True
        self._renewed_at = now
        self._observed = _record(written.get("spec") or {})
        self._observed_at = now

    def _lose(self, why: str) -> None:
        if self._leader:
            logger.warning(
                "lease %s/%s lost identity=%s: %s",
                self._settings.namespace,
                self._settings.name,
                self.identity,
                why,
            )
        self._leader = False
        self._renewed_at = None

    def release(self) -> bool:
        """Give the Lease up (empty holder, 1 s duration) so another replica takes over at once."""
        settings = self._settings
        if not self._leader:
            return False
        self._leader = False
        self._renewed_at = None
        try:
            lease = self._kube.get_object(LEASES, settings.namespace, settings.name)
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != settings.identity:
                return False
            spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=micro_time(self._wall()))
            self._kube.replace_object(LEASES, {**lease, "spec": spec})
        except KubeAPIError as error:
            logger.warning("lease %s/%s: release failed: %s", settings.namespace, settings.name, error)
            return False
        logger.info("lease %s/%s released identity=%s", settings.namespace, settings.name, self.identity)
        return True
