"""The activator: an asyncio TCP proxy that holds connections to a sleeping database and wakes it.

A connection to a database that is not ready is held (never refused) while the backend wakes it,
one wake for any number of clients; then bytes are relayed both ways with back-pressure, starting
with whatever the client already sent (an SSLRequest, a GSSENCRequest or a StartupMessage reach
Postgres untouched). If the wake fails or takes longer than the wake timeout, each held client
gets a Postgres ErrorResponse with SQLSTATE 57P03 and the reason, never a bare close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from controller.activator import negotiation, protocol

log = structlog.get_logger("activator")

RELAY_CHUNK = 256 * 1024
STARTUP_READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class Upstream:
    """Where the activator relays a held connection once its database is awake."""

    host: str
    port: int


class WakeError(Exception):
    """A wake that failed or was refused; the message is what the client reads."""


class Backend(Protocol):
    async def upstream(self, key: str) -> Upstream | None:
        """Where to connect now, or None when the database must be woken first."""

    async def wake(self, key: str) -> Upstream:
        """Wake the database (shared by every caller while one is under way); raises WakeError."""


class Observer(Protocol):
    def held(self, key: str, delta: int) -> None: ...


class _NoObserver:
    def held(self, key: str, delta: int) -> None:
        pass


class Activator:
    def __init__(
        self, backend: Backend, *, wake_timeout: float = 30.0, observer: Observer | None = None
    ) -> None:
        self.backend = backend
        self.wake_timeout = wake_timeout
        self.observer = observer or _NoObserver()
        self._servers: dict[str, asyncio.Server] = {}
        self._connections: set[asyncio.Task[None]] = set()

    async def listen(self, key: str, host: str, port: int) -> int:
        """Accept connections for database `key` on host:port (0 picks a port); returns the port."""
        if key in self._servers:
            return int(self._servers[key].sockets[0].getsockname()[1])
        server = await asyncio.start_server(
            self._handler(key), host, port, reuse_address=True, backlog=1024, limit=RELAY_CHUNK
        )
        self._servers[key] = server
        return int(server.sockets[0].getsockname()[1])

    def listening(self, key: str) -> int | None:
        server = self._servers.get(key)
        return int(server.sockets[0].getsockname()[1]) if server else None

    async def unlisten(self, key: str) -> None:
        server = self._servers.pop(key, None)
        if server is not None:
            server.close()
            await server.wait_closed()

    async def close(self) -> None:
        for key in list(self._servers):
            await self.unlisten(key)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    def _handler(
        self, key: str
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], asyncio.Future[None]]:
        def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> asyncio.Future[None]:
            task = asyncio.ensure_future(self._serve(key, reader, writer))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
            return task

        return handle

    async def _serve(self, key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _no_delay(writer)
        try:
            upstream = await self.backend.upstream(key)
            if upstream is None:
                upstream = await self._hold(key, reader, writer)
                if upstream is None:
                    return
            await _relay(reader, writer, upstream)
        except (ConnectionError, OSError) as error:
            log.debug("connection ended", database=key, error=str(error))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _hold(
        self, key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Upstream | None:
        self.observer.held(key, 1)
        try:
            return await asyncio.wait_for(self.backend.wake(key), self.wake_timeout)
        except TimeoutError:
            reason = f"the database is starting and was not ready within {self.wake_timeout:g}s; try again"
        except WakeError as error:
            reason = str(error)
        finally:
            self.observer.held(key, -1)
        log.warning("refusing held connection", database=key, reason=reason)
        await refuse(reader, writer, protocol.CANNOT_CONNECT_NOW, reason)
        return None


async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: str, message: str) -> None:
    """Answer as Postgres does when it cannot take a connection: decline encryption, then an error."""
    startup = negotiation.Negotiation()
    try:
        while startup.decision is None:
            data = await asyncio.wait_for(reader.read(startup.wanted), STARTUP_READ_TIMEOUT)
            actions = startup.receive(data) if data else startup.receive_eof()
            for action in actions:
                if isinstance(action, negotiation.Reply):
                    writer.write(action.data)
                elif isinstance(action, negotiation.Wake):
                    writer.write(protocol.error_response(code, message))
                elif isinstance(action, negotiation.Refuse):
                    writer.write(protocol.error_response(action.code, action.message))
                # Close: a CancelRequest, a bad length or nothing at all get no answer.
            await writer.drain()
    except (TimeoutError, ConnectionError, OSError):
        return


async def _relay(
    client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, upstream: Upstream
) -> None:
    server_reader, server_writer = await asyncio.open_connection(
        upstream.host, upstream.port, limit=RELAY_CHUNK
    )
    _no_delay(server_writer)
    try:
        await asyncio.gather(_pump(client_reader, server_writer), _pump(server_reader, client_writer))
    finally:
        server_writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await server_writer.wait_closed()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF; `drain` stops reading while the other side is slow (back-pressure)."""
    try:
        while data := await reader.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


def _no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
