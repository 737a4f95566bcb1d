"""What the operator's processes share: the Kubernetes client configuration, serving /metrics and the
probes on their ports, and running until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import signal
import socket
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Protocol, TypeVar

import psycopg
import structlog
from kubernetes import client, config

from controller.api import types
from controller.api.validation import InvalidSpecError
from controller.app import health
from controller.gateway import server
from controller.metrics.exposition import OperatorMetrics
from controller.postgres import pooler
from controller.runtime.base import Store

log = structlog.get_logger("process")
T = TypeVar("T")


class PortInUseError(Exception):
    """A port the process must serve on is taken; the message says which flag moves it."""


def api_client() -> client.ApiClient:
    """In-cluster configuration when in a pod, else the current kubeconfig context."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def bind(serve: Callable[[int], T], *, port: int | None, default: int, flag: str, what: str) -> T:
    """Serve on `port` (None: `default`, or any free port when that one is taken).

    A port the user chose that is taken is an error naming the flag; so is one that is refused.
    """
    try:
        return serve(default if port is None else port)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise PortInUseError(
                f"cannot serve {what} on port {port or default} ({flag}): {error.strerror}"
            ) from None
        if port is not None:
            raise PortInUseError(
                f"port {port} ({flag}) is already in use, perhaps by another `sdb`; "
                f"choose another with {flag} PORT, 0 for any free port, or -1 for none"
            ) from None
    chosen = serve(0)
    log.warning(f"port {default} is taken: serving {what} on another ({flag} sets it)", what=what)
    return chosen


def serve_metrics(exposition: OperatorMetrics, args: argparse.Namespace, *, default: int) -> int | None:
    """/metrics on `--metrics-port` (-1: none); returns the port served."""
    if args.metrics_port is not None and args.metrics_port < 0:
        return None
    port = bind(
        lambda p: exposition.serve(p, args.metrics_address),
        port=args.metrics_port,
        default=default,
        flag="--metrics-port",
        what="/metrics",
    )
    log.info("serving metrics", address=f"http://{args.metrics_address}:{port}/metrics")
    return port


def gateway_socket(args: argparse.Namespace, *, default: int) -> socket.socket | None:
    """The gateway's listening socket on `--gateway-port` (-1: none); plain HTTP (`--gateway-plaintext`)
    only where `--gateway-address` is loopback."""
    if args.gateway_port is not None and args.gateway_port < 0:
        return None
    return bind(
        lambda p: server.listen(args.gateway_address, p, tls=not args.gateway_plaintext),
        port=args.gateway_port,
        default=default,
        flag="--gateway-port",
        what="the SQL-over-HTTP gateway",
    )


@contextlib.contextmanager
def probes(args: argparse.Namespace, *, default: int, ready: Callable[[], bool]) -> Iterator[None]:
    """/healthz and /readyz on `--health-port` (-1: none) while the block runs."""
    if args.health_port is not None and args.health_port < 0:
        yield
        return
    server = bind(
        lambda p: health.serve(p, ready=ready),
        port=args.health_port,
        default=default,
        flag="--health-port",
        what="the health probes",
    )
    try:
        yield
    finally:
        server.shutdown()


async def until_signalled(work: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run `work` until SIGINT or SIGTERM sets its stop event (or it returns by itself)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    try:
        return await work(stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)


POOLER_READ_SECONDS = 5.0
"""How often each pooler's statistics are read onto /metrics (PgBouncer averages over 10 s)."""


class Poolers(Protocol):
    """A runtime's poolers, as the statistics reader finds them."""

    def pooled(self) -> Collection[str]:
        """The databases this runtime has made a pooler for (kept in its memory: no list of the fleet)."""

    def pooler_console(self, db: types.ServerlessDatabase) -> pooler.Console | None:
        """Where the database's pooler answers on its admin console (None: none serves)."""


async def watch_poolers(
    store: Store, poolers: Poolers, exposition: OperatorMetrics, *, every: float = POOLER_READ_SECONDS
) -> None:
    """PgBouncer's statistics onto /metrics, in either runtime: SHOW POOLS and SHOW STATS on each
    serving pooler's console. A reading that fails is skipped (the pass reports a pooler that does
    not serve). Only databases with a pooler are read from the store: decoding all ten thousand of a
    fleet every few seconds would be most of the operator's CPU."""
    watched: set[str] = set()
    while True:
        pooled: set[str] = set()
        for key in list(poolers.pooled()):
            try:
                db = await store.get(key)
            except InvalidSpecError:
                continue  # reported when that object is reconciled
            console = poolers.pooler_console(db) if db is not None and db.spec.pooling.enabled else None
            if db is None or console is None:
                continue
            pooled.add(db.key)
            try:
                stats = await pooler.read(console)
            except (psycopg.Error, OSError) as error:
                log.debug("pooler statistics not read", database=db.key, error=str(error))
                continue
            exposition.observe_pooler(db.metadata.namespace, db.metadata.name, stats)
        for key in watched - pooled:
            exposition.forget_pooler(*types.split_key(key))
        watched = pooled
        await asyncio.sleep(every)
