"""Stateful fakes of the reconciler's collaborators, for the tests.

Each keeps the state a real one would (storage, compute, routes, stored objects) and records the
calls it got, so a test asserts on behaviour (what exists, what was asked) rather than on a script.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from controller.api import types, units
from controller.policy.inputs import Compute, ComputeState, Observation, Route
from controller.runtime.base import Event, EventType, StepError, invalid_status


@dataclass
class FakeCompute:
    storage: bool = False
    compute: Compute = Compute.ABSENT
    route: Route = Route.ACTIVATOR
    capacity: float | None = None
    settings: float | None = None
    """The capacity whose reloadable settings the running server has."""
    starts: int = 0


class FakeRuntime:
    """A runtime whose "servers" are records: start makes one running, stop stops it, and so on."""

    name = "fake"

    def __init__(self, *, limits_enforced: bool = True) -> None:
        self.databases: dict[str, FakeCompute] = {}
        self.calls: list[tuple[str, str]] = []
        self.failures: dict[tuple[str, str], StepError] = {}
        """(action, key) -> the error that action raises for that key until removed."""
        self.start_ready = True
        """False: a start leaves the compute Starting until `become_ready`."""
        self.limits_enforced = limits_enforced
        self.opened = self.closed = False

    def _db(self, key: str) -> FakeCompute:
        return self.databases.setdefault(key, FakeCompute())

    def _call(self, action: str, key: str) -> FakeCompute:
        self.calls.append((action, key))
        failure = self.failures.get((action, key))
        if failure is not None:
            raise failure
        return self._db(key)

    def calls_for(self, key: str) -> list[str]:
        return [action for action, k in self.calls if k == key]

    def become_ready(self, key: str) -> None:
        self._db(key).compute = Compute.RUNNING

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    async def observe(self, db: types.ServerlessDatabase) -> ComputeState:
        self.calls.append(("observe", db.key))
        state = self._db(db.key)
        return ComputeState(
            storage=state.storage,
            compute=state.compute,
            route=state.route,
            capacity=state.capacity if state.compute is Compute.RUNNING else None,
            incarnation=f"start-{state.starts}" if state.compute is Compute.RUNNING else "",
            limits_enforced=self.limits_enforced,
            limits_message="" if self.limits_enforced else "fake: limits are advisory",
            endpoint=f"fake:{db.metadata.name}",
        )

    async def create_storage(self, db: types.ServerlessDatabase) -> None:
        self._call("create_storage", db.key).storage = True

    async def start(self, db: types.ServerlessDatabase, capacity: float) -> None:
        state = self._call("start", db.key)
        state.compute = Compute.RUNNING if self.start_ready else Compute.STARTING
        state.capacity = capacity
        state.starts += 1

    async def provision(self, db: types.ServerlessDatabase) -> None:
        state = self._call("provision", db.key)
        if state.compute is Compute.ABSENT:
            state.compute = Compute.STOPPED

    async def route(self, db: types.ServerlessDatabase, route: Route) -> None:
        self._call(f"route_{route.value.lower()}", db.key).route = route

    async def stop(self, db: types.ServerlessDatabase, *, resume_at: float) -> None:
        state = self._call("stop", db.key)
        state.compute, state.capacity, state.settings = Compute.STOPPED, None, None

    async def release(self, db: types.ServerlessDatabase) -> None:
        state = self._call("release", db.key)
        state.compute, state.capacity = Compute.ABSENT, None

    async def configure(self, db: types.ServerlessDatabase, capacity: float, *, access: bool) -> None:
        self._call("configure", db.key).settings = capacity

    async def resize(self, db: types.ServerlessDatabase, capacity: float) -> None:
        state = self._call("resize", db.key)
        state.capacity = state.settings = capacity

    async def delete(self, db: types.ServerlessDatabase, *, keep_storage: bool) -> None:
        state = self._call("delete", db.key)
        state.compute, state.route, state.capacity = Compute.ABSENT, Route.ACTIVATOR, None
        if not keep_storage:
            del self.databases[db.key]


class FakeMetrics:
    """Readings that tests set per database; a database without one has no fresh data.

    With a clock, each reading is stamped with the time it is handed out, as a real source's would be.
    """

    name = "fake"

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.clock = clock
        self.readings: dict[str, Observation] = {}
        self.asked: collections.Counter[str] = collections.Counter()
        self.forgotten: list[str] = []

    async def observe(self, dbs: Sequence[types.ServerlessDatabase]) -> Mapping[str, Observation]:
        for db in dbs:
            self.asked[db.key] += 1
        out = {db.key: self.readings[db.key] for db in dbs if db.key in self.readings}
        if self.clock is not None:
            out = {key: replace(reading, time=self.clock()) for key, reading in out.items()}
        return out

    async def forget(self, key: str) -> None:
        self.forgotten.append(key)

    async def close(self) -> None:
        pass


@dataclass
class MemoryStore:
    """The Store interface over a dict, with a change feed and counts of status writes."""

    objects: dict[str, types.ServerlessDatabase] = field(default_factory=dict)
    events: dict[str, list[Event]] = field(default_factory=lambda: collections.defaultdict(list))
    status_writes: collections.Counter[str] = field(default_factory=collections.Counter)
    _changes: asyncio.Queue[str] | None = None

    def put(self, db: types.ServerlessDatabase) -> None:
        self.objects[db.key] = db
        self._notify(db.key)

    def _notify(self, key: str) -> None:
        if self._changes is not None:
            self._changes.put_nowait(key)

    async def list(self) -> Sequence[types.ServerlessDatabase]:
        return list(self.objects.values())

    async def all_keys(self) -> Sequence[str]:
        return list(self.objects)

    def read_spec(self, key: str) -> types.DatabaseSpec | None:
        db = self.objects.get(key)
        return None if db is None else db.spec

    async def get(self, key: str) -> types.ServerlessDatabase | None:
        return self.objects.get(key)

    async def write_status(self, db: types.ServerlessDatabase, status: types.DatabaseStatus) -> None:
        if status == db.status or db.key not in self.objects:
            return
        self.status_writes[db.key] += 1
        self.objects[db.key] = replace(self.objects[db.key], status=status)

    async def record_event(
        self, db: types.ServerlessDatabase, type: EventType, reason: str, message: str
    ) -> None:
        now = units.now_utc()
        self.events[db.key].append(Event(type, reason, message, now, now))

    async def mark_invalid(self, key: str, message: str, now: datetime) -> None:
        db = self.objects.get(key)
        if db is not None:
            self.objects[key] = replace(db, status=invalid_status(db.status, message, now))

    async def request_wake(self, key: str) -> str:
        db = self.objects[key]
        token = f"wake-{len(self.events[key])}-{len(db.metadata.annotations)}-{id(db)}"
        annotations = {**db.metadata.annotations, types.WAKE_ANNOTATION: token}
        self.put(replace(db, metadata=replace(db.metadata, annotations=annotations), wake_request=token))
        return token

    async def set_finalizer(self, db: types.ServerlessDatabase, present: bool) -> None:
        current = self.objects.get(db.key)
        if current is None:
            return
        if not present and current.metadata.deletion_timestamp is not None:
            del self.objects[db.key]
            return
        rest = tuple(f for f in current.metadata.finalizers if f != types.FINALIZER)
        finalizers = (*rest, types.FINALIZER) if present else rest
        self.objects[db.key] = replace(current, metadata=replace(current.metadata, finalizers=finalizers))

    async def changes(self) -> AsyncIterator[tuple[str, types.ServerlessDatabase | None]]:
        self._changes = asyncio.Queue()
        while True:
            key = await self._changes.get()
            yield key, self.objects.get(key)

    def reasons(self, key: str) -> builtins.list[str]:
        return [e.reason for e in self.events[key]]
