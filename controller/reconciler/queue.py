"""A work queue of database keys with priorities, as controller-runtime's, plus the order of urgency.

Each key is in the queue at most once, at the most urgent priority it was asked for, and in flight
on at most one worker: adding a key that is being worked on marks it to run again once the worker is
done. Delayed adds wait in one timer heap (no task or timer per key); adding a key that already
waits keeps the earlier time. A key whose pass failed backs off: until its time comes only a wake or
a change brings it forward, never a tick or a resync.

At most `resync_limit` resync passes are in flight at once. Workers share one event loop, so a wake
handed to a free worker still shares the CPU with every pass in flight: a resync that held all the
workers would slow a wake down, though it went first. A resync pass of a quiet database waits on
nothing, so fewer of them at once costs the resync no time.

Idle workers are woken one at a time: a key that becomes due wakes one, and a worker that takes a
key wakes the next while more is due or a timer waits, so that one idle worker always watches the
earliest timer. Waking every idle worker for each key cost more than the passes of a quiet fleet.

Time is the event loop's, so a test fast-forwards it (looptime).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
from dataclasses import dataclass

from controller.reconciler.priority import Priority

RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 300.0
RESYNC_LIMIT = 4


@dataclass(frozen=True)
class Item:
    key: str
    priority: Priority
    waited: float
    """Seconds between becoming due and being handed to a worker."""


@dataclass
class _Pending:
    due: float
    priority: Priority


class WorkQueue:
    def __init__(self, *, resync_limit: int = RESYNC_LIMIT) -> None:
        self.resync_limit = resync_limit
        self._resyncing: set[str] = set()
        """Keys in flight for a resync pass."""
        self._ready: list[tuple[Priority, int, str]] = []
        self._queued: dict[str, tuple[Priority, float]] = {}
        """Keys due now: their priority, and since when they wait."""
        self._timers: list[tuple[float, int, str]] = []
        self._later: dict[str, _Pending] = {}
        """Keys due later (an entry in `_timers` that does not match is stale, and skipped)."""
        self._active: set[str] = set()
        self._again: dict[str, _Pending] = {}
        """Keys asked for while in flight: queued again once done."""
        self._held: dict[str, float] = {}
        """Keys backing off after a failure, until when."""
        self._failures: dict[str, int] = {}
        self._seq = itertools.count()
        self._idle: collections.deque[asyncio.Future[None]] = collections.deque()
        """Idle workers, each waiting to be woken, the first to sleep first."""
        self._watching: tuple[asyncio.Future[None], float] | None = None
        """The idle worker that wakes by itself when the earliest timer is due, and when that is."""
        self._closed = False

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def add(self, key: str, priority: Priority = Priority.CHANGE, after: float = 0.0) -> None:
        now = self._now()
        due = now + max(after, 0.0)
        held = self._held.get(key)
        if held is not None and priority >= Priority.TICK:
            due = max(due, held)  # a tick or a resync does not cut a back-off short
        if key in self._active:
            self._again[key] = _merge(self._again.get(key), _Pending(due, priority))
            return
        queued = self._queued.get(key)
        if queued is not None:  # due already: it keeps its place unless this is more urgent
            if priority < queued[0]:
                self._push_ready(key, priority, now)  # its wait, at this urgency, starts now
            return
        if due > now:
            pending = _merge(self._later.get(key), _Pending(due, priority))
            if self._later.get(key) != pending:
                self._later[key] = pending
                heapq.heappush(self._timers, (pending.due, next(self._seq), key))
                if self._watching is None or pending.due < self._watching[1]:
                    self._wake(self._watching[0] if self._watching else None)  # to watch this one
            return
        spent = self._later.pop(key, None)  # due now: its timer is spent, its urgency kept
        self._push_ready(key, min(priority, spent.priority) if spent else priority, now)

    def _push_ready(self, key: str, priority: Priority, since: float) -> None:
        self._queued[key] = (priority, since)
        heapq.heappush(self._ready, (priority, next(self._seq), key))
        self._wake()

    def back_off(self, key: str, delay: float) -> None:
        """The key's pass failed: look again after `delay`; until then ticks and resyncs wait too."""
        self._held[key] = self._now() + delay
        self.add(key, Priority.TICK, delay)

    def retry(self, key: str) -> float:
        """The key's pass failed unexpectedly: back off exponentially per key; returns the delay."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(RETRY_FIRST_SECONDS * 2.0 ** (failures - 1), RETRY_MAX_SECONDS)
        self.back_off(key, delay)
        return delay

    def succeeded(self, key: str) -> None:
        """The key's pass went well: its back-off is over."""
        self._held.pop(key, None)
        self._failures.pop(key, None)

    def drop_routine(self, key: str) -> None:
        """Drop the key's routine looks asked for so far (ticks, timers, resyncs): its pass has just
        looked and found it at rest, and says itself when to look again. A change or a wake stays."""
        again = self._again.get(key)
        if again is not None and again.priority >= Priority.TICK:
            del self._again[key]
        later = self._later.get(key)
        if later is not None and later.priority >= Priority.TICK:
            del self._later[key]  # its timer is skipped when it surfaces
        queued = self._queued.get(key)
        if queued is not None and queued[0] >= Priority.TICK:
            del self._queued[key]  # its heap entry is skipped when it surfaces

    def forget(self, key: str) -> None:
        """Drop everything about a key (its entries in the heaps are skipped when they surface)."""
        for pending in (self._queued, self._later, self._again, self._held, self._failures):
            pending.pop(key, None)

    def _promote(self, now: float) -> None:
        """Keys whose time has come join the ready heap."""
        while self._timers and self._timers[0][0] <= now:
            due, _, key = heapq.heappop(self._timers)
            pending = self._later.get(key)
            if pending is None or pending.due != due:
                continue  # superseded by an earlier add, or forgotten
            del self._later[key]
            queued = self._queued.get(key)
            if queued is None or pending.priority < queued[0]:
                self._push_ready(key, pending.priority, due if queued is None else queued[1])

    async def get(self) -> Item | None:
        """The most urgent due key (None once closed); mark it done with `done`."""
        while not self._closed:
            now = self._now()
            self._promote(now)
            item = self._take(now)
            if item is not None:
                if self._ready or (self._timers and self._watching is None):
                    self._wake()  # the next idle worker takes what is due, or watches the timers
                return item
            await self._sleep()
        return None

    def _take(self, now: float) -> Item | None:
        while self._ready:
            priority, _, key = self._ready[0]
            queued = self._queued.get(key)
            if queued is None or queued[0] != priority:
                heapq.heappop(self._ready)
                continue  # raised to a more urgent priority since, or forgotten
            if priority is Priority.RESYNC and len(self._resyncing) >= self.resync_limit:
                return None  # nothing more urgent is due: wait for a resync pass to end, or a new key
            heapq.heappop(self._ready)
            del self._queued[key]
            self._active.add(key)
            if priority is Priority.RESYNC:
                self._resyncing.add(key)
            return Item(key, priority, now - queued[1])
        return None

    async def _sleep(self) -> None:
        """Until woken; the first idle worker also until the earliest live timer is due."""
        while self._timers and self._later.get(self._timers[0][2]) is None:
            heapq.heappop(self._timers)  # drop stale timers so the wait below is for a live one
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        alarm = None
        if self._timers and self._watching is None:
            due = self._timers[0][0]
            self._watching = (waiter, due)
            alarm = loop.call_at(due, _resolve, waiter)
        self._idle.append(waiter)
        try:
            await waiter
        except BaseException:
            self._wake()  # cancelled: a wake it was owed, or its watch of the timers, goes on
            raise
        finally:
            if alarm is not None:
                alarm.cancel()
            if self._watching is not None and self._watching[0] is waiter:
                self._watching = None
            if waiter in self._idle:  # woken by its alarm, or as the watcher
                self._idle.remove(waiter)

    def _wake(self, which: asyncio.Future[None] | None = None) -> None:
        """Wake one idle worker: `which`, or the one idle longest."""
        if which is not None:
            _resolve(which)
            return
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def done(self, key: str) -> None:
        self._active.discard(key)
        if key in self._resyncing:
            self._resyncing.discard(key)
            self._wake()  # a worker waiting for a resync's turn may take one now
        again = self._again.pop(key, None)
        if again is not None:
            self.add(key, again.priority, again.due - self._now())

    def scheduled(self) -> int:
        """Keys waiting, due now or later."""
        return len(self._queued) + len(self._later) + len(self._again)

    def depth(self) -> dict[Priority, int]:
        """Keys due now, by priority."""
        counts = dict.fromkeys(Priority, 0)
        for priority, _ in self._queued.values():
            counts[priority] += 1
        return counts

    def close(self) -> None:
        self._closed = True
        for waiter in self._idle:
            _resolve(waiter)
        self._idle.clear()


def _merge(old: _Pending | None, new: _Pending) -> _Pending:
    """The earlier time and the more urgent priority of two asks for the same key."""
    if old is None:
        return new
    return _Pending(min(old.due, new.due), min(old.priority, new.priority))


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
