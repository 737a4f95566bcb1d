"""The identity endpoint: Postgres's wire protocol, where the password is a token.

Per database, a port that answers an SSLRequest with 'S' and terminates TLS with the database's own
server certificate (so `sslmode=verify-full` checks the same names as on Postgres's own endpoint),
asks for a cleartext password only inside TLS, and checks it as a token (`authenticate`). A plaintext
StartupMessage is refused before any password is asked for. Then it connects to Postgres itself,
waking it as the activator would (the backend's one wake per database), over TLS with the operator
CA's client certificate: Postgres's `cert` method and its pg_ident map let that certificate become
exactly the roles bound to identities, with no password. Postgres's own answer, from
AuthenticationOk on, is the client's; from there the bytes are relayed unchanged, BackendKeyData
included, so a client's CancelRequest to this port is passed on to Postgres as it came.

Each connection is served by a thread of its own with blocking sockets, the event loop doing only
what is shared (the token check, the wake, the refusal log). The reason is speed: a relay between
two TLS connections decrypts and encrypts every message twice, and asyncio's TLS transport does its
record handling in Python, which made the relay cost about 0.3 ms of CPU per pgbench transaction;
`ssl.SSLSocket` does it in OpenSSL, with the GIL released.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import selectors
import socket
import ssl
import struct
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from controller.activator import protocol, proxy
from controller.activator.proxy import Upstream, WakeError
from controller.activator.refusals import RefusalLog
from controller.api import types
from controller.identity import tokens
from controller.identity.authenticate import Authenticator
from controller.identity.tokens import Refused, Verified

log = structlog.get_logger("identity.endpoint")
T = TypeVar("T")

STARTUP_DEADLINE = 10.0
"""Seconds from accept to a password, as Postgres's authentication_timeout bounds its own."""
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
AUTHENTICATION_CLEARTEXT_PASSWORD = struct.pack("!cii", b"R", 8, 3)
PASSWORD_MESSAGE = b"p"
NEEDS_TLS = "identity authentication needs TLS: connect with sslmode=require or stricter"
CHUNK = 64 * 1024
BACKLOG = 1024
MAX_NEGOTIATING = 256
"""Connections not yet past their password, over every database: a real client is through in
milliseconds, so only junk reaches this, and it is closed at once."""
MAX_CONNECTIONS = 4096
"""Connections (each a thread) at once, over every database."""
THREAD_STACK_BYTES = 256 * 1024
"""A relay thread needs little stack; the default (8 MiB of address space each) adds up."""


class Backend(proxy.Backend, Protocol):
    """The activator's backend, and where a database's identities are."""

    async def identities(self, key: str) -> Sequence[types.IdentitySpec] | None:
        """The database's `spec.access.identities`; None when there is no such database."""


