"""Observations on this host: Postgres statistics over the operator's own tagged session, plus CPU and
memory from the database's cgroup, or from its process tree where it has no cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import psutil
import psycopg
import structlog

from controller.api import types, units
from controller.metrics import sessions
from controller.policy.inputs import Observation
from controller.runtime.local.postgres import CONNECT_TIMEOUT_SECONDS, SERVER_USER
from controller.runtime.local.runtime import HOST, LocalRuntime

log = structlog.get_logger("metrics.local")


@dataclass(frozen=True)
class _Counters:
    time: datetime
    cpu_seconds: float | None
    transactions: int
    sessions_started: int
    own_sessions: int


@dataclass
class _Watch:
    """Per-database state between readings: the open session and the previous counters."""

    port: int
    connection: psycopg.AsyncConnection[tuple[object, ...]]
    since: datetime
    previous: _Counters | None = None


class LocalSource:
    name = "local"

    def __init__(self, runtime: LocalRuntime, *, clock: Callable[[], datetime] = units.now_utc) -> None:
        self.runtime = runtime
        self.clock = clock
        self._watches: dict[str, _Watch] = {}
        self.queries = 0
        """Statements sent to databases, in total (to show that parked databases cost none)."""

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

    async def _read(self, db: types.ServerlessDatabase) -> Observation | None:
        info = self.runtime.connection_info(db)
        if info is None:
            await self.forget(db.key)
            return None
        port, password = info
        watch = self._watches.get(db.key)
        if watch is not None and (watch.port != port or watch.connection.closed):
            await self.forget(db.key)
            watch = None
        if watch is None:
            connection = await psycopg.AsyncConnection.connect(
                host=HOST,
                port=port,
                user=SERVER_USER,
                password=password,
                dbname="postgres",
                application_name=types.MONITOR_APPLICATION,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                autocommit=True,
            )
            self.runtime.own_sessions[db.key] += 1
            watch = _Watch(port=port, connection=connection, since=self.clock())
            self._watches[db.key] = watch
        self.queries += 1
        cursor = await watch.connection.execute(
            sessions.ACTIVITY_SQL, sessions.parameters(db.spec.auto_pause.ignored_applications)
        )
        activity = sessions.parse(await cursor.fetchone())
        now = self.clock()
        usage = self.runtime.cgroups.usage(self.runtime.cgroup_name(db))
        cpu_seconds: float | None
        working_set: int | None
        if usage is not None:
            cpu_seconds, working_set, cache = usage.cpu_seconds, usage.memory_working_set, usage.memory_cache
        else:
            cpu_seconds, working_set = _process_tree(self.runtime.cluster(db).pid_file())
            cache = 0
        counters = _Counters(
            now,
            cpu_seconds,
            activity.transactions,
            activity.sessions_started,
            self.runtime.own_sessions[db.key],
        )
        previous, watch.previous = watch.previous, counters
        if previous is None:
            return Observation(
                time=now,
                observing_since=watch.since,
                client_sessions=activity.client_sessions,
                waiting_sessions=activity.waiting_sessions,
                memory_working_set_bytes=working_set,
                memory_cache_bytes=cache,
            )
        elapsed = max((now - previous.time).total_seconds(), 1e-6)
        cpu = None
        if cpu_seconds is not None and previous.cpu_seconds is not None:
            cpu = max(cpu_seconds - previous.cpu_seconds, 0.0) / elapsed
        own = sessions.MONITOR_TRANSACTIONS_PER_READING
        tps = max(counters.transactions - previous.transactions - own, 0) / elapsed
        # Sessions started since the last reading that were not the operator's: clients that came and went.
        new_sessions = (counters.sessions_started - previous.sessions_started) - (
            counters.own_sessions - previous.own_sessions
        )
        return Observation(
            time=now,
            observing_since=watch.since,
            client_sessions=activity.client_sessions,
            waiting_sessions=activity.waiting_sessions,
            cpu_cores=cpu,
            memory_working_set_bytes=working_set,
            memory_cache_bytes=cache,
            transactions_per_second=tps,
            last_activity=now if new_sessions > 0 else None,
        )

    async def forget(self, key: str) -> None:
        watch = self._watches.pop(key, None)
        if watch is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await watch.connection.close()

    async def close(self) -> None:
        for key in list(self._watches):
            await self.forget(key)


def _process_tree(pid_lines: list[str] | None) -> tuple[float | None, int | None]:
    """CPU seconds and resident memory of a server's process tree, where it has no cgroup.

    The postmaster reaps its backends, so their CPU time is in its children's counters.
    Shared memory is counted once, not once per process.
    """
    if not pid_lines:
        return None, None
    try:
        postmaster = psutil.Process(int(pid_lines[0]))
        times = postmaster.cpu_times()
        cpu = times.user + times.system + times.children_user + times.children_system
        memory = postmaster.memory_info()
        private = memory.rss - memory.shared
        shared = memory.shared
        for child in postmaster.children():
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                cpu += child_times.user + child_times.system
                child_memory = child.memory_info()
                private += child_memory.rss - child_memory.shared
                shared = max(shared, child_memory.shared)
    except psutil.Error:
        return None, None
    return cpu, private + shared
