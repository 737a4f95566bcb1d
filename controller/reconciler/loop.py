"""The reconciler: level-triggered, shared by every runtime.

For a database it reads the object, observes the compute, asks the policy, takes the step, and
writes status once. Steps that need no waiting (route, recheck, stop) follow each other in the same
pass. Triggers, most urgent first (`priority`): a wake, a change of the object or of its compute
objects (watch), a sampling tick for running databases (one reading for the whole fleet, each
database's pass at its own offset in the tick, so they do not line up) and the plan's own "look
again", and a periodic resync. Paused and parked databases get no ticks: they cost nothing until
they change, are woken, or their own timer comes. A fixed pool of workers takes the most urgent key
first, one worker per key. Nothing lives only in memory that a restart would need: history is in
status, the world is observed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from controller.api import types, units
from controller.api.validation import InvalidSpecError
from controller.metrics.exposition import Load, OperatorMetrics, Shown
from controller.metrics.source import MetricsSource
from controller.policy import metering
from controller.policy import plan as policy
from controller.policy.inputs import DEFAULT_TUNING, Compute, ComputeState, Observation, Tuning
from controller.policy.lifecycle import Action
from controller.policy.plan import Plan
from controller.reconciler import priority
from controller.reconciler import status as status_of
from controller.reconciler.priority import Priority
from controller.reconciler.queue import WorkQueue
from controller.runtime.base import EventType, PermanentError, Runtime, StepError, Store, TransientError

log = structlog.get_logger("reconciler")


class WakeListener(Protocol):
    """Told when a database becomes ready, or a wake fails (the in-process activator listens)."""

    def ready(self, key: str) -> None: ...

    def failed(self, key: str, message: str) -> None: ...


@dataclass(frozen=True)
class Requeue:
    """When a pass wants its database looked at again, and how urgently."""

    after: timedelta
    priority: Priority


@dataclass(slots=True)
class _Cost:
    """What a database would cost at its ceiling now, for the per-tick always-at-max counter."""

    labels: tuple[str, str]
    """(namespace, name), as the counter's series is labelled."""
    phase: types.Phase
    ceiling: float


