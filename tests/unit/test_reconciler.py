"""The reconciler over the in-package fakes: status, events, convergence after a crash, and parked costs."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from support.fakes import FakeCompute, FakeMetrics, FakeRuntime, MemoryStore

from controller.api import types
from controller.policy import access
from controller.policy import plan as policy
from controller.policy.inputs import Compute, ComputeState, Observation, Route, Tuning
from controller.postgres.declared import Report
from controller.reconciler import priority
from controller.reconciler import status as status_of
from controller.reconciler.loop import Reconciler, Requeue
from controller.reconciler.priority import Priority
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


async def test_a_new_database_says_pending_at_once_then_becomes_active_in_one_pass() -> None:
    world = World()
    world.store.put(new_db())
    seen: list[types.DatabaseStatus] = []
    create_storage = world.runtime.create_storage

    async def noting(db: types.ServerlessDatabase) -> None:
        seen.append(world.store.objects[db.key].status)  # what `kubectl get` shows while it is made
        await create_storage(db)

    world.runtime.create_storage = noting  # type: ignore[method-assign]
    db = await world.reconcile("shop/orders")
    # create storage, start, its size's settings, route: four steps in one pass, written once at the end
    steps = [a for a in world.runtime.calls_for("shop/orders") if a != "observe"]
    assert steps == ["create_storage", "start", "configure", "route_direct"]
    assert world.store.status_writes["shop/orders"] == 2
    (announced,) = seen
    assert announced.phase is types.Phase.PENDING
    assert announced.observed_generation == 1
    creating = announced.condition(types.ConditionType.READY)
    assert creating is not None
    assert (creating.status, creating.reason) == (types.ConditionStatus.FALSE, types.Reason.CREATING)
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


async def test_a_start_under_way_is_looked_at_again_behind_other_wakes() -> None:
    world = World()
    await world.active_then_idle()
    await world.reconcile("shop/orders")
    world.runtime.start_ready = False
    await world.store.request_wake("shop/orders")
    again = await world.reconciler.reconcile("shop/orders")
    db = world.store.objects["shop/orders"]
    assert db.status.phase is types.Phase.RESUMING
    assert priority.of(db, otherwise=Priority.TICK) is Priority.WAKE  # a change of it would be a wake
    assert again == Requeue(timedelta(milliseconds=100), Priority.TICK)  # its poll is not


def resting_fleet(world: World, count: int) -> None:
    """`count` databases at rest, as a restarted operator finds them: a third paused, the rest parked."""
    for index in range(count):
        paused = index % 3 == 0
        phase = types.Phase.PAUSED if paused else types.Phase.PARKED
        db = replace(
            new_db(f"db{index}"),
            status=types.DatabaseStatus(phase=phase, phase_since=world.clock.now, observed_generation=1),
        )
        world.store.put(db)
        compute = Compute.STOPPED if paused else Compute.ABSENT
        world.runtime.databases[db.key] = FakeCompute(storage=True, compute=compute)


class GatedRuntime(FakeRuntime):
    """A runtime whose observe waits at a gate while it is closed: the test orders passes explicitly."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = asyncio.Event()
        """Set when a pass is waiting at the closed gate."""

    async def observe(self, db: types.ServerlessDatabase) -> ComputeState:
        if not self.gate.is_set():
            self.held.set()
            await self.gate.wait()
        return await super().observe(db)


@pytest.mark.looptime
async def test_paused_and_parked_databases_get_no_pass_and_no_call_over_many_ticks() -> None:
    world = World()
    resting_fleet(world, 1000)
    reconciler = world.reconciler
    await reconciler.start()
    try:
        await asyncio.wait_for(reconciler.synced.wait(), 60)  # the first pass looks at each once
        calls, reconciles = len(world.runtime.calls), reconciler.reconciles
        writes, events = world.store.status_writes.total(), sum(map(len, world.store.events.values()))
        assert reconciles == 1000
        await asyncio.sleep(100 * Tuning().tick.total_seconds())  # a hundred ticks, fast-forwarded
        assert len(world.runtime.calls) == calls
        assert reconciler.reconciles == reconciles
        assert sum(world.metrics.asked.values()) == 0
        assert world.store.status_writes.total() == writes
        assert sum(map(len, world.store.events.values())) == events
        # What stays scheduled is each paused database's own park, an hour on: no tick, no poll.
        assert reconciler.queue.scheduled() == 334
    finally:
        await reconciler.stop()


