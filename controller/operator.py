"""The local operator, assembled: file store, local runtime, in-process activator, metrics, reconciler.

`sdb up` runs it in the foreground; Ctrl-C (or SIGTERM) stops it, and its Postgres servers, cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import structlog

from controller.activator.proxy import Activator, WakeError
from controller.api import types
from controller.metrics import local
from controller.metrics.exposition import OperatorMetrics
from controller.metrics.postgres import PostgresSource
from controller.policy.inputs import DEFAULT_TUNING, Route, Tuning
from controller.reconciler.loop import Reconciler
from controller.runtime.base import Store, Target
from controller.runtime.local import postgres
from controller.runtime.local.runtime import LocalRuntime
from controller.runtime.local.store import FileStore, split_key

log = structlog.get_logger("operator")


class Endpoints(Protocol):
    """What the activator needs of the local runtime: where each endpoint sends connections now."""

    def route_of(self, key: str) -> Route: ...

    def running_target(self, key: str) -> Target | None: ...


class Waker(Protocol):
    def trigger(self, key: str) -> None: ...


class LocalBackend:
    """The activator's view of the local operator: where a database is, and how to wake it.

    It is also the reconciler's wake listener: one wake per database is in flight at a time, and
    every held connection waits on it.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.runtime: Endpoints | None = None
        self.reconciler: Waker | None = None
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._requests: set[asyncio.Task[None]] = set()

    def bind(self, runtime: Endpoints, reconciler: Waker) -> None:
        self.runtime, self.reconciler = runtime, reconciler

    async def target(self, key: str) -> Target | None:
        assert self.runtime is not None
        if self.runtime.route_of(key) is not Route.DIRECT:
            return None
        return self.runtime.running_target(key)

    async def wake(self, key: str) -> Target:
        assert self.runtime is not None
        future = self._waiting.get(key)
        if future is None:
            # Registered before the first await, so every client that arrives meanwhile shares this wake.
            future = asyncio.get_running_loop().create_future()
            # Nobody may be left to read a failure (every client timed out); do not warn about it then.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._waiting[key] = future
            task = asyncio.ensure_future(self._request(key, future))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
        await asyncio.shield(future)
        target = self.runtime.running_target(key)
        if target is None:
            raise WakeError(f"database {key} stopped again before the connection could be made")
        return target

    async def _request(self, key: str, future: asyncio.Future[None]) -> None:
        """Ask the reconciler for a wake, or refuse at once when the spec keeps the database at rest."""
        assert self.reconciler is not None
        try:
            db = await self.store.get(key)
            if db is None:
                raise WakeError(f"database {key} does not exist")
            if db.spec.state in (types.State.PAUSED, types.State.PARKED):
                name = split_key(key)[1]
                raise WakeError(
                    f"database {key} is {db.spec.state.value.lower()} by its spec.state; "
                    f"`sdb resume {name}` lets clients in again"
                )
            await self.store.request_wake(key)
        except (WakeError, OSError) as error:
            self.failed(key, str(error))
            return
        self.reconciler.trigger(key)

    def ready(self, key: str) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(None)

    def failed(self, key: str, message: str) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_exception(WakeError(message))


@dataclass
class LocalOperator:
    store: FileStore
    runtime: LocalRuntime
    activator: Activator
    source: PostgresSource
    reconciler: Reconciler
    exposition: OperatorMetrics
    metrics_port: int | None = None


def build(
    state_dir: Path,
    *,
    wake_timeout: float = 30.0,
    tuning: Tuning = DEFAULT_TUNING,
    kernel_redirect: bool = True,
) -> LocalOperator:
    """Wire the parts; nothing touches the world until `run` opens them."""
    store = FileStore(state_dir)
    exposition = OperatorMetrics()
    backend = LocalBackend(store)
    activator = Activator(backend, wake_timeout=wake_timeout, observer=exposition)
    runtime = LocalRuntime(state_dir, activator, kernel_redirect=kernel_redirect)
    source = local.source(runtime)
    reconciler = Reconciler(
        store=store, runtime=runtime, metrics=source, exposition=exposition, tuning=tuning, listener=backend
    )
    backend.bind(runtime, reconciler)
    return LocalOperator(store, runtime, activator, source, reconciler, exposition)


class AlreadyRunningError(RuntimeError):
    pass


@contextlib.contextmanager
def exclusive(state_dir: Path) -> Iterator[IO[str]]:
    """Hold the state directory's operator lock: one operator per state directory."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = open(state_dir / "operator.lock", "a+")  # noqa: SIM115 - held for the operator's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise AlreadyRunningError(f"an operator already runs for {state_dir} (pid {holder})") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    try:
        yield lock
    finally:
        lock.close()


def running(state_dir: Path) -> bool:
    """Whether an operator holds this state directory's lock."""
    path = state_dir / "operator.lock"
    if not path.exists():
        return False
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


class _NoWakes:
    async def target(self, key: str) -> Target | None:
        return None

    async def wake(self, key: str) -> Target:
        raise WakeError("the operator is not running")


async def delete_offline(state_dir: Path, db: types.ServerlessDatabase, *, keep_storage: bool) -> None:
    """Finalize a deleted database when no operator runs: stop its server, drop its storage if asked."""
    runtime = LocalRuntime(state_dir, Activator(_NoWakes()))
    runtime.user = await asyncio.to_thread(postgres.ServerUser.for_this_process)
    await runtime.delete(db, keep_storage=keep_storage)


async def run(
    operator: LocalOperator,
    *,
    metrics_port: int | None,
    metrics_address: str = "127.0.0.1",
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run until `stop` is set or SIGINT/SIGTERM arrives; then stop servers cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    await operator.runtime.open()
    if metrics_port is not None:
        operator.metrics_port = operator.exposition.serve(metrics_port, metrics_address)
        log.info("serving metrics", address=f"http://{metrics_address}:{operator.metrics_port}/metrics")
    await operator.reconciler.start()
    log.info("operator running", runtime="local", state_dir=str(operator.store.root))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("stopping: shutting Postgres servers down cleanly")
        await operator.reconciler.stop()
        await operator.activator.close()
        await operator.source.close()
        await operator.runtime.close()
        await operator.reconciler.mark_stopped()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
        log.info("stopped")
