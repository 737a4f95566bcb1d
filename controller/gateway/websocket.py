"""Postgres over WebSocket: binary frames carry the wire protocol's bytes, relayed to the database.

The database is named by the upgrade's `address` parameter (`<host>:<port>`, what the driver's
`wsProxy` string form appends), or else by its Host, in the scheme of `request.database_key`. Until
a whole StartupMessage has arrived nothing is woken or connected: the activator's own negotiation
reads it, so an encryption request is declined here (TLS belongs to the `wss://` layer), a
CancelRequest reaches only a database that is awake, and anything else (bad lengths, garbage) is
answered or closed as Postgres would; a text frame ends the session. Then the bytes go on
untouched, starting with the StartupMessage and whatever the client sent after it, so Postgres
itself authenticates the client. A startup as a role bound to an identity is relayed to the
database's identity endpoint instead (only over `wss://`), which takes the password as a token.
Memory is bounded: one frame at a time in each direction, each written out before the next is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

import structlog
from aiohttp import WSMsgType, web

from controller.activator import negotiation, protocol, relay
from controller.gateway.identity import TokenLogins
from controller.gateway.reach import Door, Reach
from controller.gateway.request import RequestError, database_key
from controller.gateway.sql import peer

log = structlog.get_logger("gateway.websocket")


@dataclass(frozen=True)
class _Opening:
    """What a client sent before the relay can start: the negotiation's decision, and the bytes of
    the packet it was decided on (a CancelRequest's, to pass on to a running server)."""

    decision: negotiation.Decision
    packet: bytes


class _ClosedError(Exception):
    """The client left, or broke the framing, before its startup was whole."""


class Relay:
    def __init__(self, reach: Reach, logins: TokenLogins | None = None) -> None:
        self.reach = reach
        self.logins = logins or TokenLogins(None)
        self.limits = reach.limits
        self.observer = reach.observer

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.limits.max_message_bytes, compress=False)
        await ws.prepare(request)
        started = asyncio.get_running_loop().time()
        try:
            opening = await asyncio.wait_for(_opening(ws), self.limits.startup_timeout)
        except (TimeoutError, _ClosedError):
            self.observer.gateway_refused(Door.WEBSOCKET, "bad_startup")
            await ws.close()
            return ws
        try:
            await self._serve(request, ws, opening, started)
        except RequestError as error:
            self.observer.gateway_refused(Door.WEBSOCKET, error.reason)
            await _send(ws, protocol.error_response(error.code or protocol.PROTOCOL_VIOLATION, error.message))
        except (ConnectionError, OSError) as error:
            log.debug("session ended", error=str(error))
        finally:
            await ws.close()
        return ws

    async def _serve(
        self, request: web.Request, ws: web.WebSocketResponse, opening: _Opening, started: float
    ) -> None:
        decision = opening.decision
        if isinstance(decision, negotiation.Refuse):
            raise RequestError(decision.message, code=decision.code, reason="bad_startup")
        cancel = (
            isinstance(decision, negotiation.Close) and decision.reason is negotiation.Silence.CANCEL_REQUEST
        )
        if isinstance(decision, negotiation.Close) and not cancel:
            self.observer.gateway_refused(Door.WEBSOCKET, "bad_startup")
            return  # closed without a word, as Postgres closes on these
        key = database_key(_host(request))
        if key is None:
            raise RequestError(
                "the WebSocket's address must name a database: <name>.<namespace>[.svc]",
                code="3D000",
                reason="unknown_database",
            )
        await self.reach.check(key, peer(request))
        if not isinstance(decision, negotiation.Wake):
            await self._cancel(key, opening.packet)
            return
        role = decision.startup.parameters.get("user", "") if decision.startup is not None else ""
        by_token = await self.logins.bound(key, role)
        if by_token:
            self.logins.require_tls(key, peer(request)[0], secure=request.secure)
        upstream = await self.reach.upstream(key, Door.WEBSOCKET)
        tls = self.reach.tls
        if by_token:
            upstream, tls = self.logins.address(key), self.logins.tls  # it asks for the token
        reader, writer = await asyncio.open_connection(upstream.host, upstream.port, limit=relay.CHUNK)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await tls.start(reader, writer, upstream.host)
            writer.write(decision.packet)
            await writer.drain()
            self.observer.gateway_served(key, Door.WEBSOCKET, asyncio.get_running_loop().time() - started)
            await _relay(ws, reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _cancel(self, key: str, cancel: bytes) -> None:
        """A CancelRequest has something to cancel only on a running server; it never wakes one."""
        upstream = await self.reach.backend.upstream(key) if self.reach.backend.awake(key) else None
        if upstream is None:
            return
        _, writer = await asyncio.open_connection(upstream.host, upstream.port)
        writer.write(cancel)
        await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def _opening(ws: web.WebSocketResponse) -> _Opening:
    """Frames fed to the activator's own startup negotiation, a packet at a time (so a CancelRequest's
    bytes are at hand), its replies sent back, until it decides."""
    talk = negotiation.Negotiation()
    packet = bytearray()
    while True:
        frame = await ws.receive()
        if frame.type is not WSMsgType.BINARY:
            raise _ClosedError  # text frames are not the wire protocol; a close ends it
        data = memoryview(frame.data)
        while data:
            piece, data = data[: talk.wanted], data[talk.wanted :]
            packet += piece
            for action in talk.receive(bytes(piece)):
                if isinstance(action, negotiation.Reply):
                    await ws.send_bytes(action.data)
                    packet.clear()
                elif isinstance(action, negotiation.Wake):
                    # What the client sent after its StartupMessage reaches Postgres after it, unchanged.
                    wake = negotiation.Wake(action.startup, action.packet + bytes(data))
                    return _Opening(wake, bytes(packet))
                else:
                    return _Opening(action, bytes(packet))


def _host(request: web.Request) -> str:
    """The host the client names: `address`'s, else the Host header's, without a port."""
    target = request.query.get("address") or request.host
    host, _, port = target.rpartition(":")
    return host if port.isdigit() else target


async def _relay(
    ws: web.WebSocketResponse, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    async def upward() -> None:
        async for frame in ws:
            if frame.type is not WSMsgType.BINARY:
                return  # a text frame breaks the byte stream: end the session
            writer.write(frame.data)
            await writer.drain()

    async def downward() -> None:
        while data := await reader.read(relay.CHUNK):
            await ws.send_bytes(data)

    directions = [asyncio.ensure_future(upward()), asyncio.ensure_future(downward())]
    try:
        done, _ = await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a failure in either direction ends the session, and is raised
    finally:
        for task in directions:
            task.cancel()
        await asyncio.gather(*directions, return_exceptions=True)


async def _send(ws: web.WebSocketResponse, data: bytes) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await ws.send_bytes(data)
