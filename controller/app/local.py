"""The local operator, assembled: file store, local runtime, in-process activator, metrics, reconciler.

`sdb up` runs it in the foreground; Ctrl-C (or SIGTERM) stops it, and its Postgres servers, cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import structlog

from controller.activator.proxy import Activator, Upstream, WakeError
from controller.api import types
from controller.app import process
from controller.app.wakes import Wakes
from controller.gateway import server
from controller.gateway.reach import Limits, PostgresTls
from controller.gateway.server import Gateway
from controller.identity import tokens
from controller.identity.authenticate import Authenticator
from controller.identity.endpoint import IdentityEndpoint
from controller.metrics.exposition import OperatorMetrics
from controller.metrics.postgres import PostgresSource
from controller.policy.inputs import DEFAULT_TUNING, Tuning
from controller.postgres.sessions import OperatorSessions
from controller.reconciler.loop import Reconciler
from controller.runtime.base import Store
from controller.runtime.local import files
from controller.runtime.local.runtime import CA_CERTIFICATE, LocalRuntime
from controller.runtime.local.server import IDENTITY_SOURCE
from controller.runtime.local.store import FileStore

log = structlog.get_logger("operator")


class Endpoints(Protocol):
    """What the activator needs of the local runtime: where each endpoint sends connections now."""

    def upstream(self, key: str) -> Upstream | None: ...

    def running(self, key: str) -> Upstream | None: ...

    def routed_direct(self, key: str) -> bool: ...


class Waker(Protocol):
    def wake(self, key: str) -> None: ...


class Specs(Store, Protocol):
    """The store, and each object's spec as last parsed (the file store's `read_spec`)."""

    def read_spec(self, key: str) -> types.DatabaseSpec | None: ...


class LocalBackend:
    """The activator's view of the local operator: where a database is, and how to wake it.

    It is also the reconciler's wake listener: one wake per database is in flight at a time, and
    every held connection waits on it.
    """

    def __init__(self, store: Specs) -> None:
        self.store = store
        self.runtime: Endpoints | None = None
        self.reconciler: Waker | None = None
        self._wakes: Wakes[None] = Wakes()

    def bind(self, runtime: Endpoints, reconciler: Waker) -> None:
        self.runtime, self.reconciler = runtime, reconciler

    async def upstream(self, key: str) -> Upstream | None:
        assert self.runtime is not None
        return self.runtime.upstream(key)

    async def wake(self, key: str) -> Upstream:
        assert self.runtime is not None
        await asyncio.shield(self._wakes.join(key, lambda: self._request(key)))
        upstream = self.runtime.running(key)
        if upstream is None:
            raise WakeError(f"database {key} stopped again before the connection could be made")
        return upstream

    async def _request(self, key: str) -> None:
        """Ask the reconciler for a wake, or refuse at once when the spec keeps the database at rest."""
        assert self.reconciler is not None
        db = await self.store.get(key)
        if db is None:
            raise WakeError(f"database {key} does not exist")
        if db.spec.state in (types.State.PAUSED, types.State.PARKED):
            raise WakeError(
                f"database {key} is {db.spec.state.value.lower()} by its spec.state; "
                f"`sdb resume {db.metadata.name}` lets clients in again"
            )
        await self.store.request_wake(key)
        self.reconciler.wake(key)

    async def exists(self, key: str) -> bool:
        # A running database exists: only one at rest costs a read of its file (in a thread).
        return self.awake(key) or await self.store.get(key) is not None

    def awake(self, key: str) -> bool:
        """Asked on every /sql request, so from the route alone: a kept session to a server that has
        died since is found broken when it is used, and a new one asks for `upstream`."""
        assert self.runtime is not None
        return self.runtime.routed_direct(key)

    async def admits(self, key: str, peer: tuple[str, int]) -> bool:
        """Every local client is on this host, where each database's endpoint is open to all."""
        return True

    async def identities(self, key: str) -> Sequence[types.IdentitySpec] | None:
        """Asked on every token check: from the spec as the store last parsed it, while its file
        stays the same."""
        spec = self.store.read_spec(key)
        return None if spec is None else spec.access.identities

    def ready(self, key: str) -> None:
        self._wakes.succeed(key, None)

    def failed(self, key: str, message: str) -> None:
        self._wakes.fail(key, message)


@dataclass
class LocalOperator:
    store: FileStore
    runtime: LocalRuntime
    activator: Activator
    source: PostgresSource
    reconciler: Reconciler
    exposition: OperatorMetrics
    gateway: Gateway
    metrics_port: int | None = None


