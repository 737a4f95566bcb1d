"""The identity endpoint: Postgres's wire protocol, where the password is a token.

Per database, a port that answers an SSLRequest with 'S' and terminates TLS with the database's own
server certificate (so `sslmode=verify-full` checks the same names as on Postgres's own endpoint),
asks for a cleartext password only inside TLS, and checks it as a token (`authenticate`). A plaintext
StartupMessage is refused before any password is asked for. Then it connects to Postgres itself,
waking it as the activator would (the backend's one wake per database), over TLS with the operator
CA's client certificate: Postgres's `cert` method and its pg_ident map let that certificate become
exactly the roles bound to identities, with no password. Postgres's own answer, from
AuthenticationOk on, is the client's; from there the bytes are relayed unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Sequence
from typing import Protocol

import structlog

from controller.activator import protocol, proxy, relay
from controller.activator.proxy import Upstream, WakeError
from controller.activator.refusals import RefusalLog
from controller.api import types
from controller.identity import tokens
from controller.identity.authenticate import Authenticator
from controller.identity.tokens import Refused

log = structlog.get_logger("identity.endpoint")

STARTUP_DEADLINE = 10.0
"""Seconds from accept to a password, as Postgres's authentication_timeout bounds its own."""
AUTHENTICATION_CLEARTEXT_PASSWORD = struct.pack("!cii", b"R", 8, 3)
PASSWORD_MESSAGE = b"p"
NEEDS_TLS = "identity authentication needs TLS: connect with sslmode=require or stricter"
MAX_HANDSHAKE_BUFFER = protocol.MAX_PACKET_SIZE + tokens.MAX_TOKEN_LENGTH


class Backend(proxy.Backend, Protocol):
    """The activator's backend, and where a database's identities are."""

    async def identities(self, key: str) -> Sequence[types.IdentitySpec] | None:
        """The database's `spec.access.identities`; None when there is no such database."""


