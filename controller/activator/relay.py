"""Bytes both ways between a client's connection and Postgres, with back-pressure both ways.

Each side reads into one scratch buffer that every relay of the process shares (a read and the
write that forwards it run in one callback, so nothing comes between them), and stops reading while
the other side's write buffer is above its high-water mark. So a relay holds at most about
2 * (CHUNK + HIGH_WATER) bytes, whatever either end sends and however slowly the other reads.
"""

from __future__ import annotations

import asyncio

from controller.activator import protocol

CHUNK = 64 * 1024
HIGH_WATER = 64 * 1024

_scratch = memoryview(bytearray(CHUNK))


class _Side(asyncio.BufferedProtocol):
    """One connection of a relay: what it reads goes to the other's transport."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.peer: _Side
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _scratch

    def buffer_updated(self, nbytes: int) -> None:
        assert self.peer.transport is not None
        # A copy: the transport may keep what it cannot send yet, and the scratch is reused.
        self.peer.transport.write(bytes(_scratch[:nbytes]))

    def pause_writing(self) -> None:
        if self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer.transport
        if peer is not None and peer.can_write_eof():
            peer.write_eof()
        if self.peer.eof:
            self.relay.close()
        return True  # half-closed: the other direction goes on

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer.transport
        if peer is not None:
            if exc is None:
                peer.close()  # after what it still has to write
            else:
                peer.abort()
        self.relay.lost(self)


TLS_ANSWER_TIMEOUT = 10.0
"""Postgres answers SSLRequest at once; one that does not is as good as unreachable."""


class _TlsAnswer(asyncio.Protocol):
    """The server's one-byte answer to SSLRequest, read before the relay takes the connection over
    (it sends nothing more until the client's hello, so nothing is read past the answer)."""

    def __init__(self) -> None:
        self.accepted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.accepted.done():
            self.accepted.set_result(data == protocol.ACCEPT_TLS)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.accepted.done():
            self.accepted.set_exception(ConnectionResetError("the server closed before answering"))


class Relay:
    """A client's connection spliced to an upstream one; `closed` resolves when both have ended."""

    def __init__(self, client: asyncio.Transport) -> None:
        self.client = _Side(self)
        self.upstream = _Side(self)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.client.connection_made(client)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._open = {self.client, self.upstream}

    @classmethod
    async def open(
        cls, client: asyncio.Transport, host: str, port: int, first: bytes, *, tls: bool = False
    ) -> Relay:
        """Connect to host:port, send `first`, then relay; `client` must be paused, and is resumed.
        With `tls`, Postgres is asked for TLS first (the client was told 'S' already, and `first`
        is the start of its ClientHello), so the handshake is the client's with the server.

        Raises OSError when the upstream cannot be reached; the client is then left as it was.
        """
        relay = cls(client)
        loop = asyncio.get_running_loop()
        if tls:
            upstream, answer = await loop.create_connection(_TlsAnswer, host, port)
            upstream.write(protocol.ssl_request())
            try:
                async with asyncio.timeout(TLS_ANSWER_TIMEOUT):
                    accepted = await answer.accepted
            except BaseException:
                upstream.abort()
                raise
            if not accepted:
                upstream.abort()
                raise ConnectionRefusedError("the server does not serve TLS")
            upstream.set_protocol(relay.upstream)
            relay.upstream.connection_made(upstream)
        else:
            await loop.create_connection(lambda: relay.upstream, host, port)
        assert relay.upstream.transport is not None
        if client.is_closing():
            relay.upstream.transport.close()
            relay.lost(relay.client)
            return relay
        client.set_protocol(relay.client)
        if first:
            relay.upstream.transport.write(first)
        client.resume_reading()
        return relay

    def close(self) -> None:
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.close()

    def abort(self) -> None:
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.abort()

    def lost(self, side: _Side) -> None:
        self._open.discard(side)
        if not self._open and not self.closed.done():
            self.closed.set_result(None)
