"""The gateway's bounds, on a real Postgres: request and response caps, the statement timeout, a query
cancelled when its client goes away, kept sessions and what they forget, and WebSocket junk that
never wakes a database.

The gateway runs in-process against a backend that stands for a resting database (it counts wakes;
a wake makes it awake); the database's Postgres is real and asks for SCRAM passwords.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from support.cluster import eventually
from support.postgres import Server, running_server

from controller.activator import protocol
from controller.activator.proxy import Upstream, WakeError
from controller.api import types
from controller.gateway import request
from controller.gateway.pool import Pool
from controller.gateway.reach import Door, Limits
from controller.gateway.server import Gateway, listen
from controller.identity.authenticate import Authenticator
from controller.identity.endpoint import NEEDS_TLS, IdentityEndpoint
from controller.runtime.local.server import SERVER_USER

pytestmark = pytest.mark.postgres

KEY = "shop/orders"
HOST = "orders.shop"
BOUND_ROLE = "reader"
"""Bound to an identity: a login as it is a token login."""


class Resting:
    """A database that is asleep until woken (or that refuses to wake, with `fail`)."""

    def __init__(self, address: Upstream, *, fail: str = "") -> None:
        self.address = address
        self.fail = fail
        self.asleep = True
        self.wakes = 0

    async def upstream(self, key: str) -> Upstream | None:
        return None if self.asleep else self.address

    async def wake(self, key: str) -> Upstream:
        self.wakes += 1
        if self.fail:
            raise WakeError(self.fail)
        self.asleep = False
        return self.address

    async def exists(self, key: str) -> bool:
        return key == KEY

    def awake(self, key: str) -> bool:
        return not self.asleep

    async def admits(self, key: str, peer: tuple[str, int]) -> bool:
        return peer[0] == "127.0.0.1"

    async def identities(self, key: str) -> tuple[types.IdentitySpec, ...] | None:
        if key != KEY:
            return None
        return (types.IdentitySpec(BOUND_ROLE, issuer="https://issuer.test", subject="alice"),)


class Counts:
    def __init__(self) -> None:
        self.refused: list[tuple[Door, str]] = []
        self.served: list[Door] = []
        self.held = 0

    def gateway_held(self, key: str, door: Door, delta: int) -> None:
        self.held += delta

    def gateway_served(self, key: str, door: Door, seconds: float) -> None:
        self.served.append(door)

    def gateway_refused(self, door: Door, reason: str) -> None:
        self.refused.append((door, reason))


@pytest.fixture(scope="module")
def postgres() -> Iterator[Server]:
    with running_server() as server:
        yield server


class Running:
    def __init__(self, gateway: Gateway, backend: Resting, counts: Counts, server: Server) -> None:
        self.gateway = gateway
        self.backend = backend
        self.counts = counts
        self.server = server
        self.http = aiohttp.ClientSession()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    def connection_string(self, password: str | None = None) -> str:
        return f"postgresql://{SERVER_USER}:{password or self.server.password}@{HOST}/postgres"

    async def sql(self, document: Any, *, password: str | None = None, **headers: str) -> tuple[int, Any]:
        async with self.http.post(
            f"{self.url}/sql",
            data=json.dumps(document),
            headers={
                request.CONNECTION_STRING: self.connection_string(password),
                request.ARRAY_MODE: "true",
                request.RAW_TEXT_OUTPUT: "true",
                **headers,
            },
        ) as response:
            return response.status, await response.json(content_type=None)

    def in_transaction(self) -> list[tuple[Any, ...]]:
        """Other sessions inside a transaction block, whatever they ran last."""
        with self.server.connect() as conn:
            return conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
            ).fetchall()

    def activity(self, like: str) -> list[tuple[Any, ...]]:
        """Other sessions running a query like this one, as Postgres sees them."""
        with self.server.connect() as conn:
            return conn.execute(
                "SELECT pid, state FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                [like],
            ).fetchall()


@pytest.fixture
async def running(postgres: Server, request_limits: Limits) -> AsyncIterator[Running]:
    backend = Resting(Upstream("127.0.0.1", postgres.port))
    counts = Counts()
    identity = IdentityEndpoint(backend, Authenticator())
    gateway = Gateway(
        backend, limits=request_limits, observer=counts, pool=Pool(idle_timeout=0.2), identity=identity
    )
    await gateway.start(listen("127.0.0.1", 0, tls=False))
    running = Running(gateway, backend, counts, postgres)
    try:
        yield running
    finally:
        await running.http.close()
        await gateway.close()


@pytest.fixture
def request_limits() -> Limits:
    return Limits(max_request_bytes=4096, max_response_bytes=4096, statement_timeout=1.0)


# -- /sql -------------------------------------------------------------------------------------------


async def test_a_request_over_its_cap_gets_413_and_wakes_nothing(running: Running) -> None:
    status, body = await running.sql({"query": "SELECT $1", "params": ["x" * 5000]})
    assert status == 413
    assert body["message"] == "request is too large (max is 4096 bytes)"
    assert running.backend.wakes == 0
    assert running.counts.refused == [(Door.HTTP, "request_too_large")]


async def test_a_response_over_its_cap_gets_507_and_its_query_is_stopped(running: Running) -> None:
    status, body = await running.sql({"query": "SELECT generate_series(1, 100000000), repeat('x', 100)"})
    assert status == 507
    assert body["message"] == "response is too large (max is 4096 bytes)"
    await eventually(
        lambda: not running.activity("%generate_series(1, 100000000)%"), what="the query to stop"
    )
    status, body = await running.sql({"query": "SELECT repeat('x', 1000) FROM generate_series(1, 3)"})
    assert status == 200  # just under the cap: the same session's role still gets answers
    assert len(body["rows"]) == 3


async def test_a_statement_past_the_timeout_is_cancelled_with_57014(running: Running) -> None:
    status, body = await running.sql({"query": "SELECT pg_sleep(60)"})
    assert status == 400
    assert body["code"] == "57014"
    assert "statement timeout" in body["message"]
    await eventually(lambda: not running.activity("SELECT pg_sleep(60)"), what="the sleep to be cancelled")


async def test_a_client_that_goes_away_has_its_query_cancelled(running: Running) -> None:
    client = asyncio.ensure_future(running.sql({"query": "SELECT pg_sleep(59)"}))
    await eventually(lambda: running.activity("SELECT pg_sleep(59)") != [], what="the query to run")
    client.cancel()  # the client's connection closes
    with pytest.raises(asyncio.CancelledError):
        await client
    await eventually(lambda: not running.activity("SELECT pg_sleep(59)"), what="the query to be cancelled")
    await eventually(
        lambda: (Door.HTTP, "client_gone") in running.counts.refused, what="the refusal to be counted"
    )


async def test_sql_errors_keep_every_field_and_a_batch_rolls_back(running: Running) -> None:
    status, body = await running.sql({"query": "SELECT * FROM nope"})
    assert (status, body["code"], body["position"], body["severity"]) == (400, "42P01", "15", "ERROR")
    assert body["file"]
    assert body["routine"]
    await running.sql({"query": "CREATE TABLE IF NOT EXISTS kept (n int)"})
    status, body = await running.sql(
        {"queries": [{"query": "INSERT INTO kept VALUES (1)"}, {"query": "SELECT 1/0"}]}
    )
    assert (status, body["code"]) == (400, "22012")
    status, body = await running.sql({"query": "SELECT count(*) FROM kept"})
    assert body["rows"] == [["0"]]
    status, body = await running.sql(
        {"queries": [{"query": "SELECT 1"}]}, **{request.BATCH_READ_ONLY: "true"}
    )
    assert status == 200
    status, body = await running.sql(
        {"queries": [{"query": "INSERT INTO kept VALUES (2)"}]}, **{request.BATCH_READ_ONLY: "true"}
    )
    assert (status, body["code"]) == (400, "25006")  # read-only transaction


async def test_a_kept_session_is_reused_forgets_its_state_and_closes_when_idle(running: Running) -> None:
    _, first = await running.sql({"query": "SELECT pg_backend_pid()"})
    await running.sql({"query": "SET search_path TO nowhere"})
    await running.sql({"query": "CREATE TEMP TABLE scratch (n int)"})
    _, again = await running.sql({"query": "SELECT pg_backend_pid(), current_setting('search_path')"})
    assert again["rows"] == [[first["rows"][0][0], '"$user", public']]  # the same session, reset
    status, body = await running.sql({"query": "SELECT * FROM scratch"})
    assert (status, body["code"]) == (400, "42P01")
    pid = int(first["rows"][0][0])
    await eventually(lambda: not running.gateway.pool.kept(KEY), what="the kept session to be let go")

    def backend_gone() -> bool:  # a backend exits on its own time after its client hangs up
        with running.server.connect() as conn:
            found = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
            return found.fetchone() == (0,)

    await eventually(backend_gone, what="its server process to exit")


@pytest.fixture
async def keeping(postgres: Server, request_limits: Limits) -> AsyncIterator[Running]:
    """A gateway that keeps its sessions for a minute: no request here finds a fresh one by chance."""
    backend = Resting(Upstream("127.0.0.1", postgres.port))
    gateway = Gateway(backend, limits=request_limits, pool=Pool(idle_timeout=60))
    await gateway.start(listen("127.0.0.1", 0, tls=False))
    running = Running(gateway, backend, Counts(), postgres)
    try:
        yield running
    finally:
        await running.http.close()
        await gateway.close()


async def test_no_session_state_reaches_the_next_request_on_the_same_session(keeping: Running) -> None:
    running = keeping
    state = (
        "SELECT pg_backend_pid(), current_setting('application_name'), current_setting('work_mem'), "
        "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), "
        "(SELECT count(*) FROM pg_prepared_statements), "
        "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())"
    )
    _, clean = await running.sql({"query": state})
    pid = clean["rows"][0][0]
    # State changed by a SELECT (no statement's text says whether it changes the session), by a
    # batch, by a failed batch, and by statements that exist only to change it.
    changes: list[Any] = [
        {"query": "SELECT set_config('application_name', 'leaked', false), pg_advisory_lock(42)"},
        {"queries": [{"query": "SET work_mem = '77MB'"}, {"query": "SELECT pg_advisory_lock(43)"}]},
        {"queries": [{"query": "SELECT pg_advisory_lock(44)"}, {"query": "SELECT 1/0"}]},
        {"query": "PREPARE leaked AS SELECT 1"},
        {"query": "CREATE TEMP TABLE leaked (n int)"},
    ]
    for change in changes:
        await running.sql(change)
        _, after = await running.sql({"query": state})
        assert after["rows"] == clean["rows"], change  # the same session, as clean as at first
    # A COMMIT that fails ends its transaction; the session goes on, clean.
    await running.sql({"query": "CREATE TABLE once (n int UNIQUE DEFERRABLE INITIALLY DEFERRED)"})
    inserts = [{"query": "INSERT INTO once VALUES (1)"}, {"query": "INSERT INTO once VALUES (1)"}]
    status, body = await running.sql({"queries": inserts})
    assert (status, body["code"]) == (400, "23505")
    _, after = await running.sql({"query": state})
    assert after["rows"] == clean["rows"]
    await running.sql({"query": "DROP TABLE once"})
    # A statement that must run outside a transaction block still runs alone, pipelined reset or not.
    status, _ = await running.sql({"query": "VACUUM pg_class"})
    assert status == 200
    # A transaction left open cannot be reset: that session is closed at once (not kept holding
    # its transaction until a request takes it), and the next one is new.
    status, _ = await running.sql({"query": "BEGIN"})
    assert status == 200
    await eventually(lambda: not running.in_transaction(), what="the session left in a transaction to close")
    _, after = await running.sql({"query": state})
    assert after["rows"][0][0] != pid
    assert after["rows"][0][1:] == clean["rows"][0][1:]
    assert running.activity("BEGIN") == []


async def test_a_wrong_password_is_refused_by_postgres_and_never_gets_a_kept_session(
    running: Running,
) -> None:
    status, _ = await running.sql({"query": "SELECT 1"})
    assert status == 200
    status, body = await running.sql({"query": "SELECT 1"}, password="wrong")
    assert status == 400
    assert body["code"] == "08001"
    assert "password authentication failed" in body["message"]
    assert "wrong" not in body["message"]
    assert "127.0.0.1" not in body["message"]  # nor where the database's server listens


async def test_an_unknown_database_or_a_failed_wake_wakes_nothing_or_says_57p03(running: Running) -> None:
    async with running.http.post(
        f"{running.url}/sql",
        data=json.dumps({"query": "SELECT 1"}),
        headers={request.CONNECTION_STRING: "postgresql://app:pw@ghost.shop/app"},
    ) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "3D000"
    assert running.backend.wakes == 0
    running.backend.fail = "Postgres could not start: disk full"
    status, body = await running.sql({"query": "SELECT 1"})
    assert (status, body["code"], body["message"]) == (400, "57P03", "Postgres could not start: disk full")


async def test_a_bearer_token_over_plain_http_is_refused_before_it_is_checked_and_wakes_nothing(
    running: Running,
) -> None:
    status, body = await running.sql({"query": "SELECT 1"}, Authorization="Bearer eyJhbGciOi.e30.c2ln")
    assert (status, body["code"], body["message"]) == (400, "28000", NEEDS_TLS)
    assert running.backend.wakes == 0
    assert running.counts.refused == [(Door.HTTP, "plaintext")]


# -- WebSocket --------------------------------------------------------------------------------------


async def ws_exchange(running: Running, *frames: bytes | str, host: str = HOST) -> tuple[bytes, bool]:
    """Send frames, then read what comes back until the gateway closes."""
    async with running.http.ws_connect(f"{running.url}/v2?address={host}:5432") as ws:
        for frame in frames:
            if isinstance(frame, str):
                await ws.send_str(frame)
            else:
                await ws.send_bytes(frame)
        received = b""
        async for message in ws:
            if message.type is aiohttp.WSMsgType.BINARY:
                received += message.data
        return received, ws.closed


def fields(error: bytes) -> dict[bytes, str]:
    assert error[:1] == b"E", error
    return {f[:1]: f[1:].decode() for f in error[5:-1].split(b"\0") if f}


@pytest.mark.parametrize(
    ("frames", "answer"),
    [
        pytest.param(("SELECT 1",), None, id="a text frame"),
        # Closed without a word, as Postgres closes on a length it cannot read:
        pytest.param((b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",), None, id="an HTTP request"),
        pytest.param((struct.pack("!ii", 1_000_000, protocol.PROTOCOL_3_0),), None, id="a bad length"),
        pytest.param((protocol.ssl_request(), b"\x16\x03\x01garbage!"), None, id="TLS after an SSLRequest"),
        # Answered as Postgres answers:
        pytest.param((protocol.startup_message({"database": "x"}),), "28000", id="a startup with no user"),
        pytest.param(
            (protocol.startup_message({"user": "app"}, protocol=2 << 16),), "0A000", id="protocol 2.0"
        ),
        pytest.param(
            (struct.pack("!iiii", 16, protocol.CANCEL_REQUEST_CODE, 1, 2),), None, id="a CancelRequest"
        ),
        pytest.param((protocol.startup_message({"user": "app"})[:10],), None, id="half a StartupMessage"),
    ],
)
@pytest.mark.parametrize("request_limits", [Limits(startup_timeout=0.5)])
async def test_junk_over_websocket_never_wakes_the_database(
    running: Running, frames: tuple[bytes | str, ...], answer: str | None
) -> None:
    received, closed = await ws_exchange(running, *frames)
    assert closed
    declined = received.startswith(protocol.DECLINE_ENCRYPTION)
    error = received[1:] if declined else received
    if answer is None:
        assert error == b""
    else:
        assert fields(error)[b"C"] == answer
    assert running.backend.wakes == 0
    assert running.counts.held == 0


async def test_a_startup_over_websocket_wakes_the_database_once_and_reaches_postgres(
    running: Running,
) -> None:
    startup = protocol.startup_message({"user": SERVER_USER, "database": "postgres"})
    received, _ = await ws_exchange(running, protocol.ssl_request(), startup)
    assert received[:1] == protocol.DECLINE_ENCRYPTION  # declined here: TLS is the wss:// layer's
    assert received[1:2] == b"R"  # Postgres's own authentication request (SCRAM), through the relay
    assert struct.unpack("!i", received[6:10]) == (10,)  # AuthenticationSASL
    assert running.backend.wakes == 1
    assert running.counts.served == [Door.WEBSOCKET]


async def test_a_startup_as_a_bound_role_over_plain_ws_is_refused_before_a_password_is_asked_for(
    running: Running,
) -> None:
    startup = protocol.startup_message({"user": BOUND_ROLE, "database": "postgres"})
    received, _ = await ws_exchange(running, startup)
    assert (fields(received)[b"C"], fields(received)[b"M"]) == ("28000", NEEDS_TLS)
    assert running.backend.wakes == 0
    assert running.counts.refused == [(Door.WEBSOCKET, "plaintext")]


async def test_a_startup_for_an_unknown_database_is_answered_3d000(running: Running) -> None:
    startup = protocol.startup_message({"user": SERVER_USER, "database": "postgres"})
    received, _ = await ws_exchange(running, startup, host="ghost.shop")
    assert fields(received)[b"C"] == "3D000"
    assert running.backend.wakes == 0
