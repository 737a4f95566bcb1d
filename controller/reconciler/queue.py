"""A work queue of database keys, as controller-runtime's: each key at most once in flight, delayed adds.

Adding a key that is being worked on marks it to run again once the worker is done; adding a key
already waiting keeps the earlier of the two due times.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time


class WorkQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._active: set[str] = set()
        self._again: dict[str, float] = {}
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._closed = False

    def add(self, key: str, after: float = 0.0) -> None:
        due = time.monotonic() + max(after, 0.0)
        if key in self._active:
            self._again[key] = min(due, self._again.get(key, due))
            return
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._changed.set()

    def forget(self, key: str) -> None:
        """Drop a key's pending run (its entry in the heap is skipped when it surfaces)."""
        self._due.pop(key, None)
        self._again.pop(key, None)

    async def get(self) -> str | None:
        """The next due key (None once closed); mark it done with `done`."""
        while not self._closed:
            while self._heap:
                due, _, key = self._heap[0]
                if self._due.get(key) != due:
                    heapq.heappop(self._heap)  # superseded by an earlier add, or forgotten
                    continue
                wait = due - time.monotonic()
                if wait > 0:
                    break
                heapq.heappop(self._heap)
                del self._due[key]
                self._active.add(key)
                return key
            self._changed.clear()
            timeout = self._heap[0][0] - time.monotonic() if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        return None

    def done(self, key: str) -> None:
        self._active.discard(key)
        again = self._again.pop(key, None)
        if again is not None:
            self.add(key, again - time.monotonic())

    def scheduled(self) -> int:
        """Keys waiting, due now or later."""
        return len(self._due)

    def close(self) -> None:
        self._closed = True
        self._changed.set()