class _RefusedError(Exception):
    def __init__(self, code: str, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        """For the log, when the authenticator has not logged it already."""


@dataclass(frozen=True)
class _CancelRequest:
    packet: bytes
    """As the client sent it, length first."""


class _Listener:
    def __init__(self, sock: socket.socket, tls: ssl.SSLContext) -> None:
        self.sock = sock
        self.tls = tls
        self.task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


class IdentityEndpoint:
    def __init__(
        self,
        backend: Backend,
        authenticator: Authenticator,
        *,
        wake_timeout: float = 30.0,
        source_address: str | None = None,
        startup_deadline: float = STARTUP_DEADLINE,
        max_negotiating: int = MAX_NEGOTIATING,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.backend = backend
        self.authenticator = authenticator
        self.wake_timeout = wake_timeout
        self.startup_deadline = startup_deadline
        self.max_negotiating = max_negotiating
        self.max_connections = max_connections
        self.source_address = source_address
        """The address connections to Postgres come from: pg_hba gives that address the `cert` method."""
        self.client_tls: ssl.SSLContext | None = None
        """Trusts the operator CA and presents the endpoint's client certificate; set before listening."""
        self.refusals: RefusalLog | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: dict[str, _Listener] = {}
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.negotiating = 0
        self.connections = 0

    async def listen(self, key: str, host: str, port: int, tls: ssl.SSLContext) -> int:
        """Serve database `key` on host:port (0 picks one) with its server certificate; returns the port."""
        self._loop = asyncio.get_running_loop()
        known = self._listeners.get(key)
        if known is not None:
            known.tls = tls  # a renewed certificate is taken by the next connection
            return known.port
        sock = socket.create_server((host, port), backlog=BACKLOG)
        sock.setblocking(False)
        listener = _Listener(sock, tls)
        listener.task = asyncio.ensure_future(self._accept(key, listener))
        self._listeners[key] = listener
        return listener.port

    def listening(self, key: str) -> int | None:
        listener = self._listeners.get(key)
        return listener.port if listener else None

    def address(self, key: str) -> Upstream | None:
        """Where database `key`'s endpoint listens, for a door that hands it token logins."""
        listener = self._listeners.get(key)
        if listener is None:
            return None
        host, port = listener.sock.getsockname()[:2]
        return Upstream(str(host), int(port))

    async def bound(self, key: str, role: str) -> bool:
        """Whether `role` is bound to an identity of database `key`: such a role has no password, so
        a login as it is a token login, whichever door it comes through."""
        identities = await self.backend.identities(key)
        return any(identity.role == role for identity in identities or ())

    async def verify(self, key: str, token: str, role: str) -> Verified | Refused | None:
        """The token check of a login as `role` (the authenticator logs a refusal); None when there is
        no such database."""
        identities = await self.backend.identities(key)
        if identities is None:
            return None
        return await self.authenticator.authenticate(key, identities, token, role)

    async def unlisten(self, key: str) -> None:
        listener = self._listeners.pop(key, None)
        if listener is not None:
            if listener.task is not None:
                listener.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener.task
            listener.sock.close()

    async def close(self) -> None:
        for key in list(self._listeners):
            await self.unlisten(key)
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:  # each connection's thread then finds its sockets closed, and ends
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def _accept(self, key: str, listener: _Listener) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(listener.sock)
            with self._lock:
                full = self.negotiating >= self.max_negotiating or self.connections >= self.max_connections
                if not full:
                    self.negotiating += 1
                    self.connections += 1
            if full:
                conn.close()
                self.refused("too many connections", key, str(peer[0]))
                continue
            conn.setblocking(True)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            negotiating = threading.Event()
            negotiating.set()
            # The connection's socket, once more: TLS takes the first over, but a shutdown of either
            # ends the connection. It enforces a deadline for the whole startup, however slowly the
            # bytes come, and lets `close` end every connection whatever its stage.
            guard = conn.dup()
            loop.call_later(self.startup_deadline, _deadline, guard, negotiating)
            thread = threading.Thread(
                target=self._serve,
                args=(key, conn, guard, str(peer[0]), listener.tls, negotiating),
                daemon=True,
            )
            with _stack(THREAD_STACK_BYTES):
                thread.start()

    # -- one connection, in its own thread ---------------------------------------------------------

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _untrack(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._sockets.discard(sock)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()

    def _serve(
        self,
        key: str,
        conn: socket.socket,
        guard: socket.socket,
        peer: str,
        tls: ssl.SSLContext,
        negotiating: threading.Event,
    ) -> None:
        self._track(guard)
        client: socket.socket = conn
        upstream: socket.socket | None = None
        try:
            client, startup = self._startup(conn, tls)
            if isinstance(startup, _CancelRequest):
                self._negotiated(negotiating)
                self._cancel(key, startup)
                _close_tls(client)
                return
            role = startup.parameters["user"]
            client.sendall(AUTHENTICATION_CLEARTEXT_PASSWORD)
            token = _password(client)
            self._negotiated(negotiating)
            self._authorize(key, token, role)
            address = self._call(self._upstream(key), self.wake_timeout + 1)
            upstream = self._connect(key, address)
            self._track(upstream)
            upstream.sendall(protocol.startup_message({**startup.parameters, "user": role}, startup.protocol))
            _relay(client, upstream)
        except _RefusedError as refusal:
            with contextlib.suppress(OSError):
                client.sendall(protocol.error_response(refusal.code, refusal.message))
            if refusal.reason and self._loop is not None:
                self._loop.call_soon_threadsafe(self.refused, refusal.reason, key, peer)
        except (EOFError, OSError, concurrent.futures.CancelledError) as error:
            log.debug("identity connection ended", database=key, peer=peer, error=repr(error))
        finally:
            self._negotiated(negotiating)
            with self._lock:
                self.connections -= 1
            self._untrack(*{guard, conn, client, *([upstream] if upstream else [])})

    def _negotiated(self, negotiating: threading.Event) -> None:
        with self._lock:
            if negotiating.is_set():
                negotiating.clear()
                self.negotiating -= 1

    def refused(self, reason: str, key: str, peer: str) -> None:
        """Log a refusal the authenticator did not see (plaintext, junk, too many), rate-limited."""
        if self.refusals is None:  # made on first use, in the loop: it needs one
            self.refusals = RefusalLog(logger=log)
        self.refusals.refused(reason, database=key, peer=peer)

    def _call(self, work: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `work` on the event loop and wait for it here."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def _startup(
        self, conn: socket.socket, tls: ssl.SSLContext
    ) -> tuple[socket.socket, protocol.StartupMessage | _CancelRequest]:
        """Read up to a StartupMessage, taking TLS on the way; refuse one that comes in plaintext.
        A CancelRequest may come either way (libpq sends it in the clear, or, since 17, inside TLS
        when the session was): it carries no credential, only the key Postgres handed out."""
        sock: socket.socket = conn
        encrypted = gssenc_declined = False
        while True:
            (length,) = struct.unpack("!i", _read(sock, protocol.LENGTH_SIZE))
            if not protocol.valid_length(length):
                raise EOFError
            packet = _read(sock, length - protocol.LENGTH_SIZE)
            (code,) = struct.unpack_from("!i", packet)
            if code == protocol.SSL_REQUEST_CODE and not encrypted:
                sock.sendall(b"S")
                # Bytes the client sent before our answer would be taken as TLS: none may come first.
                sock = tls.wrap_socket(conn, server_side=True)
                encrypted = True
                continue
            if code == protocol.GSSENC_REQUEST_CODE and not gssenc_declined and not encrypted:
                gssenc_declined = True
                sock.sendall(protocol.DECLINE_ENCRYPTION)
                continue
            if code == protocol.CANCEL_REQUEST_CODE:
                return sock, _CancelRequest(struct.pack("!i", length) + packet)
            parsed = protocol.parse_startup(code, packet[protocol.LENGTH_SIZE :])
            if isinstance(parsed, protocol.Invalid):
                raise _RefusedError(parsed.code, parsed.message, "invalid_startup")
            if not encrypted:
                raise _RefusedError(protocol.INVALID_AUTHORIZATION_SPECIFICATION, NEEDS_TLS, "plaintext")
            return sock, parsed

    def _cancel(self, key: str, request: _CancelRequest) -> None:
        """Pass a CancelRequest on to the database's Postgres, unchanged: the BackendKeyData its
        sessions got came from Postgres through the relay, so Postgres knows the key (and checks it).
        A resting database has nothing to cancel: it is never woken for one."""
        upstream = self._call(self.backend.upstream(key), CONNECT_TIMEOUT)
        if upstream is None:
            return
        with socket.create_connection((upstream.host, upstream.port), CONNECT_TIMEOUT) as sock:
            sock.sendall(request.packet)
            with contextlib.suppress(OSError):
                sock.recv(1)  # Postgres closes once it has read it; the client waits for that too

    def _authorize(self, key: str, token: str, role: str) -> None:
        result = self._call(self.verify(key, token, role), self.startup_deadline)
        if result is None:
            namespace, name = types.split_key(key)
            message = f'database "{name}" in namespace "{namespace}" does not exist'
            raise _RefusedError("3D000", message, "unknown_database")
        if isinstance(result, Refused):  # the authenticator has logged it
            raise _RefusedError(tokens.sqlstate(result.reason), tokens.refusal_message(result.reason, role))

    async def _upstream(self, key: str) -> Upstream:
        upstream = await self.backend.upstream(key)
        if upstream is not None:
            return upstream
        try:
            return await proxy.wake_within(self.backend, key, self.wake_timeout)
        except WakeError as error:
            raise _RefusedError(protocol.CANNOT_CONNECT_NOW, str(error), "wake_failed") from None

    def _connect(self, key: str, upstream: Upstream) -> ssl.SSLSocket:
        """Postgres over TLS with the endpoint's client certificate, from the endpoint's own address."""
        if self.client_tls is None:
            raise RuntimeError("IdentityEndpoint.client_tls is not set")
        source = (self.source_address, 0) if self.source_address else None
        try:
            raw = socket.create_connection(
                (upstream.host, upstream.port), CONNECT_TIMEOUT, source_address=source
            )
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.sendall(protocol.ssl_request())
            if _read(raw, 1) != b"S":
                raw.close()
                raise _RefusedError(
                    protocol.CANNOT_CONNECT_NOW, "the database does not offer TLS", "upstream"
                )
            sock = self.client_tls.wrap_socket(raw, server_hostname=upstream.host)
        except (OSError, EOFError) as error:
            log.warning("cannot reach the database for an identity", database=key, error=repr(error))
            raise _RefusedError(
                protocol.CANNOT_CONNECT_NOW, "the database is awake but cannot be reached"
            ) from None
        sock.settimeout(None)
        return sock


def _close_tls(sock: socket.socket) -> None:
    """End TLS with a close_notify, as Postgres does: a client reading a bare EOF inside TLS (libpq
    waiting for a cancel's answer) takes it for an error."""
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(CLOSE_TIMEOUT)
        with contextlib.suppress(OSError):
            sock.unwrap()


def _deadline(conn: socket.socket, negotiating: threading.Event) -> None:
    if negotiating.is_set():
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)


def _read(sock: socket.socket, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)


def _password(sock: socket.socket) -> str:
    kind = _read(sock, 1)
    (length,) = struct.unpack("!i", _read(sock, protocol.LENGTH_SIZE))
    if kind != PASSWORD_MESSAGE or not protocol.LENGTH_SIZE < length <= tokens.MAX_TOKEN_LENGTH + 5:
        raise _RefusedError(protocol.PROTOCOL_VIOLATION, "expected a password message", "protocol_violation")
    body = _read(sock, length - protocol.LENGTH_SIZE)
    try:
        return body.rstrip(b"\0").decode()
    except UnicodeDecodeError:
        return ""


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Bytes both ways until either side ends. One thread for both directions: an SSL connection
    must not be read and written by two threads at once. Decrypted bytes an SSL socket already
    holds (`pending`) are taken before waiting for the kernel."""
    peer = {client: upstream, upstream: client}
    with selectors.DefaultSelector() as selector:
        selector.register(client, selectors.EVENT_READ)
        selector.register(upstream, selectors.EVENT_READ)
        while True:
            ready = [s for s in (client, upstream) if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready = [key.fileobj for key, _ in selector.select()]  # type: ignore[misc]
            for sock in ready:
                data = sock.recv(CHUNK)  # blocks for the rest of a record only: it is on its way
                if not data:
                    return
                peer[sock].sendall(data)


@contextlib.contextmanager
def _stack(size: int) -> Any:
    previous = threading.stack_size(size)
    try:
        yield
    finally:
        threading.stack_size(previous)
