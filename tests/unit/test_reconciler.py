"""The reconciler over the in-package fakes: status, events, convergence after a crash, and parked costs."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from support.fakes import FakeCompute, FakeMetrics, FakeRuntime, MemoryStore

from controller.api import types
from controller.policy.inputs import Compute, Observation, Route, Tuning
from controller.reconciler.loop import Reconciler
from controller.runtime.base import TransientError


class Clock:
    """Time that a test moves, and that moves on by a millisecond at each reading, as a real one would."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Listener:
    def __init__(self) -> None:
        self.ready_keys: list[str] = []
        self.failures: list[tuple[str, str]] = []

    def ready(self, key: str) -> None:
        self.ready_keys.append(key)

    def failed(self, key: str, message: str) -> None:
        self.failures.append((key, message))


def new_db(name: str = "orders", **spec_changes: object) -> types.ServerlessDatabase:
    spec = replace(
        types.DatabaseSpec(),
        auto_pause=types.AutoPauseSpec(idle_after=timedelta(seconds=60)),
        auto_park=types.AutoParkSpec(idle_after=timedelta(hours=1)),
    )
    return types.ServerlessDatabase(
        metadata=types.ObjectMeta(name=name, namespace="shop", generation=1, finalizers=(types.FINALIZER,)),
        spec=replace(spec, **spec_changes),  # type: ignore[arg-type]
    )


class World:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.runtime = FakeRuntime()
        self.clock = Clock()
        self.metrics = FakeMetrics(self.clock)
        self.listener = Listener()
        self.reconciler = self.fresh_reconciler()

    def fresh_reconciler(self) -> Reconciler:
        """A new operator process: nothing in memory, the same world."""
        return Reconciler(
            store=self.store,
            runtime=self.runtime,
            metrics=self.metrics,
            clock=self.clock,
            listener=self.listener,
            tuning=Tuning(),
        )

    def reading(self, key: str, sessions: int = 0, cpu: float = 0.0) -> None:
        self.metrics.readings[key] = Observation(
            time=self.clock.now,
            observing_since=self.clock.now - timedelta(hours=1),
            client_sessions=sessions,
            cpu_cores=cpu,
            memory_working_set_bytes=0,
        )
        self.reconciler.observations[key] = self.metrics.readings[key]

    async def active_then_idle(self, key: str = "shop/orders") -> None:
        """A new database brought to Active, then left without clients past its idleAfter (60 s)."""
        self.store.put(new_db())
        while self.store.objects[key].status.phase is not types.Phase.ACTIVE:
            await self.reconcile(key)
        self.clock.advance(61)
        self.reading(key)

    async def reconcile(self, key: str) -> types.ServerlessDatabase:
        await self.reconciler.reconcile(key)
        return self.store.objects[key]


async def test_a_new_database_becomes_active_with_one_status_write_per_reconcile() -> None:
    world = World()
    world.store.put(new_db())
    db = await world.reconcile("shop/orders")
    # create storage, start, its size's settings, route: four steps in one pass, one status write for them
    steps = [a for a in world.runtime.calls_for("shop/orders") if a != "observe"]
    assert steps == ["create_storage", "start", "configure", "route_direct"]
    assert world.store.status_writes["shop/orders"] == 1
    status = db.status
    assert status.phase is types.Phase.ACTIVE
    assert status.capacity.current == 0.25
    assert status.endpoint == "fake:orders"
    assert status.observed_generation == 1
    ready = status.condition(types.ConditionType.READY)
    assert ready is not None
    assert ready.status is types.ConditionStatus.TRUE
    assert "Started" in world.store.reasons("shop/orders")
    assert world.listener.ready_keys[-1] == "shop/orders"


async def test_idle_pause_is_routed_rechecked_and_stopped_in_one_pass() -> None:
    world = World()
    await world.active_then_idle()
    world.runtime.calls.clear()
    db = await world.reconcile("shop/orders")
    assert db.status.phase is types.Phase.PAUSED
    actions = [a for a in world.runtime.calls_for("shop/orders") if a != "observe"]
    assert actions == ["route_activator", "stop"]
    assert world.metrics.asked["shop/orders"] == 1  # the recheck, after routing
    assert world.runtime.databases["shop/orders"].storage
    paused = db.status.condition(types.ConditionType.PAUSED)
    assert paused is not None
    assert paused.status is types.ConditionStatus.TRUE
    assert world.store.reasons("shop/orders")[-2:] == ["Pausing", "Paused"]


