"""Sessions kept between `/sql` requests, per (database, user, password, database name, application).

A kept session is a client session to the operator: it keeps its database from pausing. So a session
is closed after `idle_timeout` without a request (seconds, well below any sensible
`autoPause.idleAfter`: it delays a pause by at most that much), and the sessions of a database that
is no longer awake are closed when a request finds them (they lead to a server that is stopping or
gone). The password (or token) is part of the key, so a session is only reused by a client that gave
the very password or token it was opened with; only a digest of it is kept in the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from controller.gateway import request
from controller.gateway.upstream import Session

IDLE_TIMEOUT = 2.0
MAX_PER_DATABASE = 32
"""Sessions one database may have open through the gateway, in use or kept; more requests wait."""


@dataclass(frozen=True)
class Role:
    key: str
    user: str
    database: str
    application_name: str
    password_digest: bytes = field(repr=False)

    @classmethod
    def of(cls, credentials: request.Credentials) -> Role:
        kind = b"token\0" if credentials.token else b"password\0"  # the two kinds never share a session
        digest = hashlib.sha256(kind + credentials.secret.encode()).digest()
        return cls(
            credentials.key, credentials.user, credentials.database, credentials.application_name, digest
        )


@dataclass
class _Kept:
    session: Session
    since: float


class Pool:
    def __init__(
        self, *, idle_timeout: float = IDLE_TIMEOUT, max_per_database: int = MAX_PER_DATABASE
    ) -> None:
        self.idle_timeout = idle_timeout
        self.max_per_database = max_per_database
        self._kept: dict[Role, list[_Kept]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None

    def slot(self, key: str) -> asyncio.Semaphore:
        """A turn for one request on this database (`async with`): at most `max_per_database` at once."""
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self.max_per_database)
        return slots

    async def take(self, role: Role) -> Session | None:
        """The most recently used kept session of this role, once its reset is known to have
        succeeded, or None. The reset went out behind the session's last request, so its answer has
        usually arrived by the time a request takes it: a client that sends requests one after the
        other goes on with one session, and no reset costs a wake-up of its own."""
        while kept := self._kept.get(role):
            session = kept.pop().session
            try:
                await session.reset()
            except asyncio.CancelledError:
                self._spawn(session.close())  # its answer half read: of no use to anyone
                raise
            if session.idle:
                return session
            self._spawn(session.close())
        return None

    def give(self, role: Role, session: Session) -> None:
        """Back from a request: kept (its reset is checked when it is taken again), or closed if the
        request left it unusable (lost, interrupted, or a transaction left open)."""
        if session.broken:
            self._spawn(session.close())
            return
        self._kept.setdefault(role, []).append(_Kept(session, asyncio.get_running_loop().time()))
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap())

    def forget(self, key: str) -> None:
        """Close every kept session of a database (it is pausing, or gone)."""
        for role in [r for r in self._kept if r.key == key]:
            for kept in self._kept.pop(role):
                self._spawn(kept.session.close())

    def kept(self, key: str) -> int:
        return sum(len(k) for r, k in self._kept.items() if r.key == key)

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        while self._kept:
            await asyncio.sleep(self.idle_timeout / 4)
            deadline = loop.time() - self.idle_timeout
            for role in list(self._kept):
                kept = self._kept[role]
                stale = [k for k in kept if k.since <= deadline]
                kept[:] = [k for k in kept if k.since > deadline]
                if not kept:
                    del self._kept[role]
                for k in stale:
                    await k.session.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for key in {r.key for r in self._kept}:
            self.forget(key)
        await asyncio.gather(*self._tasks, return_exceptions=True)
