"""How a gateway request reaches its database: admitted, known, then straight there or held while it
wakes, through the very wake the activator's connections share (one per database, 57P03 on failure).

Nothing is woken for a database that does not exist, nor for a client its namespace rules refuse.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from psycopg.conninfo import make_conninfo

from controller.activator import protocol, proxy
from controller.activator.proxy import Upstream, WakeError
from controller.api import types
from controller.gateway.request import RequestError

MiB = 1 << 20


class Door(enum.StrEnum):
    """Which door a client came through: a label of the gateway's metrics."""

    HTTP = "http"
    WEBSOCKET = "websocket"


class Backend(proxy.Backend, Protocol):
    """The activator's backend, and what the gateway asks beside it."""

    async def exists(self, key: str) -> bool: ...

    def awake(self, key: str) -> bool:
        """Whether sessions kept from earlier requests still lead to a running server."""

    async def admits(self, key: str, peer: tuple[str, int]) -> bool:
        """Whether a client at this address may reach this database at all."""


class Observer(Protocol):
    def gateway_held(self, key: str, door: Door, delta: int) -> None: ...

    def gateway_served(self, key: str, door: Door, seconds: float) -> None: ...

    def gateway_refused(self, door: Door, reason: str) -> None: ...


class NoObserver:
    def gateway_held(self, key: str, door: Door, delta: int) -> None:
        pass

    def gateway_served(self, key: str, door: Door, seconds: float) -> None:
        pass

    def gateway_refused(self, door: Door, reason: str) -> None:
        pass


@dataclass(frozen=True)
class Limits:
    """What one client can make the gateway hold; Neon's defaults where it has them."""

    max_request_bytes: int = 10 * MiB
    """A `/sql` body larger than this gets 413."""
    max_response_bytes: int = 10 * MiB
    """A `/sql` answer larger than this gets 507, and its query is cancelled."""
    statement_timeout: float = 30.0
    """Seconds each statement of a `/sql` request may run before the gateway cancels it (57014)."""
    wake_timeout: float = 30.0
    max_in_flight: int = 1000
    """`/sql` requests and WebSocket sessions being served or held at once, over every database."""
    startup_timeout: float = 10.0
    """Seconds a WebSocket client has to send its StartupMessage."""
    max_message_bytes: int = 16 * MiB
    """The largest WebSocket message taken from a client: a frame is buffered whole."""


@dataclass(frozen=True)
class PostgresTls:
    """How the gateway's own connections to Postgres are encrypted: checked against the operator's CA
    when it is given (libpq's verify-full), else encrypted whenever the server offers it (prefer)."""

    ca: Path | None = None

    def conninfo(self) -> str:
        """For libpq (psycopg's connect)."""
        if self.ca is None:
            return make_conninfo(sslmode="prefer")
        return make_conninfo(sslmode="verify-full", sslrootcert=str(self.ca))

    @functools.cached_property
    def context(self) -> ssl.SSLContext:
        if self.ca is None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=str(self.ca))

    async def start(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        """Ask for TLS on a new connection to Postgres (an SSLRequest), and take it when offered: what a
        relayed client sends after this is encrypted to Postgres itself."""
        writer.write(protocol.ssl_request())
        await writer.drain()
        try:
            answer = await reader.readexactly(1)
        except asyncio.IncompleteReadError:
            raise ConnectionError("the database closed the connection before answering TLS") from None
        if answer == b"S":
            await writer.start_tls(self.context, server_hostname=host)
        elif answer != protocol.DECLINE_ENCRYPTION or self.ca is not None:
            raise ConnectionError("the database does not offer TLS")


class Reach:
    def __init__(
        self, backend: Backend, limits: Limits, observer: Observer, tls: PostgresTls | None = None
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.observer = observer
        self.tls = tls or PostgresTls()

    async def check(self, key: str, peer: tuple[str, int]) -> None:
        """Refuse a database the client may not reach, or that does not exist (the same answer)."""
        if not await self.backend.exists(key) or not await self.backend.admits(key, peer):
            namespace, name = types.split_key(key)
            raise RequestError(
                f'database "{name}" in namespace "{namespace}" does not exist',
                code="3D000",
                reason="unknown_database",
            )

    async def upstream(self, key: str, door: Door) -> Upstream:
        """Where the database's Postgres is now, held while a wake brings it up if it rests."""
        upstream = await self.backend.upstream(key)
        if upstream is not None:
            return upstream
        self.observer.gateway_held(key, door, 1)
        try:
            return await proxy.wake_within(self.backend, key, self.limits.wake_timeout)
        except WakeError as error:
            raise RequestError(str(error), code=protocol.CANNOT_CONNECT_NOW, reason="wake_failed") from None
        finally:
            self.observer.gateway_held(key, door, -1)
