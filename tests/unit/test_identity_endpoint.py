"""The identity endpoint's door, before any Postgres: TLS first, the password asked for only inside
it, refusals on the wire, and what an anonymous client can make it hold."""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import struct
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from support.identity import ISSUER, SigningKey, jwks

from controller import pki
from controller.activator import protocol
from controller.activator.proxy import Upstream, WakeError
from controller.api import types, units
from controller.identity import tokens
from controller.identity.authenticate import Authenticator
from controller.identity.endpoint import IdentityEndpoint

KEY = "default/ident"
SIGNER = SigningKey()
PASSWORD_REQUEST = struct.pack("!cii", b"R", 8, 3)


class Unwakeable:
    """A database that exists with one identity, and cannot be woken: the door is all there is."""

    async def identities(self, key: str) -> Sequence[types.IdentitySpec] | None:
        if key != KEY:
            return None
        return (types.IdentitySpec(role="reader", issuer=ISSUER, subject="alice"),)

    async def upstream(self, key: str) -> Upstream | None:
        return None

    async def wake(self, key: str) -> Upstream:
        self.wakes += 1
        raise WakeError("the database could not be woken: no room on this host")

    wakes = 0


@pytest.fixture(scope="module")
def certificates() -> Iterator[tuple[Path, ssl.SSLContext]]:
    now = units.now_utc()
    authority = pki.new_authority("test", now=now)
    server = pki.issue(authority, common_name="localhost", names=["127.0.0.1"], now=now)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "ca.crt").write_text(authority.certificate)
        (root / "server.crt").write_text(server.certificate)
        (root / "server.key").write_text(server.key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(root / "server.crt", root / "server.key")
        yield root / "ca.crt", context


async def endpoint(tls: ssl.SSLContext, **options: float) -> tuple[IdentityEndpoint, int]:
    door = IdentityEndpoint(
        Unwakeable(),
        Authenticator(issuers=[tokens.Issuer(ISSUER, jwks(SIGNER))]),
        **options,  # type: ignore[arg-type]
    )
    return door, await door.listen(KEY, "127.0.0.1", 0, tls)


def _until_closed(sock: socket.socket | ssl.SSLSocket) -> bytes:
    out = b""
    while chunk := sock.recv(4096):
        out += chunk
    return out


def _fields(reply: bytes) -> dict[str, str]:
    assert reply[:1] == b"E", reply
    return {f[:1].decode(): f[1:].decode() for f in reply[5:].rstrip(b"\0").split(b"\0")}


def login(port: int, ca: Path, token: str, user: str = "reader") -> dict[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(protocol.ssl_request())
        assert raw.recv(1) == b"S"
        with ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(protocol.startup_message({"user": user, "database": "app"}))
            assert tls.recv(9) == PASSWORD_REQUEST
            tls.sendall(b"p" + struct.pack("!i", len(token) + 5) + token.encode() + b"\0")
            return _fields(_until_closed(tls))


async def test_a_token_is_asked_for_only_inside_tls_and_checked(
    certificates: tuple[Path, ssl.SSLContext],
) -> None:
    ca, tls = certificates
    door, port = await endpoint(tls)
    try:
        expired = SIGNER.mint("alice", tokens.default_audience(KEY), lifetime=-300)
        refused = await asyncio.to_thread(login, port, ca, expired)
        assert (refused["C"], refused["M"]) == (
            "28P01",
            'token authentication failed for user "reader": the token has expired',
        )
        # A good token: refused only because this database cannot be woken, and told why.
        valid = SIGNER.mint("alice", tokens.default_audience(KEY))
        unwoken = await asyncio.to_thread(login, port, ca, valid)
        assert (unwoken["C"], unwoken["M"]) == (
            "57P03",
            "the database could not be woken: no room on this host",
        )
    finally:
        await door.close()


def plaintext(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(protocol.startup_message({"user": "reader", "database": "app"}))
        return _until_closed(raw)


async def test_plaintext_is_refused_with_no_password_asked(certificates: tuple[Path, ssl.SSLContext]) -> None:
    _, tls = certificates
    door, port = await endpoint(tls)
    try:
        reply = await asyncio.to_thread(plaintext, port)
        assert not reply.startswith(b"R")
        assert _fields(reply)["C"] == "28000"
        assert "needs TLS" in _fields(reply)["M"]
    finally:
        await door.close()


def cancel(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(struct.pack("!iiii", 16, protocol.CANCEL_REQUEST_CODE, 4242, 7))
        return _until_closed(raw)


async def test_a_cancel_request_for_a_resting_database_wakes_nothing(
    certificates: tuple[Path, ssl.SSLContext],
) -> None:
    _, tls = certificates
    door, port = await endpoint(tls)
    try:
        assert await asyncio.to_thread(cancel, port) == b""  # answered as Postgres answers: not at all
        assert isinstance(door.backend, Unwakeable)
        assert door.backend.wakes == 0
    finally:
        await door.close()


def silent(port: int) -> float:
    """Connect, send one byte, then nothing: how long until the endpoint closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        start = time.monotonic()
        raw.sendall(b"\0")
        assert raw.recv(1) == b""
        return time.monotonic() - start


async def test_a_startup_that_trickles_is_closed_at_the_deadline(
    certificates: tuple[Path, ssl.SSLContext],
) -> None:
    _, tls = certificates
    door, port = await endpoint(tls, startup_deadline=0.5)
    try:
        waited = await asyncio.to_thread(silent, port)
        assert 0.4 < waited < 5
        await asyncio.sleep(0.1)
        assert door.negotiating == 0
        assert door.connections == 0
    finally:
        await door.close()


def trickle_inside_tls(port: int, ca: Path) -> float:
    """TLS taken, then a startup packet a byte at a time, each within the per-read timeout: how long
    until the endpoint closes the connection (the deadline is for the whole startup)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(protocol.ssl_request())
        assert raw.recv(1) == b"S"
        with ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            start = time.monotonic()
            packet = struct.pack("!i", 1000) + b"x" * 996
            for byte in packet:
                try:
                    tls.sendall(bytes([byte]))
                except OSError:
                    break
                readable, _, _ = select.select([tls], [], [], 0.1)
                if readable and tls.recv(1) == b"":
                    break
            return time.monotonic() - start


async def test_the_deadline_holds_inside_tls_too(certificates: tuple[Path, ssl.SSLContext]) -> None:
    ca, tls = certificates
    door, port = await endpoint(tls, startup_deadline=1.0)
    try:
        waited = await asyncio.to_thread(trickle_inside_tls, port, ca)
        assert 0.4 < waited < 5  # trickling on would take 100 s
    finally:
        await door.close()


async def test_past_the_cap_on_negotiating_connections_a_new_one_is_closed_at_once(
    certificates: tuple[Path, ssl.SSLContext],
) -> None:
    _, tls = certificates
    door, port = await endpoint(tls, max_negotiating=2)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        for _ in range(100):
            if door.negotiating == 2:
                break
            await asyncio.sleep(0.02)
        assert door.negotiating == 2
        third = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert await asyncio.to_thread(third.recv, 1) == b""
        third.close()
    finally:
        for sock in held:
            sock.close()
        await door.close()
