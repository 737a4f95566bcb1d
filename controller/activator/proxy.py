"""The activator: an asyncio TCP proxy that holds connections to a sleeping database and wakes it.

A connection to a database that is reachable is relayed as it is, unparsed. Any other goes through
its startup first (`negotiation`) and only a valid one is held while the backend wakes the
database, one wake for any number of clients: a StartupMessage, which is then, byte for byte, the
first thing Postgres reads; or, with `tls`, an SSLRequest answered 'S' and the start of a
ClientHello, which the relay hands to Postgres after its own SSLRequest, so TLS ends at the server.
Junk, a cancel request or a startup Postgres would refuse never wakes anything. If the wake fails or
takes longer than the wake timeout, each held client gets a Postgres ErrorResponse with SQLSTATE
57P03 and the reason, never a bare close (mid-handshake, a TLS alert; the reason is logged).

What a client can make the activator keep is bounded (`limits`): a startup has a deadline and
reads no further than its packet; a held connection is not read from until its relay starts; the
connections negotiating and those held have caps sized to the descriptors the process may open.
A connection the activator gives up on (out of time, evicted at a cap, a database it cannot reach,
a shutdown) is answered all the same: before its startup is decided, any packet a client sends
first may be answered with an ErrorResponse, and libpq reports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from controller.activator import negotiation, protocol, relay
from controller.activator.limits import Limits, Occupancy, raise_descriptor_limit
from controller.activator.refusals import RefusalLog

log = structlog.get_logger("activator")

BACKLOG = 1024

Admit = Callable[[str, tuple[str, int]], Awaitable[bool]]
"""May this peer (host, port) connect to database `key`? Asked after a valid startup, before a wake."""

NOT_ADMITTED = "not allowed to connect from this address"
UNREACHABLE = "the database is awake but cannot be reached"
SHUTTING_DOWN = "the database system is shutting down"
EVICTED = "sorry, too many clients already: too many connections are starting up here"


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


_scratch = memoryview(bytearray(protocol.MAX_PACKET_SIZE))
"""Where every negotiating connection reads (never more than its negotiation wants) before the
bytes are handed over; one for the process, since a read and its hand-over run in one callback."""


class _Client(asyncio.BufferedProtocol):
    """A client's connection until its startup is decided: reads for the negotiation, its replies."""

    def __init__(self, activator: Activator, key: str) -> None:
        self.activator = activator
        self.key = key
        self.negotiation = negotiation.Negotiation(tls=activator.tls)
        self.transport: asyncio.Transport
        self.peer = ("", 0)
        self.decided: asyncio.Future[negotiation.Decision | None]
        """The negotiation's decision; None when the connection ended or was ended before one."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()  # nothing is read before the backend says whether to negotiate
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        self.decided = asyncio.get_running_loop().create_future()
        self.activator._arrived(self)

    def negotiate(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _scratch[: max(1, self.negotiation.wanted)]

    def buffer_updated(self, nbytes: int) -> None:
        self._act(self.negotiation.receive(bytes(_scratch[:nbytes])))

    def eof_received(self) -> bool:
        self._act(self.negotiation.receive_eof())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle(None)
        self.activator._gone(self)

    def _act(self, actions: list[negotiation.Action]) -> None:
        for action in actions:
            if isinstance(action, negotiation.Reply):
                self.transport.write(action.data)
                continue
            if isinstance(action, negotiation.Wake):
                self.transport.pause_reading()  # held: the client's next bytes wait in the kernel
            elif isinstance(action, negotiation.Refuse):
                self.refuse(action.code, action.message)
            else:
                self.transport.close()
            self._settle(action)

    def _settle(self, decision: negotiation.Decision | None) -> None:
        if not self.decided.done():
            self.decided.set_result(decision)

    def refuse(self, code: str, message: str) -> None:
        """An ErrorResponse, or mid-handshake a TLS alert: the message is then only in the log."""
        if self.transport.is_closing():
            return
        if self.negotiation.encrypted:
            denied = code == protocol.INVALID_AUTHORIZATION_SPECIFICATION
            self.transport.write(
                protocol.tls_alert(protocol.TLS_ACCESS_DENIED if denied else protocol.TLS_INTERNAL_ERROR)
            )
        else:
            self.transport.write(protocol.error_response(code, message))
        self.transport.close()

    def give_up(self, code: str, message: str) -> None:
        """Answered, then closed, however far its startup got: it is no longer waited for."""
        self.refuse(code, message)
        self._settle(None)


class Activator:
    def __init__(
        self,
        backend: Backend,
        *,
        wake_timeout: float = 30.0,
        observer: Observer | None = None,
        limits: Limits | None = None,
        admit: Admit | None = None,
        tls: bool = False,
    ) -> None:
        self.backend = backend
        self.tls = tls
        """Whether the servers behind serve TLS: SSLRequest is then accepted and passed through."""
        self.wake_timeout = wake_timeout
        self.observer = observer or _NoObserver()
        self.admit = admit
        self.configured = limits or Limits()
        self.limits = self.configured
        """The caps in force: the configured ones, sized to the descriptor limit once listening."""
        self.refusals = RefusalLog()
        self._occupancy: Occupancy[_Client] = Occupancy(self.limits)
        self._sized = False
        self._servers: dict[str, asyncio.Server] = {}
        self._clients: set[_Client] = set()
        self._relays: set[relay.Relay] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self, key: str, host: str, port: int) -> int:
        """Accept connections for database `key` on host:port (0 picks a port); returns the port."""
        if key in self._servers:
            return int(self._servers[key].sockets[0].getsockname()[1])
        self._size_to_descriptors()
        server = await asyncio.get_running_loop().create_server(
            lambda: _Client(self, key), host, port, reuse_address=True, backlog=BACKLOG
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
        servers = list(self._servers.values())
        self._servers.clear()
        for server in servers:
            server.close()
        for client in list(self._clients):
            client.give_up(protocol.CANNOT_CONNECT_NOW, SHUTTING_DOWN)
        for spliced in list(self._relays):
            spliced.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in servers:
            await server.wait_closed()

    @property
    def negotiating(self) -> int:
        return self._occupancy.negotiating

    def in_hand(self, key: str) -> int:
        """Clients of database `key` negotiating their startup here or held for a wake: they are
        activity Postgres cannot show yet (a relayed one is Postgres's to show, once it has a session)."""
        return self._occupancy.in_hand(key)

    def _size_to_descriptors(self) -> None:
        if self._sized:
            return
        self._sized = True
        descriptors = raise_descriptor_limit()
        self.limits = self._occupancy.limits = self.configured.within(descriptors)
        if self.limits != self.configured:
            log.warning(
                "activator caps lowered to fit the descriptor limit",
                descriptors=descriptors,
                negotiating=self.limits.negotiating,
                held=self.limits.held,
                held_per_database=self.limits.held_per_database,
            )

    # -- one connection ----------------------------------------------------------------------------

    def _arrived(self, client: _Client) -> None:
        self._clients.add(client)
        evicted = self._occupancy.arrive(client, client.key)
        if evicted is not None:
            evicted.give_up(protocol.TOO_MANY_CONNECTIONS, EVICTED)
            self._refused(evicted, "evicted: too many connections negotiating their startup")
        task = asyncio.ensure_future(self._serve(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _gone(self, client: _Client) -> None:
        self._clients.discard(client)
        self._occupancy.leave(client)

    async def _serve(self, client: _Client) -> None:
        loop = asyncio.get_running_loop()
        decision: negotiation.Decision | None = None
        try:
            async with asyncio.timeout_at(loop.time() + self.limits.startup_deadline):
                upstream = await self.backend.upstream(client.key)
                if upstream is None:
                    client.negotiate()
                    decision = await asyncio.shield(client.decided)
        except TimeoutError:
            client.give_up(protocol.CANNOT_CONNECT_NOW, self._out_of_time())
            self._refused(client, "startup not complete within the deadline")
            return
        finally:
            self._occupancy.leave(client)
        if upstream is not None:
            await self._relay(client, upstream, b"")
        elif isinstance(decision, negotiation.Wake):
            await self._hold(client, decision)
        elif isinstance(decision, negotiation.Refuse):
            self._refused(client, "invalid startup packet", code=decision.code, message=decision.message)
        elif isinstance(decision, negotiation.Close) and decision.reason in (
            negotiation.Silence.INCOMPLETE,
            negotiation.Silence.INVALID_LENGTH,
        ):
            self._refused(client, decision.reason.value)

    async def _hold(self, client: _Client, wake: negotiation.Wake) -> None:
        refusal = self._occupancy.hold(client.key)
        if refusal is not None:
            client.refuse(protocol.TOO_MANY_CONNECTIONS, refusal)
            self._refused(client, "too many held connections", message=refusal)
            return
        try:
            if not await self._admitted(client):
                return
            upstream = await self._wake(client)
            if upstream is not None:
                await self._relay(client, upstream, wake.packet, tls=wake.encrypted)
        finally:
            self._occupancy.release(client.key)

    async def _admitted(self, client: _Client) -> bool:
        if self.admit is None:
            return True
        try:  # a held slot is taken meanwhile: the check gets no longer than a startup does
            async with asyncio.timeout(self.limits.startup_deadline):
                admitted = await self.admit(client.key, client.peer)
        except Exception as error:  # the check's fault, not the client's: refuse, and say so
            client.refuse(protocol.CANNOT_CONNECT_NOW, "could not check this connection; try again")
            self._refused(client, "admission check failed", error=repr(error))
            return False
        if not admitted:
            client.refuse(protocol.INVALID_AUTHORIZATION_SPECIFICATION, NOT_ADMITTED)
            self._refused(client, "not admitted")
        return admitted

    async def _wake(self, client: _Client) -> Upstream | None:
        self.observer.held(client.key, 1)
        try:
            return await wake_within(self.backend, client.key, self.wake_timeout)
        except WakeError as error:
            reason = str(error)
        finally:
            self.observer.held(client.key, -1)
        client.refuse(protocol.CANNOT_CONNECT_NOW, reason)
        self._refused(client, "wake failed", message=reason)
        return None

    async def _relay(self, client: _Client, upstream: Upstream, first: bytes, *, tls: bool = False) -> None:
        """Splice the client to Postgres, or tell it why not."""
        try:
            spliced = await relay.Relay.open(client.transport, upstream.host, upstream.port, first, tls=tls)
        except OSError as error:
            log.debug("upstream unreachable", database=client.key, error=str(error))
            # Unparsed, nothing was answered yet: an ErrorResponse answers any first packet.
            client.refuse(protocol.CANNOT_CONNECT_NOW, UNREACHABLE)
            return
        self._clients.discard(client)  # the relay owns the connection now
        self._relays.add(spliced)
        spliced.closed.add_done_callback(lambda _: self._relays.discard(spliced))

    def _out_of_time(self) -> str:
        return (
            f"the connection's startup did not complete within {self.limits.startup_deadline:g}s; try again"
        )

    def _refused(self, client: _Client, reason: str, **fields: str) -> None:
        self.refusals.refused(reason, database=client.key, peer=client.peer[0], **fields)


async def wake_within(backend: Backend, key: str, timeout: float) -> Upstream:
    """The backend's wake, given up after `timeout`: either way a failure is a WakeError saying why."""
    try:
        return await asyncio.wait_for(backend.wake(key), timeout)
    except TimeoutError:
        reason = f"the database is starting and was not ready within {timeout:g}s; try again"
        raise WakeError(reason) from None
