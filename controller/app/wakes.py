"""One wake per database in flight, however many clients wait on it: what both activator backends share."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import structlog

from controller.activator.proxy import WakeError

log = structlog.get_logger("wakes")

T = TypeVar("T")


class Wakes(Generic[T]):
    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[T]] = {}
        self._requests: set[asyncio.Task[None]] = set()

    def join(self, key: str, request: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Future[T]:
        """The wake in flight for `key`, or a new one whose `request` asks for it.

        A new wake is registered before its request first awaits, so every client that arrives
        meanwhile shares it. A request that raises fails the wake: a WakeError with its own message.
        """
        future = self._pending.get(key)
        if future is not None:
            return future
        future = asyncio.get_running_loop().create_future()
        # Nobody may be left to read a failure (every client timed out); do not warn about it then.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending[key] = future

        async def run() -> None:
            try:
                await request()
            except WakeError as error:
                self.fail(key, str(error))
            except Exception as error:  # the clients must hear why, not wait out their timeout
                log.warning("could not ask for a wake", database=key, error=str(error))
                self.fail(key, f"could not ask for a wake: {error}")

        task = asyncio.ensure_future(run())
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)
        return future

    def waiting(self, key: str) -> bool:
        return key in self._pending

    def succeed(self, key: str, value: T) -> None:
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(value)

    def fail(self, key: str, message: str) -> None:
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_exception(WakeError(message))
