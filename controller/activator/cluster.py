"""The activator as its own Deployment in a cluster.

How it knows which database a connection is for: each ServerlessDatabase gets a port on the
activator (annotation `dbscale.io/activator-port`, assigned once by the operator). The activator
listens on every such port; while a database rests, the operator points its client Service's
EndpointSlice at the activator's pods on that port, so a connection's local port names the database.

How it wakes one: it sets the `dbscale.io/wake-request` annotation (an API write, so it needs no
port into the operator) and waits, on its watch of ServerlessDatabases, for the status to answer
that request: Active and Ready, or a failure whose message each held client then reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from controller.activator.proxy import Activator, WakeError
from controller.api import codec, types
from controller.runtime.base import Target
from controller.runtime.kubernetes import builders
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes.informer import Informer
from controller.runtime.kubernetes.store import KubeStore

log = structlog.get_logger("activator.cluster")


def pod_address(db: types.ServerlessDatabase) -> Target:
    """The database pod's stable DNS name (resolvable once it is Ready: the headless Service's record)."""
    names = builders.Names.of(db.metadata.name)
    return Target(f"{names.pod}.{names.headless}.{db.metadata.namespace}.svc", builders.POSTGRES_PORT)


@dataclass
class _Wake:
    token: str
    future: asyncio.Future[Target]


class ClusterBackend:
    """Ports from annotations, wakes by annotation, readiness from status; one wake per database at a time."""

    def __init__(
        self,
        kube: kc.Kube,
        *,
        namespace: str | None = None,
        address: Callable[[types.ServerlessDatabase], Target] = pod_address,
        listen_host: str = "0.0.0.0",
        port_range: tuple[int, int] = (20000, 29999),
        wake_timeout: float = 30.0,
    ) -> None:
        self.kube = kube
        self.address = address
        self.listen_host = listen_host
        self.port_range = port_range
        self.databases = Informer(kube, kc.DATABASES, namespace=namespace, on_change=self._changed)
        self.store = KubeStore(kube, self.databases)
        self.activator = Activator(self, wake_timeout=wake_timeout)
        self._wakes: dict[str, _Wake] = {}
        self._ports: dict[str, int] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def _db(self, key: str) -> types.ServerlessDatabase | None:
        namespace, _, name = key.partition("/")
        raw = self.databases.get(namespace, name)
        if raw is None:
            return None
        try:
            return codec.decode(raw)
        except ValueError:
            return None

    async def target(self, key: str) -> Target | None:
        """Never a shortcut: a connection only reaches the activator when the operator routed it here,
        and a status that still says Active may be one write behind a pause. Every connection asks."""
        return None

    async def wake(self, key: str) -> Target:
        wake = self._wakes.get(key)
        if wake is None:
            db = self._db(key)
            if db is None:
                raise WakeError(f"database {key} does not exist")
            if db.spec.state in (types.State.PAUSED, types.State.PARKED):
                raise WakeError(
                    f"database {key} is {db.spec.state.value.lower()} by its spec.state; "
                    "set it to Auto or Active to connect"
                )
            future: asyncio.Future[Target] = asyncio.get_running_loop().create_future()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            wake = _Wake("", future)
            self._wakes[key] = wake  # before the first await: every client arriving meanwhile shares it
            try:
                wake.token = await self.store.request_wake(key)
            except kc.ApiError as error:
                self._wakes.pop(key, None)
                future.set_exception(WakeError(f"could not ask for a wake: {error.message}"))
            else:
                self._check(key)
        return await asyncio.shield(wake.future)

    def _check(self, key: str) -> None:
        """Settle a pending wake from the database's status, if the operator has answered it."""
        wake = self._wakes.get(key)
        db = self._db(key)
        if wake is None or not wake.token or db is None:
            return
        if db.status.wake_request != wake.token:
            return  # not answered yet (an Active status from before the request proves nothing)
        if db.status.phase is types.Phase.ACTIVE and _ready(db):
            del self._wakes[key]
            wake.future.set_result(self.address(db))
        else:
            ready = db.status.condition(types.ConditionType.READY)
            if (
                db.status.phase in (types.Phase.PAUSED, types.Phase.PARKED, types.Phase.FAILED)
                and ready is not None
            ):
                del self._wakes[key]
                wake.future.set_exception(WakeError(f"the database could not be woken: {ready.message}"))

    def _changed(self, key: str, obj: dict[str, Any], deleted: bool) -> None:
        port = ((obj.get("metadata") or {}).get("annotations") or {}).get(builders.ACTIVATOR_PORT_ANNOTATION)
        if deleted or not port:
            if key in self._ports:
                self._spawn(self._unlisten(key))
            wake = self._wakes.pop(key, None)
            if wake is not None and deleted:
                wake.future.set_exception(WakeError(f"database {key} was deleted"))
            return
        if self._ports.get(key) != int(port):
            self._spawn(self._listen(key, int(port)))
        self._check(key)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _listen(self, key: str, port: int) -> None:
        low, high = self.port_range
        if not low <= port <= high:
            log.warning("activator port outside the range", database=key, port=port)
            return
        if key in self._ports:
            await self.activator.unlisten(key)
        try:
            await self.activator.listen(key, self.listen_host, port)
        except OSError as error:
            log.warning("cannot listen for a database", database=key, port=port, error=str(error))
            return
        self._ports[key] = port

    async def _unlisten(self, key: str) -> None:
        self._ports.pop(key, None)
        await self.activator.unlisten(key)

    async def run(self, stop: asyncio.Event) -> None:
        task = asyncio.create_task(self.databases.run())
        try:
            await stop.wait()
        finally:
            self.databases.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.activator.close()

    def ready(self) -> bool:
        return self.databases.synced.is_set()


def _ready(db: types.ServerlessDatabase) -> bool:
    ready = db.status.condition(types.ConditionType.READY)
    return ready is not None and ready.status is types.ConditionStatus.TRUE
