"""Leader election on a coordination.k8s.io/v1 Lease, so two operator replicas never act at once.

The algorithm is client-go's: a candidate takes the Lease when it is absent, expired, or its own, by
an update carrying the resourceVersion it read (a 409 means someone else won); the leader renews it
every retry period and gives up leading when it cannot renew within the renew deadline. On a clean
stop the leader releases the Lease so a standby takes over at once.

Written here rather than taken from `kubernetes.leaderelection` because that one runs blocking
threads that cannot be stopped or release the Lease, which an asyncio operator needs to do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from controller.api import units
from controller.runtime.kubernetes import client as kc

log = structlog.get_logger("leader")


@dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


class LeaderElector:
    def __init__(
        self,
        kube: kc.Kube,
        *,
        name: str,
        namespace: str,
        identity: str,
        timing: Timing = Timing(),
        clock: Callable[[], datetime] = units.now_utc,
    ) -> None:
        self.kube = kube
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.timing = timing
        self.clock = clock
        self.leading = asyncio.Event()
        self.lost = asyncio.Event()
        self._last_renew: float | None = None

    async def run(self) -> None:
        """Campaign until leading, then renew; sets `lost` and returns when leadership is lost."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                held = await asyncio.to_thread(self._try_acquire_or_renew)
            except (kc.ApiError, OSError) as error:
                log.info("lease check failed", lease=self.name, error=str(error))
                held = False
            now = loop.time()
            if held:
                self._last_renew = now
                if not self.leading.is_set():
                    log.info("became the leader", lease=self.name, identity=self.identity)
                    self.leading.set()
            elif self.leading.is_set() and (
                self._last_renew is None or now - self._last_renew > self.timing.renew_deadline
            ):
                log.warning("lost the lease", lease=self.name, identity=self.identity)
                self.leading.clear()
                self.lost.set()
                return
            await asyncio.sleep(self.timing.retry_period)

    def _try_acquire_or_renew(self) -> bool:
        now = self.clock()
        lease = self.kube.get(kc.LEASES, self.namespace, self.name)
        if lease is None:
            with contextlib.suppress(kc.ApiError):
                self.kube.create(kc.LEASES, self._lease(now, acquired=now, transitions=0))
                return True
            return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renewed = spec.get("renewTime")
        duration = float(spec.get("leaseDurationSeconds") or self.timing.lease_duration)
        expired = renewed is None or units.parse_time(renewed) + timedelta(seconds=duration) < now
        if holder and holder != self.identity and not expired:
            return False
        ours = holder == self.identity
        acquired = units.parse_time(spec["acquireTime"]) if ours and spec.get("acquireTime") else now
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        body = self._lease(now, acquired=acquired, transitions=transitions)
        body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
        try:
            self.kube.replace(kc.LEASES, body)
        except kc.ApiError as error:
            if error.conflict:
                return False
            raise
        return True

    def _lease(self, now: datetime, *, acquired: datetime, transitions: int) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.timing.lease_duration),
                "acquireTime": units.format_time(acquired),
                "renewTime": units.format_time(now),
                "leaseTransitions": transitions,
            },
        }

    async def release(self) -> None:
        """Give the Lease up (a standby takes over without waiting for it to expire)."""
        if not self.leading.is_set():
            return
        self.leading.clear()

        def give_up() -> None:
            lease = self.kube.get(kc.LEASES, self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            self.kube.replace(kc.LEASES, lease)

        with contextlib.suppress(kc.ApiError, OSError):
            await asyncio.to_thread(give_up)