class _Conversation(asyncio.Protocol):
    """A connection while the endpoint still reads it itself: bytes kept until asked for."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport
        self.buffer = bytearray()
        self.ended = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_HANDSHAKE_BUFFER:
            self.transport.pause_reading()  # more than any startup and password: read no further
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if self.ended or len(self.buffer) > MAX_HANDSHAKE_BUFFER:
                raise EOFError
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    def rest(self) -> bytes:
        """What came after the last read, handed on with the connection."""
        out = bytes(self.buffer)
        self.buffer.clear()
        return out


class _RefusedError(Exception):
    def __init__(self, code: str, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        """For the log, when the authenticator has not logged it already."""


class IdentityEndpoint:
    def __init__(
        self,
        backend: Backend,
        authenticator: Authenticator,
        *,
        wake_timeout: float = 30.0,
        source_address: str | None = None,
    ) -> None:
        self.backend = backend
        self.authenticator = authenticator
        self.wake_timeout = wake_timeout
        self.source_address = source_address
        """The address connections to Postgres come from: pg_hba gives that address the `cert` method."""
        self.client_tls: ssl.SSLContext | None = None
        """Trusts the operator CA and presents the endpoint's client certificate; set before listening."""
        self._servers: dict[str, asyncio.Server] = {}
        self._tls: dict[str, ssl.SSLContext] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._relays: set[relay.Relay] = set()
        self.refusals: RefusalLog | None = None

    async def listen(self, key: str, host: str, port: int, tls: ssl.SSLContext) -> int:
        """Serve database `key` on host:port (0 picks one) with its server certificate; returns the port."""
        self._tls[key] = tls  # a renewed certificate is taken by the next connection
        if key in self._servers:
            return int(self._servers[key].sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: self._accept(key), host, port, reuse_address=True)
        self._servers[key] = server
        return int(server.sockets[0].getsockname()[1])

    def listening(self, key: str) -> int | None:
        server = self._servers.get(key)
        return int(server.sockets[0].getsockname()[1]) if server else None

    async def unlisten(self, key: str) -> None:
        self._tls.pop(key, None)
        server = self._servers.pop(key, None)
        if server is not None:
            server.close()
            await server.wait_closed()

    async def close(self) -> None:
        for key in list(self._servers):
            await self.unlisten(key)
        for spliced in list(self._relays):
            spliced.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, key: str) -> _Conversation:
        conversation = _Conversation()
        task = asyncio.ensure_future(self._serve(key, conversation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conversation

    async def _serve(self, key: str, client: _Conversation) -> None:
        await asyncio.sleep(0)  # connection_made runs first
        peer = client.transport.get_extra_info("peername")
        try:
            async with asyncio.timeout(STARTUP_DEADLINE):
                startup = await self._startup(key, client)
                role = startup.parameters["user"]
                client.transport.write(AUTHENTICATION_CLEARTEXT_PASSWORD)
                token = await _password(client)
            identities = await self.backend.identities(key)
            if identities is None:
                namespace, name = types.split_key(key)
                raise _RefusedError(
                    "3D000",
                    f'database "{name}" in namespace "{namespace}" does not exist',
                    "unknown_database",
                )
            result = await self.authenticator.authenticate(key, identities, token, role)
            if isinstance(result, Refused):
                raise _RefusedError(
                    tokens.sqlstate(result.reason), tokens.refusal_message(result.reason, role)
                )
            upstream = await self._upstream(key)
            await self._connect(key, client, upstream, startup, role)
        except _RefusedError as refusal:
            _refuse(client, refusal.code, refusal.message)
            if refusal.reason:
                if self.refusals is None:  # made on first use: it needs the running loop
                    self.refusals = RefusalLog(logger=log)
                self.refusals.refused(refusal.reason, database=key, peer=str(peer[0] if peer else ""))
        except (EOFError, TimeoutError, ssl.SSLError, ConnectionError) as error:
            log.debug("identity connection ended early", database=key, peer=str(peer), error=repr(error))
            client.transport.abort()

    async def _startup(self, key: str, client: _Conversation) -> protocol.StartupMessage:
        """Read up to a StartupMessage, taking TLS on the way; refuse one that comes in plaintext."""
        encrypted = False
        gssenc_declined = False
        while True:
            (length,) = struct.unpack("!i", await client.read(protocol.LENGTH_SIZE))
            if not protocol.valid_length(length):
                raise EOFError
            packet = await client.read(length - protocol.LENGTH_SIZE)
            (code,) = struct.unpack_from("!i", packet)
            if code == protocol.SSL_REQUEST_CODE and not encrypted:
                if client.buffer:  # bytes sent before our answer would be read as TLS: refuse them
                    raise EOFError
                client.transport.write(b"S")
                await self._start_tls(key, client)
                encrypted = True
                continue
            if code == protocol.GSSENC_REQUEST_CODE and not gssenc_declined and not encrypted:
                gssenc_declined = True
                client.transport.write(protocol.DECLINE_ENCRYPTION)
                continue
            if code == protocol.CANCEL_REQUEST_CODE:
                raise EOFError  # no cancel key of ours was ever handed out: nothing to cancel
            parsed = protocol.parse_startup(code, packet[protocol.LENGTH_SIZE :])
            if isinstance(parsed, protocol.Invalid):
                raise _RefusedError(parsed.code, parsed.message, "invalid_startup")
            if not encrypted:
                raise _RefusedError(protocol.INVALID_AUTHORIZATION_SPECIFICATION, NEEDS_TLS, "plaintext")
            return parsed

    async def _start_tls(self, key: str, client: _Conversation) -> None:
        tls = self._tls.get(key)
        if tls is None:
            raise EOFError
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(client.transport, client, tls, server_side=True)
        assert isinstance(transport, asyncio.Transport)
        client.transport = transport

    async def _upstream(self, key: str) -> Upstream:
        upstream = await self.backend.upstream(key)
        if upstream is not None:
            return upstream
        try:
            return await proxy.wake_within(self.backend, key, self.wake_timeout)
        except WakeError as error:
            raise _RefusedError(protocol.CANNOT_CONNECT_NOW, str(error), "wake_failed") from None

    async def _connect(
        self,
        key: str,
        client: _Conversation,
        upstream: Upstream,
        startup: protocol.StartupMessage,
        role: str,
    ) -> None:
        """Log in to Postgres as `role` with the client certificate, then hand both connections to a relay."""
        if self.client_tls is None:
            raise RuntimeError("IdentityEndpoint.client_tls is not set")
        loop = asyncio.get_running_loop()
        server = _Conversation()
        try:
            await loop.create_connection(
                lambda: server,
                upstream.host,
                upstream.port,
                local_addr=(self.source_address, 0) if self.source_address else None,
            )
            server.transport.write(protocol.ssl_request())
            if await server.read(1) != b"S":
                raise _RefusedError(
                    protocol.CANNOT_CONNECT_NOW, "the database does not offer TLS", "upstream"
                )
            transport = await loop.start_tls(
                server.transport, server, self.client_tls, server_hostname=upstream.host
            )
        except (OSError, EOFError, ssl.SSLError) as error:
            log.warning("cannot reach the database for an identity", database=key, error=repr(error))
            with contextlib.suppress(AttributeError):
                server.transport.abort()
            raise _RefusedError(
                protocol.CANNOT_CONNECT_NOW, "the database is awake but cannot be reached"
            ) from None
        assert isinstance(transport, asyncio.Transport)
        parameters = {**startup.parameters, "user": role}
        first = protocol.startup_message(parameters, startup.protocol) + client.rest()
        client.transport.pause_reading()
        transport.pause_reading()
        spliced = relay.Relay.splice(client.transport, transport, first)
        self._relays.add(spliced)
        spliced.closed.add_done_callback(lambda _: self._relays.discard(spliced))


async def _password(client: _Conversation) -> str:
    kind = await client.read(1)
    (length,) = struct.unpack("!i", await client.read(protocol.LENGTH_SIZE))
    if kind != PASSWORD_MESSAGE or not protocol.LENGTH_SIZE < length <= tokens.MAX_TOKEN_LENGTH + 5:
        raise _RefusedError(protocol.PROTOCOL_VIOLATION, "expected a password message", "protocol_violation")
    body = await client.read(length - protocol.LENGTH_SIZE)
    try:
        return body.rstrip(b"\0").decode()
    except UnicodeDecodeError:
        return ""


def _refuse(client: _Conversation, code: str, message: str) -> None:
    if not client.transport.is_closing():
        client.transport.write(protocol.error_response(code, message))
        client.transport.close()