def build(
    state_dir: Path,
    *,
    wake_timeout: float = 30.0,
    tuning: Tuning = DEFAULT_TUNING,
    kernel_redirect: bool = True,
    issuers: Sequence[tokens.Issuer] = (),
) -> LocalOperator:
    """Wire the parts; nothing touches the world until `run` opens them. `issuers`: the OIDC issuers
    whose tokens the identity endpoints take (locally there is no TokenReview)."""
    store = FileStore(state_dir)
    exposition = OperatorMetrics()
    backend = LocalBackend(store)
    activator = Activator(backend, wake_timeout=wake_timeout, observer=exposition, tls=True)
    sessions = OperatorSessions()
    identity = IdentityEndpoint(
        backend,
        Authenticator(issuers=issuers, observer=exposition),
        wake_timeout=wake_timeout,
        source_address=IDENTITY_SOURCE,
    )
    runtime = LocalRuntime(
        state_dir, activator, sessions=sessions, kernel_redirect=kernel_redirect, identity=identity
    )
    source = PostgresSource(
        runtime.address, sessions=sessions, usage=runtime.usage, pending=activator.in_hand
    )
    reconciler = Reconciler(
        store=store, runtime=runtime, metrics=source, exposition=exposition, tuning=tuning, listener=backend
    )
    backend.bind(runtime, reconciler)
    gateway = Gateway(
        backend,
        limits=Limits(wake_timeout=wake_timeout),
        observer=exposition,
        postgres_tls=PostgresTls(ca=state_dir / CA_CERTIFICATE),  # every local server has its certificate
        identity=identity,
    )
    return LocalOperator(store, runtime, activator, source, reconciler, exposition, gateway)


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
    async def upstream(self, key: str) -> Upstream | None:
        return None

    async def wake(self, key: str) -> Upstream:
        raise WakeError("the operator is not running")


async def delete_offline(state_dir: Path, db: types.ServerlessDatabase, *, keep_storage: bool) -> None:
    """Finalize a deleted database when no operator runs: stop its server, drop its storage if asked."""
    await LocalRuntime(state_dir, Activator(_NoWakes())).delete(db, keep_storage=keep_storage)


METRICS_PORT = 9465
GATEWAY_PORT = 9443
GATEWAY_RECORD = "gateway.json"
"""Where the running operator's gateway listens, for `sdb dsn --http` and `--ws`."""


@dataclass(frozen=True)
class GatewayAddress:
    host: str
    port: int
    tls: bool

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}{'s' if self.tls else ''}://{self.host}:{self.port}{path}"


def read_gateway(state_dir: Path) -> GatewayAddress | None:
    """The gateway of the operator that runs for this state directory, if one runs with a gateway."""
    if not running(state_dir):
        return None
    try:
        record = json.loads((state_dir / GATEWAY_RECORD).read_text())
        return GatewayAddress(str(record["host"]), int(record["port"]), bool(record["tls"]))
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def run(operator: LocalOperator, args: argparse.Namespace) -> None:
    """`sdb up`: serve /metrics, run until SIGINT or SIGTERM, then stop every server cleanly."""
    record = operator.store.root / GATEWAY_RECORD

    async def serve(stop: asyncio.Event) -> None:
        # The ports first: a taken one is refused before anything on the host is touched.
        operator.metrics_port = process.serve_metrics(operator.exposition, args, default=METRICS_PORT)
        gateway = process.gateway_socket(args, default=GATEWAY_PORT)
        await operator.runtime.open()
        poolers = asyncio.create_task(
            process.watch_poolers(operator.store, operator.runtime, operator.exposition)
        )
        try:
            if gateway is not None:
                host = "127.0.0.1" if args.gateway_address in ("0.0.0.0", "::") else args.gateway_address
                context = None
                if not args.gateway_plaintext:
                    names = sorted({host, "127.0.0.1", "localhost"})
                    context = server.tls_context(*operator.runtime.gateway_certificate(names))
                port = await operator.gateway.start(gateway, ssl_context=context)
                address = GatewayAddress(host, port, tls=context is not None)
                files.write_private(record, json.dumps(dataclasses.asdict(address)))
                log.info("serving SQL over HTTP and WebSocket", address=address.url("http", "/sql"))
            await operator.reconciler.start()
            log.info("operator running", runtime="local", state_dir=str(operator.store.root))
            await stop.wait()
        finally:
            poolers.cancel()
            log.info("stopping: shutting Postgres servers down cleanly")
            record.unlink(missing_ok=True)
            await operator.gateway.close()
            await operator.reconciler.stop()
            await operator.activator.close()
            if operator.runtime.identity is not None:
                await operator.runtime.identity.close()
            await operator.source.close()
            await operator.runtime.close()
            await operator.reconciler.mark_stopped()
            log.info("stopped")

    asyncio.run(process.until_signalled(serve))