class Reconciler:
    def __init__(
        self,
        *,
        store: Store,
        runtime: Runtime,
        metrics: MetricsSource,
        exposition: OperatorMetrics | None = None,
        tuning: Tuning = DEFAULT_TUNING,
        workers: int = 8,
        clock: Callable[[], datetime] = units.now_utc,
        listener: WakeListener | None = None,
        resync: timedelta = timedelta(minutes=10),
        recheck: MetricsSource | None = None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.metrics = metrics
        self.recheck = recheck or metrics
        """Where a pause's recheck reads sessions: it must be a reading taken now, not a scrape ago."""
        self.exposition = exposition or OperatorMetrics()
        self.tuning = tuning
        self.workers = workers
        self.clock = clock
        self.listener = listener
        self.resync = resync
        self.queue = WorkQueue()
        self.observations: dict[str, Observation] = {}
        self._running: dict[str, types.ServerlessDatabase] = {}
        """Databases whose compute ran at their last reconcile: the sampler's fleet."""
        self._costs: dict[str, _Cost] = {}
        self._wakes_started: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._reconciles = 0
        self._first_pass: set[str] | None = set()
        """Keys listed at start that have not had their first pass yet (None: still listing)."""
        self._passed_early: set[str] = set()
        """Keys that had a pass while the start's list was still being read."""
        self._started = 0.0
        self.synced = asyncio.Event()
        """Set once every database listed at start has had a pass."""

    # -- running ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Workers and the change feed first, then the list of everything: a wake told by the feed
        (the store tells of those asked for while no operator ran) is acted on while the list is
        still being read, which for ten thousand databases takes seconds."""
        self._started = asyncio.get_running_loop().time()
        self._first_pass = None
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"reconcile-{i}") for i in range(self.workers)
        ]
        self._tasks.append(asyncio.create_task(self._watch(), name="watch"))
        self._tasks.append(asyncio.create_task(self._sample(), name="sample"))
        self._tasks.append(asyncio.create_task(self._resync(), name="resync"))
        listed = await self.store.list()
        running = [
            db for db in listed if db.status.phase is types.Phase.ACTIVE and db.status.capacity.current
        ]
        for db in running:  # the sampler's fleet until their own passes say otherwise
            self._running.setdefault(db.key, db)
        await self._read(running)
        for db in listed:  # whatever waits on a wake or a change goes first; the rest is a resync
            self.queue.add(db.key, priority.of(db, otherwise=Priority.RESYNC))
        self._first_pass = {db.key for db in listed} - self._passed_early
        self._passed_early = set()
        self._passed()

    async def stop(self) -> None:
        self.queue.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def wake(self, key: str) -> None:
        """A client waits on this database: its pass goes before every other."""
        self.queue.add(key, Priority.WAKE)

    @property
    def reconciles(self) -> int:
        return self._reconciles

    async def _worker(self) -> None:
        while (item := await self.queue.get()) is not None:
            self.exposition.queue_wait.labels(item.priority.label).observe(item.waited)
            key = item.key
            try:
                again = await self.reconcile(key)
            except Exception:  # a bug or an API error must not kill the worker: back off, then retry
                self.queue.done(key)
                delay = self.queue.retry(key)
                log.exception("reconcile crashed", database=key, retry_in=delay)
                continue
            finally:
                self._passed(key)
            self.queue.done(key)
            if again is not None:
                self.queue.add(key, again.priority, again.after.total_seconds())

    def _passed(self, key: str | None = None) -> None:
        """Count a database's first pass since the start; say when every one listed then had it."""
        if self.synced.is_set():
            return
        if self._first_pass is None:
            if key is not None:
                self._passed_early.add(key)
            return
        if key is not None:
            self._first_pass.discard(key)
        if not self._first_pass:
            self.synced.set()
            seconds = asyncio.get_running_loop().time() - self._started
            log.info("every database had its first pass", seconds=round(seconds, 3))

    async def _watch(self) -> None:
        while True:
            try:
                async for key, db in self.store.changes():
                    urgency = Priority.CHANGE if db is None else priority.of(db, otherwise=Priority.CHANGE)
                    self.queue.add(key, urgency)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watch failed; restarting it")
                await asyncio.sleep(1)

    def _offset(self, key: str) -> float:
        """Where in the tick this database's pass falls: fixed per database, spread over the tick."""
        return zlib.crc32(key.encode()) / 2**32 * self.tuning.tick.total_seconds()

    async def _sample(self) -> None:
        """Each tick, one reading for the whole running fleet, then a pass of each at its offset."""
        loop = asyncio.get_running_loop()
        tick = self.tuning.tick.total_seconds()
        counted_at = loop.time()
        while True:
            started = loop.time()
            self._count_costs(started - counted_at)
            counted_at = started
            fleet = list(self._running.values())
            if fleet:
                await self._read(fleet)
                for db in fleet:
                    if db.key in self._running:  # not if it came to rest while it was read
                        self.queue.add(db.key, Priority.TICK, self._offset(db.key))
            for each, count in self.queue.depth().items():
                self.exposition.queue_depth.labels(each.label).set(count)
            await asyncio.sleep(max(tick - (loop.time() - started), 0.05))

    async def _read(self, fleet: list[types.ServerlessDatabase]) -> None:
        """One reading for these databases. A start takes one for those whose status says they run,
        before their first pass, and the sampler keeps reading them until that pass: without a fresh
        reading each would hold its size, and say so in its status and an Event, at every restart."""
        if not fleet:
            return
        try:
            readings = await self.metrics.observe(fleet)
        except Exception:
            log.exception("metrics source failed")
            return
        self.observations.update(readings)
        self.exposition.readings.inc_each((types.split_key(key), 1) for key in readings)

    def _count_costs(self, elapsed: float) -> None:
        """What always-at-max would have used; parked databases cost nothing. (What was used comes
        from status.usage, which outlives the process.)"""
        self.exposition.max_cu_seconds.inc_each(
            (cost.labels, cost.ceiling * elapsed)
            for cost in self._costs.values()
            if cost.phase is not types.Phase.PARKED
        )

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync.total_seconds())
            await self.resync_all()

    async def resync_all(self) -> None:
        """A full look at every database, in case a change was missed; it goes after everything else.
        Each is decoded at its own pass, not all at once here: ten thousand decodes in a row would
        hold up the wakes that go first."""
        keys = await self.store.all_keys()
        log.info("resync", databases=len(keys))
        for key in keys:
            self.queue.add(key, Priority.RESYNC)

    # -- one database ----------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Requeue | None:
        """One pass for one database; returns when to look again (None: only on change)."""
        started = time.monotonic()
        self._reconciles += 1
        try:
            db = await self.store.get(key)
        except InvalidSpecError as error:
            log.warning("invalid object in store", database=key, error=str(error))
            await self.store.mark_invalid(key, str(error), self.clock())
            return None
        if db is None:
            await self._forget(key)
            return None
        namespace, name = db.metadata.namespace, db.metadata.name
        self.exposition.reconciles.labels(namespace, name).inc()
        try:
            if db.metadata.deletion_timestamp is not None:
                await self._finalize(db)
                return None
            if types.FINALIZER not in db.metadata.finalizers:
                await self.store.set_finalizer(db, True)  # before any storage exists to keep or delete
            return await self._converge(db)
        finally:
            self.exposition.reconcile_duration.observe(time.monotonic() - started)

    async def _converge(self, stored: types.ServerlessDatabase) -> Requeue | None:
        db = stored
        notes: list[status_of.EventNote] = []
        outcome: status_of.Outcome | None = None
        for _ in range(status_of.MAX_STEPS):
            compute = await self.runtime.observe(db)
            now = self.clock()
            plan = policy.decide(
                db=db, compute=compute, observation=self.observations.get(db.key), now=now, tuning=self.tuning
            )
            log.debug(
                "step",
                database=db.key,
                compute=compute.compute.value,
                route=compute.route.value,
                capacity=compute.capacity,
                phase=db.status.phase.value,
                action=plan.action.value,
            )
            if (
                db is stored
                and not stored.status.observed_generation
                and plan.action is Action.CREATE_STORAGE
            ):
                # A new database says at once that it was seen: the steps that make it take a while at
                # a fleet's scale, and meanwhile `kubectl get` shows Pending (Creating), not nothing.
                announced = status_of.next_status(db, status_of.Outcome(plan, compute), now, self.tuning)
                await self.store.write_status(stored, announced)
            outcome = await self._act(db, plan, compute)
            step = status_of.advance(db, outcome, now, self.tuning)
            notes += step.notes
            self._account(db, outcome, step.db.status)
            db = step.db
            if not step.more:
                break
        assert outcome is not None
        await self.store.write_status(stored, metering.to_write(stored.status, db.status))
        for note in notes:
            await self.store.record_event(stored, note.type, note.reason, note.message)
            log.info(note.message, database=db.key, reason=note.reason, type=note.type.value)
        self._publish(db, outcome)
        if outcome.failure is not None:
            if outcome.plan.wake and self.listener is not None:  # told after status says why, not before
                self.listener.failed(db.key, f"the database could not be woken: {outcome.failure.message}")
            self.queue.back_off(db.key, policy.backoff(db.status.failures, self.tuning).total_seconds())
            return None
        self.queue.succeeded(db.key)
        again = outcome.plan.requeue_after
        if again is None or (again == self.tuning.tick and db.key in self._running):
            return None  # a running database is looked at on the sampler's tick, not twice
        if outcome.plan.action is Action.WAIT:
            # A look to see whether the compute is up yet: its watch event (a change) will say so too,
            # so a poll never goes ahead of another database's wake.
            return Requeue(again, Priority.TICK)
        return Requeue(again, priority.of(db, otherwise=Priority.TICK))

    async def _act(
        self, db: types.ServerlessDatabase, plan: Plan, compute: ComputeState
    ) -> status_of.Outcome:
        declared = None
        try:
            match plan.action:
                case Action.CREATE_STORAGE:
                    await self.runtime.create_storage(db)
                case Action.START:
                    assert plan.capacity is not None
                    await self.runtime.start(db, plan.capacity)
                case Action.PROVISION:
                    await self.runtime.provision(db)
                case Action.ROUTE_DIRECT:
                    await self.runtime.route(db, policy.Route.DIRECT)
                case Action.ROUTE_ACTIVATOR:
                    await self.runtime.route(db, policy.Route.ACTIVATOR)
                case Action.RECHECK:
                    await self._recheck(db)
                case Action.STOP:
                    await self.metrics.forget(db.key)
                    assert plan.capacity is not None
                    await self.runtime.stop(db, resume_at=plan.capacity)
                case Action.RELEASE:
                    await self.runtime.release(db)
                case Action.CONFIGURE:
                    assert plan.capacity is not None
                    declared = await self.runtime.configure(db, plan.capacity, access=plan.configure_access)
                case Action.RESIZE:
                    assert plan.capacity is not None
                    await self.runtime.resize(db, plan.capacity)
                case Action.NONE | Action.WAIT:
                    pass
        except StepError as failure:
            self.exposition.errors.labels(db.metadata.namespace, db.metadata.name, failure.reason.value).inc()
            log.warning(
                "step failed",
                database=db.key,
                action=plan.action.value,
                reason=failure.reason.value,
                error=failure.message,
            )
            return status_of.Outcome(plan, compute, failure)
        return status_of.Outcome(plan, compute, declared=declared)

    async def _recheck(self, db: types.ServerlessDatabase) -> None:
        """A reading taken after new connections were routed to the activator."""
        readings = await self.recheck.observe([db])
        if db.key not in readings:
            raise TransientError(types.Reason.METRICS_UNAVAILABLE, "could not read sessions while pausing")
        self.observations[db.key] = readings[db.key]

    async def _finalize(self, db: types.ServerlessDatabase) -> None:
        keep = db.spec.storage.retain_on_delete
        try:
            await self.metrics.forget(db.key)
            await self.runtime.delete(db, keep_storage=keep)
        except StepError as failure:
            await self.store.record_event(db, EventType.WARNING, failure.reason.value, failure.message)
            raise
        reason = types.Reason.STORAGE_RETAINED if keep else types.Reason.STORAGE_DELETED
        message = "storage kept (spec.storage.retainOnDelete)" if keep else "storage deleted"
        await self.store.record_event(db, EventType.NORMAL, reason.value, message)
        log.info("deleted", database=db.key, storage="kept" if keep else "deleted")
        await self.store.set_finalizer(db, False)
        await self._forget(db.key)

    async def _forget(self, key: str) -> None:
        self._running.pop(key, None)
        self.observations.pop(key, None)
        self._costs.pop(key, None)
        self._wakes_started.pop(key, None)
        self.queue.forget(key)
        await self.metrics.forget(key)
        self.exposition.forget(*types.split_key(key))

    # -- bookkeeping -----------------------------------------------------------------------------

    def _account(
        self, db: types.ServerlessDatabase, outcome: status_of.Outcome, new: types.DatabaseStatus
    ) -> None:
        """Counters and wake timing from one step, and telling a waiting activator how the wake went."""
        now = time.monotonic()
        namespace, name = db.metadata.namespace, db.metadata.name
        plan = outcome.plan
        if plan.wake and outcome.compute.compute is not Compute.RUNNING:  # answered while up: no wake
            self._wakes_started.setdefault(db.key, now)
        if outcome.failure is not None:
            self._wakes_started.pop(db.key, None)
            return
        if (
            plan.action is Action.RESIZE
            and plan.capacity is not None
            and db.status.capacity.current is not None
        ):
            direction = "up" if plan.capacity > db.status.capacity.current else "down"
            self.exposition.resizes.labels(namespace, name, direction).inc()
        became = new.phase if new.phase is not db.status.phase else None
        if became is types.Phase.PAUSED:
            self.exposition.pauses.labels(namespace, name).inc()
        elif became is types.Phase.PARKED:
            self.exposition.parks.labels(namespace, name).inc()
        # Held clients go in once the server runs with the settings of its size, not before.
        running = outcome.compute.compute is Compute.RUNNING
        if running and plan.action in (Action.CONFIGURE, Action.ROUTE_DIRECT, Action.NONE, Action.RESIZE):
            if self.listener is not None:
                self.listener.ready(db.key)
            started = self._wakes_started.pop(db.key, None)
            if started is not None:
                self.exposition.wake_duration.labels(namespace, name).observe(now - started)
                self.exposition.wakes.labels(namespace, name).inc()

    def _publish(self, db: types.ServerlessDatabase, outcome: status_of.Outcome) -> None:
        namespace, name = db.metadata.namespace, db.metadata.name
        status = db.status
        m = self.exposition
        if db.key not in self._costs:
            m.start_counting(namespace, name)
        load: Load | None = None
        if status.phase not in (types.Phase.PAUSED, types.Phase.PARKED):  # at rest: no load series
            reading = self.observations.get(db.key) if status.capacity.current else None
            load = Load(
                capacity_current=status.capacity.current or 0,
                capacity_desired=status.capacity.desired or 0,
                client_sessions=status.connections,
                cpu_cores=(reading.cpu_cores if reading else None) or 0,
                memory_working_set_bytes=(reading.memory_working_set_bytes if reading else None) or 0,
                transactions_per_second=(reading.transactions_per_second if reading else None) or 0,
            )
        m.observe_database(
            namespace, name, Shown(db.spec.capacity.min, db.spec.capacity.max, status.phase, load)
        )
        if outcome.compute.compute is Compute.RUNNING and status.phase is types.Phase.ACTIVE:
            self._running[db.key] = db
        else:
            if self._running.pop(db.key, None) is not None:
                self.queue.drop_routine(db.key)  # the ticks asked for while it ran were for a running one
            if status.phase in (types.Phase.PAUSED, types.Phase.PARKED):
                self.observations.pop(db.key, None)
        if status.usage is not None:
            m.used(namespace, name, status.usage)
        self._costs[db.key] = _Cost((namespace, name), status.phase, db.spec.capacity.max)
        m.databases.set(len(self._costs))

    def _accounted(self, db: types.ServerlessDatabase) -> types.DatabaseStatus:
        """The status whose usage is the latest accounted: a running database's last pass accounted
        up to its tick (with nothing else changed, that usage was not written)."""
        watched = self._running.get(db.key)
        return watched.status if watched is not None else db.status

    async def mark_stopped(self) -> None:
        """The operator is stopping its servers: say so in each running database's Ready condition."""
        for db in await self.store.list():
            if db.status.phase not in (types.Phase.ACTIVE, types.Phase.RESUMING, types.Phase.PENDING):
                continue
            now = self.clock()
            conditions = tuple(
                types.Condition(
                    c.type,
                    types.ConditionStatus.FALSE,
                    types.Reason.OPERATOR_STOPPED.value,
                    "the operator stopped and shut Postgres down cleanly; it starts again with the operator",
                    now if c.status is not types.ConditionStatus.FALSE else c.last_transition_time,
                    c.observed_generation,
                )
                if c.type is types.ConditionType.READY
                else c
                for c in db.status.conditions
            )
            status = replace(
                db.status,
                conditions=conditions,
                connections=0,
                capacity=replace(db.status.capacity, current=None),
                usage=metering.accrue_status(self._accounted(db), now, self.tuning),  # billed up to the stop
            )
            with contextlib.suppress(OSError):
                await self.store.write_status(db, status)


__all__ = ["PermanentError", "Reconciler", "Requeue", "WakeListener"]
