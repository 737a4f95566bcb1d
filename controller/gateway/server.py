"""The gateway's server: aiohttp, with `POST /sql` (and its CORS preflight), and a WebSocket upgrade on
any other path (the driver asks for `/v2`) on the same port.

It serves HTTPS and `wss://` with a certificate from the operator's CA (`tls_context`). Plain HTTP
carries the connection string, password included, in the clear: it is served only when asked for,
and only on loopback; a token is never taken over it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web

from controller.gateway.identity import TokenLogins
from controller.gateway.pool import Pool
from controller.gateway.reach import Backend, Door, Limits, NoObserver, Observer, PostgresTls, Reach
from controller.gateway.sql import Sql
from controller.gateway.websocket import Relay
from controller.identity.endpoint import IdentityEndpoint

BUSY = 503
RELOAD_SECONDS = 300.0
log = structlog.get_logger("gateway")


class PlaintextError(ValueError):
    """Plain HTTP asked for on an address other hosts can reach."""


def listen(host: str, port: int, *, tls: bool) -> socket.socket:
    """A listening socket on host:port (0 picks a port); plain HTTP (no `tls`) only on loopback, since
    the connection string's password would cross the network unencrypted."""
    if not tls and not loopback(host):
        raise PlaintextError(
            f"the gateway serves plain HTTP on loopback only ({host} is not): every request carries "
            "its password; serve it with TLS there"
        )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def tls_context(certificate: Path, key: Path) -> ssl.SSLContext:
    """The server side of HTTPS and `wss://`: this certificate (and its key), TLS 1.2 or later."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    return context


async def reload_periodically(
    context: ssl.SSLContext, certificate: Path, key: Path, *, every: float = RELOAD_SECONDS
) -> None:
    """`reload` now and then: a renewed certificate (a Secret volume is updated in place) is served
    to new connections without a restart."""
    while True:
        await asyncio.sleep(every)
        reload(context, certificate, key)


def reload(context: ssl.SSLContext, certificate: Path, key: Path) -> None:
    """Read the certificate and key again into the live context; a pair that does not load (missing,
    half-written, not matching) leaves the one loaded being served."""
    try:
        tls_context(certificate, key)  # checked before the live context changes
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as error:
        log.warning("could not reload the gateway's certificate; serving the one loaded", error=str(error))


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Gateway:
    def __init__(
        self,
        backend: Backend,
        *,
        limits: Limits | None = None,
        observer: Observer | None = None,
        pool: Pool | None = None,
        postgres_tls: PostgresTls | None = None,
        identity: IdentityEndpoint | None = None,
        identity_tls: PostgresTls | None = None,
    ) -> None:
        """`identity_tls`: how the identity endpoint's certificate is checked, when not as Postgres's."""
        self.reach = Reach(backend, limits or Limits(), observer or NoObserver(), postgres_tls)
        self.pool = pool or Pool()
        logins = TokenLogins(identity, identity_tls or self.reach.tls)
        self.sql = Sql(self.reach, self.pool, logins)
        self.relay = Relay(self.reach, logins)
        self._in_flight = 0
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._bounded], handler_args={"max_field_size": 16384})
        app.router.add_post("/sql", self.sql.handle)
        app.router.add_route("OPTIONS", "/sql", self.sql.preflight)
        app.router.add_get("/{path:.*}", self.relay.handle)
        return app

    @web.middleware
    async def _bounded(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """At most `max_in_flight` requests and sessions at once; the rest are refused, not queued."""
        if self._in_flight >= self.reach.limits.max_in_flight:
            door = Door.HTTP if request.path == "/sql" else Door.WEBSOCKET
            self.reach.observer.gateway_refused(door, "busy")
            return web.json_response({"message": "the gateway is busy; try again"}, status=BUSY)
        self._in_flight += 1
        try:
            return await handler(request)
        finally:
            self._in_flight -= 1

    async def start(self, sock: socket.socket, *, ssl_context: ssl.SSLContext | None = None) -> int:
        """Serve on a listening socket (from `listen`), with TLS when given a context; returns the port."""
        runner = web.AppRunner(self.application(), handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        self._runner = runner
        self.port = int(sock.getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.pool.close()
