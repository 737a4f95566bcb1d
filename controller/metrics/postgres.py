"""Observations read from Postgres itself, over one tagged session per database kept open between readings.

Sessions, waiting sessions, transactions and "a client came and went" come from the statistics
views; CPU and memory come from a `Usage` function the assembly provides (a cgroup, or the process
tree, on this host) and are absent where there is none. Where each database is comes from an
`address` function: 127.0.0.1 locally, the pod's address in a cluster. Clients that Postgres cannot
show yet, those still negotiating their startup at an activator or held there for a wake, come from
a `pending` function the assembly provides (the in-process activator's count, locally): while there
are any, the reading says a client was active at its time, so an idle wait starts again after them
and a pause's recheck cancels the pause.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
import structlog

from controller.api import types, units
from controller.metrics import counters
from controller.policy.inputs import Observation
from controller.postgres import activity
from controller.postgres.sessions import Address, OperatorSessions
from controller.postgres.usage import Usage

log = structlog.get_logger("metrics.postgres")


AddressOf = Callable[[types.ServerlessDatabase], Address | None]
UsageOf = Callable[[types.ServerlessDatabase], Usage | None]
PendingOf = Callable[[str], int]
"""Clients of a database (by key) on their way to it that Postgres does not show yet."""


@dataclass(frozen=True)
class _Reading:
    """The counters of one reading, kept for the next."""

    time: float
    usage: Usage | None
    activity: activity.Activity
    own_sessions: int


@dataclass
class _Watch:
    """Per-database state between readings: the open session and the previous reading."""

    address: Address
    connection: psycopg.AsyncConnection[tuple[object, ...]]
    since: datetime
    previous: _Reading | None = None


def _pair(before: float | None, after: float | None, *, at: tuple[float, float]) -> list[counters.Sample]:
    return [] if before is None or after is None else [(at[0], before), (at[1], after)]


class PostgresSource:
    name = "postgres"

    def __init__(
        self,
        address: AddressOf,
        *,
        sessions: OperatorSessions,
        usage: UsageOf | None = None,
        pending: PendingOf | None = None,
        clock: Callable[[], datetime] = units.now_utc,
    ) -> None:
        self.address = address
        self.sessions = sessions
        """The operator's sessions (shared with the runtime), so its own are never read as clients."""
        self.usage = usage
        self.pending = pending
        self.clock = clock
        self._watches: dict[str, _Watch] = {}
        self.queries = 0
        """Statements sent to databases, in total."""

    async def observe(self, dbs: Sequence[types.ServerlessDatabase]) -> Mapping[str, Observation]:
        results = await asyncio.gather(*(self._observe_one(db) for db in dbs))
        return {db.key: obs for db, obs in zip(dbs, results, strict=True) if obs is not None}

    async def _observe_one(self, db: types.ServerlessDatabase) -> Observation | None:
        try:
            return await self._read(db)
        except (psycopg.Error, OSError) as error:
            log.info("observation failed", database=db.key, error=str(error))
            await self.forget(db.key)
            return None

    async def _session(self, db: types.ServerlessDatabase) -> _Watch | None:
        address = self.address(db)
        watch = self._watches.get(db.key)
        if watch is not None and (watch.address != address or watch.connection.closed):
            await self.forget(db.key)
            watch = None
        if address is None:
            return None
        if watch is None:
            connection = await self.sessions.connect_async(db.key, address)
            watch = _Watch(address=address, connection=connection, since=self.clock())
            self._watches[db.key] = watch
        return watch

    async def _read(self, db: types.ServerlessDatabase) -> Observation | None:
        watch = await self._session(db)
        if watch is None:
            return None
        self.queries += 1
        cursor = await watch.connection.execute(
            activity.ACTIVITY_SQL, activity.parameters(db.spec.auto_pause.ignored_applications)
        )
        now = self.clock()
        reading = _Reading(
            time=now.timestamp(),
            usage=self.usage(db) if self.usage is not None else None,
            activity=activity.parse(await cursor.fetchone()),
            own_sessions=self.sessions.opened(db.key),
        )
        previous, watch.previous = watch.previous, reading
        cpu = tps = throttled = lag = None
        came_and_went = False
        if previous is not None:
            # A rate between two readings describes the middle of the interval, half of it ago.
            lag = timedelta(seconds=(reading.time - previous.time) / 2)
            at = (previous.time, reading.time)
            before, after = previous.usage or Usage(None, None), reading.usage or Usage(None, None)
            cpu = counters.rate(_pair(before.cpu_seconds, after.cpu_seconds, at=at))
            throttled = counters.share(
                _pair(before.cpu_throttled_periods, after.cpu_throttled_periods, at=at),
                _pair(before.cpu_periods, after.cpu_periods, at=at),
            )
            tps = counters.rate(
                _pair(previous.activity.transactions, reading.activity.transactions, at=at),
                own_per_interval=activity.MONITOR_TRANSACTIONS_PER_READING,
            )
            # Sessions started since the last reading, not by the operator: clients that came and went.
            started = reading.activity.sessions_started - previous.activity.sessions_started
            came_and_went = started - (reading.own_sessions - previous.own_sessions) > 0
        pending = self.pending is not None and self.pending(db.key) > 0
        usage = reading.usage
        return Observation(
            time=now,
            observing_since=watch.since,
            client_sessions=reading.activity.client_sessions,
            waiting_sessions=reading.activity.waiting_sessions,
            cpu_cores=cpu,
            cpu_throttled=throttled,
            memory_working_set_bytes=usage.working_set_bytes if usage else None,
            memory_cache_bytes=usage.cache_bytes if usage else None,
            transactions_per_second=tps,
            last_activity=now if came_and_went or pending else None,
            lag=lag,
        )

    async def forget(self, key: str) -> None:
        watch = self._watches.pop(key, None)
        if watch is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await watch.connection.close()

    async def close(self) -> None:
        for key in list(self._watches):
            await self.forget(key)