async def start_held(world: World, runtime: GatedRuntime) -> None:
    """Start on one worker, and stop the first pass at the gate with the rest of the fleet queued."""
    world.runtime = runtime
    world.reconciler = world.fresh_reconciler()
    world.reconciler.workers = 1
    runtime.gate.clear()
    await world.reconciler.start()
    await asyncio.wait_for(runtime.held.wait(), 10)


def passes(runtime: FakeRuntime) -> list[str]:
    """The databases in the order their passes began (a pass observes once per step)."""
    return list(dict.fromkeys(key for action, key in runtime.calls if action == "observe"))


@pytest.mark.looptime
async def test_a_wake_queued_behind_a_thousand_object_resync_runs_first() -> None:
    world, runtime = World(), GatedRuntime()
    resting_fleet(world, 1000)
    await start_held(world, runtime)  # the start's look at every database is a resync
    try:
        world.reconciler.wake("shop/db999")
        runtime.gate.set()
        await asyncio.wait_for(world.reconciler.synced.wait(), 60)
        order = passes(runtime)
        assert order[1] == "shop/db999"  # right after the pass that was in flight
        assert len(order) == 1000  # the woken one left the resync: one pass each
    finally:
        await world.reconciler.stop()


@pytest.mark.looptime
async def test_a_resync_looks_at_each_database_once_behind_a_wake() -> None:
    world, runtime = World(), GatedRuntime()
    resting_fleet(world, 100)
    world.runtime = runtime
    world.reconciler = world.fresh_reconciler()
    world.reconciler.workers = 1
    await world.reconciler.start()
    try:
        await asyncio.wait_for(world.reconciler.synced.wait(), 60)
        runtime.calls.clear()
        runtime.gate.clear()
        await world.reconciler.resync_all()
        await asyncio.wait_for(runtime.held.wait(), 10)
        world.reconciler.wake("shop/db99")
        runtime.gate.set()
        await asyncio.sleep(60)
        order = passes(runtime)
        assert order[1] == "shop/db99"  # right after the pass that was in flight
        assert sorted(order) == sorted(world.store.objects)  # and every database once
    finally:
        await world.reconciler.stop()


