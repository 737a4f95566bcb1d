"""Observations read from Postgres itself, over one tagged session per database kept open between readings.

Sessions, waiting sessions, transactions and "a client came and went" come from the statistics
views; CPU and memory come from a `Usage` function the runtime provides (a cgroup, or the process
tree, on this host) and are absent where there is none. The runtime also says where each database
is (`Address`): 127.0.0.1 locally, the pod's address in a cluster.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
import structlog

from controller.api import types, units
from controller.metrics import sessions
from controller.policy.inputs import Observation
from controller.runtime.sql import CONNECT_TIMEOUT_SECONDS, USER

log = structlog.get_logger("metrics.postgres")


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    password: str


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float | None
    """CPU time used so far (a counter); the rate between readings is the CPU used."""
    working_set_bytes: int | None
    cache_bytes: int | None = None
    cpu_periods: int | None = None
    """Scheduler periods so far, and of them those throttled at the limit (counters)."""
    cpu_throttled_periods: int | None = None


AddressOf = Callable[[types.ServerlessDatabase], Address | None]
UsageOf = Callable[[types.ServerlessDatabase], Usage | None]


@dataclass(frozen=True)
class _Counters:
    time: datetime
    cpu_seconds: float | None
    cpu_periods: int | None
    cpu_throttled_periods: int | None
    transactions: int
    sessions_started: int
    own_sessions: int


@dataclass
class _Watch:
    """Per-database state between readings: the open session and the previous counters."""

    address: Address
    connection: psycopg.AsyncConnection[tuple[object, ...]]
    since: datetime
    previous: _Counters | None = None


class PostgresSource:
    name = "postgres"

    def __init__(
        self,
        address: AddressOf,
        *,
        usage: UsageOf | None = None,
        own_sessions: collections.Counter[str] | None = None,
        clock: Callable[[], datetime] = units.now_utc,
    ) -> None:
        self.address = address
        self.usage = usage
        self.own_sessions: collections.Counter[str] = (
            own_sessions if own_sessions is not None else collections.Counter()
        )
        """Sessions the operator opened per database (shared with the runtime), so they are not clients."""
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
            connection = await psycopg.AsyncConnection.connect(
                host=address.host,
                port=address.port,
                user=USER,
                password=address.password,
                dbname="postgres",
                application_name=types.MONITOR_APPLICATION,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                autocommit=True,
            )
            self.own_sessions[db.key] += 1
            watch = _Watch(address=address, connection=connection, since=self.clock())
            self._watches[db.key] = watch
        return watch

    async def _read(self, db: types.ServerlessDatabase) -> Observation | None:
        watch = await self._session(db)
        if watch is None:
            return None
        self.queries += 1
        cursor = await watch.connection.execute(
            sessions.ACTIVITY_SQL, sessions.parameters(db.spec.auto_pause.ignored_applications)
        )
        activity = sessions.parse(await cursor.fetchone())
        now = self.clock()
        usage = self.usage(db) if self.usage is not None else None
        counters = _Counters(
            now,
            usage.cpu_seconds if usage else None,
            usage.cpu_periods if usage else None,
            usage.cpu_throttled_periods if usage else None,
            activity.transactions,
            activity.sessions_started,
            self.own_sessions[db.key],
        )
        previous, watch.previous = watch.previous, counters
        cpu = tps = throttled = None
        came_and_went = False
        if previous is not None:
            elapsed = max((now - previous.time).total_seconds(), 1e-6)
            if counters.cpu_seconds is not None and previous.cpu_seconds is not None:
                cpu = max(counters.cpu_seconds - previous.cpu_seconds, 0.0) / elapsed
            if None not in (
                counters.cpu_periods,
                previous.cpu_periods,
                counters.cpu_throttled_periods,
                previous.cpu_throttled_periods,
            ):
                periods = (counters.cpu_periods or 0) - (previous.cpu_periods or 0)
                hit = (counters.cpu_throttled_periods or 0) - (previous.cpu_throttled_periods or 0)
                throttled = hit / periods if periods > 0 else 0.0
            own = sessions.MONITOR_TRANSACTIONS_PER_READING
            tps = max(counters.transactions - previous.transactions - own, 0) / elapsed
            # Sessions started since the last reading, not by the operator: clients that came and went.
            started = counters.sessions_started - previous.sessions_started
            came_and_went = started - (counters.own_sessions - previous.own_sessions) > 0
        return Observation(
            time=now,
            observing_since=watch.since,
            client_sessions=activity.client_sessions,
            waiting_sessions=activity.waiting_sessions,
            cpu_cores=cpu,
            cpu_throttled=throttled,
            memory_working_set_bytes=usage.working_set_bytes if usage else None,
            memory_cache_bytes=usage.cache_bytes if usage else None,
            transactions_per_second=tps,
            last_activity=now if came_and_went else None,
        )

    async def forget(self, key: str) -> None:
        watch = self._watches.pop(key, None)
        if watch is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await watch.connection.close()

    async def close(self) -> None:
        for key in list(self._watches):
            await self.forget(key)