async def test_a_session_at_the_recheck_cancels_the_pause() -> None:
    world = World()
    await world.active_then_idle()
    # the recheck will find a client that arrived while routing switched
    world.metrics.readings["shop/orders"] = replace(world.metrics.readings["shop/orders"], client_sessions=1)
    db = await world.reconcile("shop/orders")
    assert db.status.phase is types.Phase.ACTIVE
    assert world.runtime.databases["shop/orders"].route is Route.DIRECT
    assert world.runtime.databases["shop/orders"].compute is Compute.RUNNING
    assert "PauseCancelled" in world.store.reasons("shop/orders")


async def test_operator_killed_mid_pause_converges_without_duplicates() -> None:
    world = World()
    await world.active_then_idle()
    # the pass dies right after routing to the activator: stop fails as if the process were killed
    world.runtime.failures[("stop", "shop/orders")] = TransientError(types.Reason.STOP_FAILED, "killed")
    db = await world.reconcile("shop/orders")
    assert world.runtime.databases["shop/orders"].route is Route.ACTIVATOR
    del world.runtime.failures[("stop", "shop/orders")]
    world.reconciler = world.fresh_reconciler()  # a new process: no observations in memory
    world.clock.advance(1)
    world.reading("shop/orders")
    for _ in range(3):
        db = await world.reconcile("shop/orders")
    assert db.status.phase is types.Phase.PAUSED
    assert world.runtime.calls_for("shop/orders").count("create_storage") == 1
    assert world.runtime.databases["shop/orders"].starts == 1


async def test_a_failed_wake_tells_waiters_and_leaves_the_database_paused() -> None:
    world = World()
    await world.active_then_idle()
    await world.reconcile("shop/orders")
    world.runtime.failures[("start", "shop/orders")] = TransientError(types.Reason.START_FAILED, "disk full")
    await world.store.request_wake("shop/orders")
    db = await world.reconcile("shop/orders")
    assert db.status.phase is types.Phase.PAUSED
    ready = db.status.condition(types.ConditionType.READY)
    assert ready is not None
    assert (ready.reason, ready.message) == ("StartFailed", "disk full")
    assert world.listener.failures == [("shop/orders", "the database could not be woken: disk full")]
    # the cause goes away; the next client's wake works
    del world.runtime.failures[("start", "shop/orders")]
    await world.store.request_wake("shop/orders")
    db = await world.reconcile("shop/orders")
    assert db.status.phase is types.Phase.ACTIVE


async def test_parked_databases_cost_the_operator_nothing() -> None:
    world = World()
    for index in range(1000):
        db = new_db(f"db{index}", state=types.State.PARKED)
        world.store.put(replace(db, status=types.DatabaseStatus(phase=types.Phase.PARKED)))
        world.runtime.databases[db.key] = FakeCompute(storage=True)
    reconciler = world.reconciler
    reconciler.tuning = Tuning(tick=timedelta(milliseconds=20))
    await reconciler.start()
    try:
        for _ in range(200):  # the initial pass looks at each once
            await asyncio.sleep(0.02)
            if reconciler.reconciles >= 1000 and reconciler.queue.scheduled() == 0:
                break
        first_pass = len(world.runtime.calls)
        reconciles = reconciler.reconciles
        await asyncio.sleep(0.5)  # 25 ticks
        assert len(world.runtime.calls) == first_pass
        assert reconciler.reconciles == reconciles
        assert sum(world.metrics.asked.values()) == 0
        assert reconciler.queue.scheduled() == 0  # no timers either
    finally:
        await reconciler.stop()


async def test_deleting_keeps_storage_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World()
    kept, dropped = new_db("kept"), new_db("dropped", storage=types.StorageSpec(retain_on_delete=False))
    for db in (kept, dropped):
        world.store.put(db)
        for _ in range(3):
            await world.reconcile(db.key)
        now = world.clock.now
        world.store.put(
            replace(world.store.objects[db.key], metadata=replace(db.metadata, deletion_timestamp=now))
        )
        await world.reconciler.reconcile(db.key)
        assert db.key not in world.store.objects
    assert world.runtime.databases["shop/kept"].storage
    assert "shop/dropped" not in world.runtime.databases