class SlowListStore(MemoryStore):
    """A list that takes as long as the test says, as reading ten thousand objects takes seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.listed = asyncio.Event()

    async def list(self) -> list[types.ServerlessDatabase]:
        await self.listed.wait()
        return list(await super().list())


@pytest.mark.looptime
async def test_a_wake_told_at_a_start_is_acted_on_while_the_list_is_still_read() -> None:
    world = World()
    world.store = SlowListStore()
    resting_fleet(world, 100)
    world.reconciler = world.fresh_reconciler()
    starting = asyncio.create_task(world.reconciler.start())
    try:
        await asyncio.sleep(0.1)  # the change feed is listening
        woken = world.store.objects["shop/db0"]  # paused; a WakeRequest made while no operator ran
        world.store.put(replace(woken, wake_request="asked-while-down"))  # the cluster tells of it
        await asyncio.sleep(1)
        assert passes(world.runtime) == ["shop/db0"]
        assert world.runtime.databases["shop/db0"].compute is not Compute.STOPPED  # started
        assert not starting.done()  # the list is still being read
        world.store.listed.set()
        await starting
        await asyncio.wait_for(world.reconciler.synced.wait(), 60)
        assert set(passes(world.runtime)) == set(world.store.objects)
    finally:
        await world.reconciler.stop()


@pytest.mark.looptime
async def test_a_new_object_is_picked_up_ahead_of_a_resync() -> None:
    world, runtime = World(), GatedRuntime()
    resting_fleet(world, 1000)
    await start_held(world, runtime)
    try:
        await asyncio.sleep(0)  # the change feed is listening
        world.store.put(new_db("fresh"))
        await asyncio.sleep(0)
        runtime.gate.set()
        await asyncio.wait_for(world.reconciler.synced.wait(), 60)
        order = passes(runtime)
        assert order.index("shop/fresh") == 1
        assert world.store.objects["shop/fresh"].status.phase is types.Phase.ACTIVE
    finally:
        await world.reconciler.stop()


@pytest.mark.looptime
async def test_a_restarted_operator_reads_the_running_ones_before_their_first_pass() -> None:
    world = World()
    world.store.put(new_db())
    while world.store.objects["shop/orders"].status.phase is not types.Phase.ACTIVE:
        await world.reconcile("shop/orders")
    world.reading("shop/orders", sessions=1, cpu=0.1)
    await world.reconcile("shop/orders")
    writes, events = world.store.status_writes["shop/orders"], list(world.store.reasons("shop/orders"))
    world.reconciler = world.fresh_reconciler()  # a new process: no reading in memory
    await world.reconciler.start()
    try:
        await asyncio.wait_for(world.reconciler.synced.wait(), 60)
        assert world.store.status_writes["shop/orders"] == writes  # it decides as the last one did
        assert list(world.store.reasons("shop/orders")) == events  # and has nothing new to tell
    finally:
        await world.reconciler.stop()


@pytest.mark.looptime
async def test_a_restarted_operator_keeps_reading_running_ones_whose_first_pass_is_late() -> None:
    world, runtime = World(), GatedRuntime()
    world.runtime = runtime
    world.reconciler = world.fresh_reconciler()
    world.store.put(new_db())
    while world.store.objects["shop/orders"].status.phase is not types.Phase.ACTIVE:
        await world.reconcile("shop/orders")
    world.reading("shop/orders", sessions=1)
    resting_fleet(world, 10)
    await start_held(world, runtime)  # the first pass stops at the gate, the rest wait behind it
    try:
        asked = world.metrics.asked["shop/orders"]
        await asyncio.sleep(5 * Tuning().tick.total_seconds())
        assert world.metrics.asked["shop/orders"] >= asked + 4  # read each tick, before its pass
    finally:
        runtime.gate.set()
        await world.reconciler.stop()


@pytest.mark.looptime
async def test_running_databases_are_looked_at_once_a_tick_at_their_own_offsets() -> None:
    world = World()
    loop = asyncio.get_running_loop()
    for index in range(100):
        world.store.put(new_db(f"db{index}"))
    seen: dict[str, list[float]] = {}
    observe = world.runtime.observe

    async def timed(db: types.ServerlessDatabase) -> ComputeState:
        seen.setdefault(db.key, []).append(loop.time())
        return await observe(db)

    world.runtime.observe = timed  # type: ignore[method-assign]
    reconciler = world.reconciler
    await reconciler.start()
    try:
        await asyncio.sleep(1)  # every database created and running
        for index in range(100):
            world.reading(f"shop/db{index}", sessions=1)
        seen.clear()
        tick = reconciler.tuning.tick.total_seconds()
        await asyncio.sleep(10 * tick)
        passes_each = [len(times) for times in seen.values()]
        assert len(seen) == 100
        assert max(passes_each) <= 11  # once a tick (plus one at the edge), not twice
        assert min(passes_each) >= 9
        offsets = sorted(times[-1] % tick for times in seen.values())
        assert offsets[-1] - offsets[0] > tick / 2  # spread over the tick, not all at its start
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


def test_declared_roles_in_status_are_the_last_pass_then_pending_until_applied() -> None:

    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    alice = (types.RoleSpec("alice", login=True),)
    db = new_db(roles=alice)
    running = ComputeState(storage=True, compute=Compute.RUNNING, route=Route.DIRECT, capacity=0.25)
    plan = policy.decide(db=db, compute=running, observation=None, now=now)
    assert plan.configure_access  # never applied: the server gets them now
    failed = Report(roles=(types.ObjectStatus("alice", types.Applied.FAILED, "42501: permission denied"),))
    step = status_of.advance(db, status_of.Outcome(plan, running, declared=failed), now)
    assert step.db.status.roles == failed.roles
    warnings = [n.message for n in step.notes if n.reason == "DeclaredNotApplied"]
    assert warnings == ["role alice not as declared: 42501: permission denied"]
    again = status_of.advance(step.db, status_of.Outcome(plan, running, declared=failed), now)
    assert [n for n in again.notes if n.reason == "DeclaredNotApplied"] == []  # told once
    # a pass that does not look at them keeps the report; a spec they do not follow yet makes them Pending
    quiet = status_of.advance(
        step.db, status_of.Outcome(replace(plan, compute=step.db.status.compute), running), now
    )
    assert quiet.db.status.roles == failed.roles
    changed = replace(step.db, spec=replace(step.db.spec, roles=(*alice, types.RoleSpec("bob"))))
    assert step.db.status.compute.access != access.digest(changed.spec)
    parked = ComputeState(storage=True, compute=Compute.ABSENT, route=Route.ACTIVATOR)
    rest = policy.decide(db=changed, compute=parked, observation=None, now=now)
    pending = status_of.advance(changed, status_of.Outcome(rest, parked), now).db.status.roles
    assert pending == (
        types.ObjectStatus("alice", types.Applied.PENDING),
        types.ObjectStatus("bob", types.Applied.PENDING),
    )
