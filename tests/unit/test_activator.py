"""The activator: its hold, relay and refusal paths, and what an anonymous client can make it hold.

Clients are real sockets (and real libpq through psycopg); the database behind is a real Postgres
where the test is about what reaches Postgres, else an upstream that records or echoes bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import resource
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import structlog.testing
from support.fakes import MemoryStore
from support.operator import Operator, database
from support.postgres import Server, running_server

from controller.activator import limits, protocol, relay
from controller.activator.limits import Limits
from controller.activator.proxy import EVICTED, UNREACHABLE, Activator, Upstream, WakeError
from controller.api.types import (
    WAKE_ANNOTATION,
    DatabaseSpec,
    ObjectMeta,
    Phase,
    ServerlessDatabase,
    State,
)
from controller.app.local import LocalBackend
from controller.runtime.local.runtime import free_port, read_endpoint

KEY = "shop/orders"
STARTUP = protocol.startup_message({"user": "alice", "database": "orders"})


class Backend:
    """A sleeping database that a wake brings up after `delay`, or fails to."""

    def __init__(
        self, address: Upstream, *, delay: float = 0.05, fail: str = "", never: bool = False
    ) -> None:
        self.address = address
        self.delay = delay
        self.fail = fail
        self.never = never
        self.awake = False
        self.wakes = 0
        self._wake: asyncio.Task[None] | None = None

    async def upstream(self, key: str) -> Upstream | None:
        return self.address if self.awake else None

    async def wake(self, key: str) -> Upstream:
        if self._wake is None:
            self.wakes += 1
            self._wake = asyncio.ensure_future(self._come_up())
        await asyncio.shield(self._wake)
        return self.address

    async def _come_up(self) -> None:
        await asyncio.sleep(self.delay)
        if self.never:
            await asyncio.Event().wait()
        if self.fail:
            raise WakeError(self.fail)
        self.awake = True


class Recorder:
    """An upstream that keeps every byte each connection sends it and answers `reply` to each chunk."""

    def __init__(self, reply: bytes = b"") -> None:
        self.reply = reply
        self.received: list[bytearray] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> Upstream:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got = bytearray()
            self.received.append(got)
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    got += data
                    writer.write(self.reply)
                    await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return Upstream("127.0.0.1", self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    recording = Recorder()
    yield recording
    if recording.server is not None:
        recording.server.close()


@pytest.fixture
async def echo() -> AsyncIterator[Upstream]:
    """An upstream that answers every chunk with the same bytes, upper-cased."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):  # a client's reset reaches it as one
            while data := await reader.read(65536):
                writer.write(data.upper())
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
    server.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Server]:
    """A real Postgres for the database the activator wakes."""
    with running_server(any_password=True) as server:
        yield server


@contextlib.asynccontextmanager
async def serving(backend: Any, **kwargs: Any) -> AsyncIterator[tuple[Activator, int]]:
    activator = Activator(backend, **kwargs)
    port = await activator.listen(KEY, "127.0.0.1", 0)
    try:
        yield activator, port
    finally:
        await activator.close()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the activator sends before it closes; a close with the client's bytes unread is a
    reset (as when Postgres closes on junk), which ends the answer too."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while data := await reader.read(65536):
            received += data
    return received


async def error_fields(reader: asyncio.StreamReader) -> dict[bytes, str]:
    """An ErrorResponse's fields, then the close that follows it (as Postgres closes)."""
    header = await reader.readexactly(5)
    assert header[:1] == b"E", header
    body = await reader.readexactly(struct.unpack("!i", header[1:])[0] - 4)
    assert await reader.read() == b""
    return {f[:1]: f[1:].decode() for f in body.split(b"\0") if f}


async def refusal(port: int, first: bytes = b"", startup: bytes = STARTUP) -> dict[bytes, str]:
    """The ErrorResponse a raw client gets (libpq does not expose a connect error's SQLSTATE)."""
    reader, writer = await connect(port)
    if first:
        writer.write(first)
        assert await reader.readexactly(1) == protocol.DECLINE_ENCRYPTION
    writer.write(startup)
    try:
        return await error_fields(reader)
    finally:
        writer.close()


async def libpq_refusal(port: int) -> str:
    """What a real libpq client (sslmode=prefer: an SSLRequest first) reads from the activator."""
    with pytest.raises(psycopg.OperationalError) as caught:
        await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=port, user="alice", dbname="orders", sslmode="prefer", connect_timeout=60
        )
    return str(caught.value)


async def query(port: int, server: Server, sql: str = "select 1") -> Any:
    async with await psycopg.AsyncConnection.connect(
        host="127.0.0.1",
        port=port,
        user="postgres",
        password=server.password,
        dbname="postgres",
        sslmode="prefer",
        connect_timeout=60,
        autocommit=True,
    ) as conn:
        cursor = await conn.execute(sql)
        return await cursor.fetchone()


def client_backends(server: Server) -> int:
    with server.connect() as conn:
        row = conn.execute(
            "select count(*) from pg_stat_activity where backend_type = 'client backend'"
        ).fetchone()
    assert row is not None
    return int(row[0]) - 1  # not this session


class Held:
    """Counts held connections, and lets a test wait for a number of them."""

    def __init__(self) -> None:
        self.now = 0
        self.history: list[int] = []
        self._changed = asyncio.Event()

    def held(self, key: str, delta: int) -> None:
        self.now += delta
        self.history.append(self.now)
        self._changed.set()

    async def reach(self, count: int) -> None:
        while self.now != count:
            self._changed.clear()
            await self._changed.wait()


# -- a valid startup wakes, once, and reaches Postgres byte for byte -------------------------------


async def test_connections_are_held_during_one_wake_then_reach_postgres(postgres: Server) -> None:
    backend = Backend(Upstream("127.0.0.1", postgres.port))
    async with serving(backend, wake_timeout=30) as (_, port):
        rows = await asyncio.gather(*(query(port, postgres, f"select {i}") for i in range(30)))
    assert rows == [(i,) for i in range(30)]
    assert backend.wakes == 1


async def test_postgres_reads_the_startup_first_and_then_what_followed_byte_for_byte(
    recorder: Recorder,
) -> None:
    recorder.reply = b"R"  # as if Postgres asked for a password
    backend = Backend(await recorder.start())
    async with serving(backend) as (_, port):
        reader, writer = await connect(port)
        for request in (protocol.gssenc_request(), protocol.ssl_request()):
            writer.write(request)
            assert await reader.readexactly(1) == protocol.DECLINE_ENCRYPTION
        writer.write(STARTUP)
        assert await reader.readexactly(1) == b"R"
        writer.write(b"p\0\0\0\x0bsecret\0")
        assert await reader.readexactly(1) == b"R"
        writer.close()
    # the encryption requests were the activator's to answer: Postgres sees the startup first
    assert recorder.received == [bytearray(STARTUP + b"p\0\0\0\x0bsecret\0")]
    assert backend.wakes == 1


async def test_an_awake_database_is_relayed_raw_and_in_order(echo: Upstream) -> None:
    backend = Backend(echo)
    backend.awake = True
    async with serving(backend) as (_, port):
        reader, writer = await connect(port)
        payload = bytes(range(97, 123)) * 200_000  # 5 MB of letters: no startup, not parsed
        writer.write(payload)
        writer.write_eof()
        assert await reader.read(-1) == payload.upper()
    assert backend.wakes == 0


async def test_a_failed_wake_answers_57p03_with_the_reason(echo: Upstream) -> None:
    async with serving(Backend(echo, fail="Postgres could not start: disk full")) as (_, port):
        assert "FATAL:  Postgres could not start: disk full" in await libpq_refusal(port)
        fields = await refusal(port, protocol.ssl_request())
    assert (fields[b"S"], fields[b"C"], fields[b"M"]) == (
        "FATAL",
        "57P03",
        "Postgres could not start: disk full",
    )


@pytest.mark.looptime
async def test_a_wake_longer_than_the_timeout_answers_57p03(echo: Upstream) -> None:
    async with serving(Backend(echo, never=True), wake_timeout=30) as (_, port):
        loop = asyncio.get_running_loop()
        started = loop.time()
        fields = await refusal(port)
        assert loop.time() - started == pytest.approx(30, abs=1)  # looptime: 30 s of loop time, no real wait
    assert fields[b"C"] == "57P03"
    assert "not ready within 30s" in fields[b"M"]


async def test_a_gssenc_request_first_is_declined_then_refused_properly(echo: Upstream) -> None:
    async with serving(Backend(echo, fail="paused by spec.state")) as (_, port):
        fields = await refusal(port, protocol.gssenc_request())
    assert (fields[b"C"], fields[b"M"]) == ("57P03", "paused by spec.state")


async def test_held_connections_are_counted(echo: Upstream) -> None:
    held = Held()
    async with serving(Backend(echo, delay=0.2), observer=held) as (_, port):
        clients = [await connect(port) for _ in range(3)]
        for _, writer in clients:
            writer.write(STARTUP)
        for reader, _ in clients:
            assert await reader.readexactly(len(STARTUP)) == STARTUP.upper()
        for _, writer in clients:
            writer.close()
    assert max(held.history) == 3
    assert held.history[-1] == 0


# -- junk wakes nothing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        pytest.param(b"", b"", id="an empty connect"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n", b"", id="an HTTP GET"),
        pytest.param(struct.pack("!ii", 20_000, protocol.PROTOCOL_3_0) + bytes(100), b"", id="a bad length"),
        pytest.param(protocol.cancel_request(0x1D2C3B4A, 0x5F6E7D8C), b"", id="a cancel request, random key"),
        pytest.param(
            protocol.ssl_request() + bytes.fromhex("1603010200") + bytes(64), b"N", id="SSL, then garbage"
        ),
        pytest.param(protocol.ssl_request() * 2, b"N" + b"E", id="a second SSLRequest"),
        pytest.param(protocol.startup_message({"database": "orders"}), b"E", id="no user"),
    ],
)
async def test_junk_never_wakes_a_resting_database(recorder: Recorder, sent: bytes, answer: bytes) -> None:
    backend = Backend(await recorder.start())
    async with serving(backend) as (_, port):
        reader, writer = await connect(port)
        writer.write(sent)
        if not sent:
            writer.write_eof()
        received = await until_closed(reader)
        writer.close()
    assert received[: len(answer)] == answer
    assert backend.wakes == 0
    assert recorder.received == []


async def test_silent_connections_neither_wake_nor_reach_postgres(postgres: Server) -> None:
    """Two thousand connections that said nothing once woke the database and used its max_connections."""
    backend = Backend(Upstream("127.0.0.1", postgres.port))
    async with serving(backend) as (_, port):
        silent = [await connect(port) for _ in range(2000)]
        assert backend.wakes == 0
        async with await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=60
        ):
            assert backend.wakes == 1
            assert client_backends(postgres) == 1  # this client alone: the silent ones never came
        for _, writer in silent:
            writer.close()


@pytest.mark.postgres
def test_junk_against_a_paused_database_of_sdb_up_leaves_it_paused(operator: Operator) -> None:
    operator.apply(database("quiet", autoPause={"idleAfter": "1s"}))
    operator.wait_phase("quiet", Phase.ACTIVE)
    operator.wait_phase("quiet", Phase.PAUSED)
    endpoint = read_endpoint(operator.state_dir, "default/quiet")
    assert endpoint is not None
    port = endpoint.port
    for junk in (
        b"",
        b"GET / HTTP/1.1\r\n\r\n",
        protocol.cancel_request(7, 7),
        protocol.ssl_request() + b"\x16\x03",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(junk)
            with contextlib.suppress(OSError):  # closed, or reset: junk is not read to its end
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
    assert operator.get("quiet").status.phase is Phase.PAUSED
    assert WAKE_ANNOTATION not in operator.get("quiet").metadata.annotations
    with operator.connect("quiet") as conn:  # a real client still wakes it
        assert conn.execute("select 1").fetchone() == (1,)


# -- the startup has a deadline, and one encryption request of each kind ---------------------------


@pytest.mark.looptime
@pytest.mark.parametrize("deadline", [Limits().startup_deadline, 3.0])
async def test_a_trickling_client_is_answered_57p03_at_the_startup_deadline(
    echo: Upstream, deadline: float
) -> None:
    """A client sending a byte every 8 s once stayed 40 s and more; the whole startup gets `deadline`,
    then an answer that says so (never a bare close: to libpq that is "server closed the connection
    unexpectedly", with no reason)."""
    backend = Backend(echo)
    async with serving(backend, limits=Limits(startup_deadline=deadline)) as (_, port):
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await connect(port)
        answered = asyncio.ensure_future(error_fields(reader))
        for byte in STARTUP:
            if answered.done():
                break
            writer.write(bytes([byte]))
            await asyncio.wait([answered], timeout=8)
        fields = await answered
        assert loop.time() - started == pytest.approx(deadline, abs=0.5)
        writer.close()
    assert (fields[b"C"], fields[b"M"]) == (
        protocol.CANNOT_CONNECT_NOW,
        f"the connection's startup did not complete within {deadline:g}s; try again",
    )
    assert backend.wakes == 0


@pytest.mark.looptime
async def test_a_client_slow_to_start_is_woken_and_relayed_within_postgres_authentication_timeout(
    echo: Upstream,
) -> None:
    """Two hundred libpq threads sharing one GIL on a loaded machine took 10 s between the activator's
    answer to their SSLRequest and their next packet: a client gets as long as Postgres would give it
    (authentication_timeout, 60 s by default) before the activator gives up on it."""
    backend = Backend(echo)
    async with serving(backend) as (_, port):
        reader, writer = await connect(port)
        writer.write(protocol.ssl_request())
        assert await reader.readexactly(1) == protocol.DECLINE_ENCRYPTION
        await asyncio.sleep(50)
        writer.write(STARTUP)
        assert await reader.readexactly(len(STARTUP)) == STARTUP.upper()  # woken, then relayed
        writer.close()
    assert backend.wakes == 1


async def test_a_client_whose_awake_database_cannot_be_reached_is_answered_57p03(echo: Upstream) -> None:
    """Relayed raw (the database is already reachable), a client's first packet is unread when the
    connect fails: an ErrorResponse answers any first packet, so it is told rather than cut off."""
    backend = Backend(Upstream("127.0.0.1", free_port()))
    backend.awake = True
    async with serving(backend) as (_, port):
        reader, writer = await connect(port)
        writer.write(STARTUP)
        answer = await until_closed(reader)  # the unread packet makes the close a reset, after the answer
        writer.close()
    assert answer[:1] == b"E"
    fields = {f[:1]: f[1:].decode() for f in answer[5:].split(b"\0") if f}
    assert (fields[b"C"], fields[b"M"]) == (protocol.CANNOT_CONNECT_NOW, UNREACHABLE)


async def test_a_second_ssl_request_is_refused_as_postgres_refuses_it(echo: Upstream) -> None:
    backend = Backend(echo)
    async with serving(backend) as (_, port):
        reader, writer = await connect(port)
        writer.write(protocol.ssl_request())
        assert await reader.readexactly(1) == protocol.DECLINE_ENCRYPTION
        writer.write(protocol.ssl_request())
        fields = await error_fields(reader)  # no second 'N'
        writer.close()
    assert (fields[b"C"], fields[b"M"]) == (
        protocol.FEATURE_NOT_SUPPORTED,
        "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0",
    )
    assert backend.wakes == 0


# -- caps ------------------------------------------------------------------------------------------


async def test_at_the_negotiating_cap_a_new_connection_evicts_the_oldest(postgres: Server) -> None:
    backend = Backend(Upstream("127.0.0.1", postgres.port))
    async with serving(backend, limits=Limits(negotiating=3)) as (activator, port):
        silent = [await connect(port) for _ in range(3)]
        newest = await connect(port)
        evicted = (protocol.TOO_MANY_CONNECTIONS, EVICTED)
        fields = await error_fields(silent[0][0])  # the oldest made room, and is told why
        assert (fields[b"C"], fields[b"M"]) == evicted
        assert activator.negotiating == 3
        # a real client at the cap gets through: it evicts one more, and is done in milliseconds
        assert await query(port, postgres) == (1,)
        fields = await error_fields(silent[1][0])
        assert (fields[b"C"], fields[b"M"]) == evicted
        for _, writer in [*silent, newest]:
            writer.close()


async def test_held_connections_are_capped_per_database_and_in_all(echo: Upstream) -> None:
    held = Held()
    activator = Activator(
        Backend(echo, never=True), limits=Limits(held=2, held_per_database=1), observer=held
    )
    ports = [await activator.listen(key, "127.0.0.1", 0) for key in ("shop/a", "shop/b", "shop/c")]
    holding: list[asyncio.StreamWriter] = []
    try:
        # one held on a: a second for a is over its cap; one held on b: c is over the cap in all
        for hold_on, refused_on, message in (
            (ports[0], ports[0], "sorry, too many clients already: 1 are waiting for this database to wake"),
            (ports[1], ports[2], "sorry, too many clients already: 2 are waiting for a wake here"),
        ):
            _, writer = await connect(hold_on)
            writer.write(STARTUP)
            holding.append(writer)
            await held.reach(len(holding))
            fields = await refusal(refused_on)
            assert (fields[b"C"], fields[b"M"]) == (protocol.TOO_MANY_CONNECTIONS, message)
        for writer in holding:
            writer.close()
    finally:
        await activator.close()


@pytest.mark.parametrize(
    ("descriptors", "negotiating", "held", "per_database"),
    [
        (1_048_576, 4096, 4096, 1000),  # plenty: as configured
        (20_000, 4096, 4096, 1000),  # 4096 + 2 * 4096 = 12288 <= 20000 - 1000
        (10_000, 3000, 3000, 1000),  # budget 9000: 4096 * 9000 // 12288 = 3000, (9000 - 3000) // 2
        (1_024, 170, 171, 171),  # half kept back: 512; 4096 * 512 // 12288 = 170, (512 - 170) // 2
    ],
)
def test_caps_never_reach_the_last_descriptors(
    descriptors: int, negotiating: int, held: int, per_database: int
) -> None:
    sized = Limits().within(descriptors)
    assert (sized.negotiating, sized.held, sized.held_per_database) == (negotiating, held, per_database)
    assert sized.negotiating + 2 * sized.held <= descriptors - min(1000, descriptors // 2)


def test_clients_in_hand_are_counted_per_database_while_negotiating_or_held() -> None:
    occupancy: limits.Occupancy[str] = limits.Occupancy(Limits(negotiating=2))
    occupancy.arrive("first", "shop/orders")
    occupancy.arrive("second", "shop/billing")
    assert (occupancy.in_hand("shop/orders"), occupancy.in_hand("shop/billing")) == (1, 1)
    assert occupancy.arrive("third", "shop/orders") == "first"  # at the cap the oldest goes
    assert (occupancy.in_hand("shop/orders"), occupancy.in_hand("shop/billing")) == (1, 1)
    occupancy.leave("third")  # its startup was decided: it is held for a wake next, or relayed
    assert occupancy.hold("shop/orders") is None
    assert occupancy.in_hand("shop/orders") == 1
    occupancy.leave("first")  # an evicted connection's end changes nothing more
    occupancy.release("shop/orders")  # relayed: Postgres's to show now
    occupancy.leave("second")
    assert (occupancy.in_hand("shop/orders"), occupancy.in_hand("shop/billing")) == (0, 0)
    assert (occupancy.negotiating, occupancy.held) == (0, 0)


async def test_a_stalled_startup_and_a_held_client_are_in_hand_for_their_database(echo: Upstream) -> None:
    held = Held()
    async with serving(Backend(echo, never=True), observer=held) as (activator, port):
        stalled = await connect(port)
        stalled[1].write(protocol.ssl_request()[:4])  # half an SSLRequest, and then nothing
        waiting = await connect(port)
        waiting[1].write(STARTUP)
        await held.reach(1)  # accepted after the stalled one, so both are in hand by now
        assert (activator.in_hand(KEY), activator.in_hand("other/database")) == (2, 0)
        for _, writer in (stalled, waiting):
            writer.close()
    assert activator.in_hand(KEY) == 0


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
    try:
        assert limits.raise_descriptor_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- memory: what a client can park in the process ---------------------------------------------------


SIOCOUTQNSD = 0x894B
"""Linux: bytes a socket has not sent yet (linux/sockios.h)."""


def unsent(sock: socket.socket) -> int:
    return int(struct.unpack("i", fcntl.ioctl(sock, SIOCOUTQNSD, b"\0" * 4))[0])


def queues(local_port: int, remote_port: int) -> tuple[int, int]:
    """(not yet acknowledged by the peer, not yet read) of the socket local_port -> remote_port.

    From /proc/net/tcp, so for sockets of any owner: the activator's own ones too.
    """
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
            if (local, remote) == (local_port, remote_port):
                tx, rx = fields[4].split(":")
                return int(tx, 16), int(rx, 16)
    raise AssertionError(f"no socket {local_port} -> {remote_port}")


def unread(local_port: int, remote_port: int) -> int:
    return queues(local_port, remote_port)[1]


async def flood(sock: socket.socket, payload: memoryview, rounds: int = 8) -> int:
    """Send as much of `payload` as the peer takes, letting the loop run between rounds; bytes sent."""
    sent = 0
    for _ in range(rounds):
        with contextlib.suppress(BlockingIOError):
            while sent < len(payload):
                sent += sock.send(payload[sent:])
        for _ in range(20):
            await asyncio.sleep(0)
    return sent


def raw_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_a_held_connection_is_not_read_past_its_startup(echo: Upstream) -> None:
    """Clients sending 1 MB each during a wake once took 0.75 MB of the process apiece."""
    held = Held()
    async with serving(Backend(echo, never=True), observer=held) as (_, port):
        clients = [raw_client(port) for _ in range(5)]
        sent = [await flood(sock, memoryview(STARTUP + bytes(1 << 20))) for sock in clients]
        await held.reach(5)
        for sock, count in zip(clients, sent, strict=True):
            reached = count - unsent(sock)
            read_by_activator = reached - unread(port, sock.getsockname()[1])
            assert read_by_activator == len(STARTUP)
            sock.close()


async def test_a_relay_holds_little_however_slowly_postgres_reads() -> None:
    accepted: list[asyncio.Transport] = []

    class Stalled(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()
            accepted.append(transport)

    server = await asyncio.get_running_loop().create_server(Stalled, "127.0.0.1", 0)
    upstream_port = server.sockets[0].getsockname()[1]
    backend = Backend(Upstream("127.0.0.1", upstream_port))
    backend.awake = True
    async with serving(backend) as (_, port):
        sock = raw_client(port)
        sent = await flood(sock, memoryview(bytes(16 << 20)), rounds=30)
        activator_side = accepted[0].get_extra_info("peername")[1]
        in_kernel = (
            unsent(sock)
            + unread(port, sock.getsockname()[1])
            + unread(upstream_port, activator_side)
            + queues(activator_side, upstream_port)[0]
        )
        assert sent - in_kernel <= 2 * (relay.CHUNK + relay.HIGH_WATER)
        sock.close()
    server.close()


# -- logs: rate-limited, and no traceback for anything a client does ------------------------------


@pytest.mark.looptime
async def test_refusals_are_logged_a_few_per_reason_then_counted(echo: Upstream) -> None:
    with structlog.testing.capture_logs() as logs:
        async with serving(Backend(echo)) as (_, port):
            for _ in range(20):
                reader, writer = await connect(port)
                writer.write(b"GET / HTTP/1.1\r\n\r\n")
                assert await until_closed(reader) == b""
                writer.close()
            await asyncio.sleep(11)  # the interval ends: the count of the rest
    lines = [(e["event"], e["reason"], e.get("suppressed")) for e in logs if "reason" in e]
    assert lines == [
        *[("connection refused", "invalid length of startup packet", None)] * 3,
        ("connections refused, lines suppressed", "invalid length of startup packet", 17),
    ]


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a reset, not an orderly end."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_clients_that_reset_at_any_moment_leave_no_traceback(echo: Upstream) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    held = Held()
    backend = Backend(echo, delay=0.2)
    with structlog.testing.capture_logs() as logs:
        async with serving(backend, observer=held) as (_, port):
            # negotiating (nothing yet, half a length word, after an SSLRequest), then held
            moments = [b"", STARTUP[:3], protocol.ssl_request(), STARTUP]
            clients = [raw_client(port) for _ in moments]
            for sock, sent in zip(clients, moments, strict=True):
                sock.send(sent)
            await held.reach(1)
            for sock in clients:
                reset(sock)
            await held.reach(0)  # the wake came: the held one's relay meets the reset
            relayed = raw_client(port)  # awake now: relayed raw
            relayed.send(b"hello")
            for _ in range(50):
                await asyncio.sleep(0)
            reset(relayed)
            for _ in range(50):
                await asyncio.sleep(0)
    assert errors == []
    assert [e for e in logs if e["log_level"] in ("error", "critical") or "exc_info" in e] == []


# -- admission ---------------------------------------------------------------------------------------


async def test_admission_is_asked_after_a_valid_startup_and_before_any_wake(postgres: Server) -> None:
    asked: list[tuple[str, tuple[str, int]]] = []
    allowed = True

    async def admit(key: str, peer: tuple[str, int]) -> bool:
        asked.append((key, peer))
        return allowed

    backend = Backend(Upstream("127.0.0.1", postgres.port))
    async with serving(backend, admit=admit) as (_, port):
        reader, writer = await connect(port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")  # junk is turned away before the question
        assert await until_closed(reader) == b""
        writer.close()
        assert asked == []
        allowed = False
        fields = await refusal(port)
        assert (fields[b"C"], fields[b"M"]) == ("28000", "not allowed to connect from this address")
        assert backend.wakes == 0
        allowed = True
        assert await query(port, postgres) == (1,)
    assert backend.wakes == 1
    assert [key for key, _ in asked] == [KEY, KEY]
    assert all(host == "127.0.0.1" and peer_port > 0 for _, (host, peer_port) in asked)


async def test_a_failing_admission_check_refuses_without_waking(echo: Upstream) -> None:
    async def admit(key: str, peer: tuple[str, int]) -> bool:
        raise RuntimeError("the policy store is down")

    backend = Backend(echo)
    async with serving(backend, admit=admit) as (_, port):
        fields = await refusal(port)
    assert fields[b"C"] == protocol.CANNOT_CONNECT_NOW
    assert backend.wakes == 0


# -- the local operator's wake path ---------------------------------------------------------------


class Endpoints:
    def __init__(self) -> None:
        self.up = False

    def upstream(self, key: str) -> Upstream | None:
        return None

    def running(self, key: str) -> Upstream | None:
        return Upstream("127.0.0.1", 5432) if self.up else None

    def routed_direct(self, key: str) -> bool:
        return False  # as `upstream` says: the endpoint leads to the activator


class Wakes:
    def __init__(self) -> None:
        self.keys: list[str] = []

    def wake(self, key: str) -> None:
        self.keys.append(key)


async def test_two_hundred_clients_share_one_wake_request() -> None:
    store = MemoryStore()
    store.put(ServerlessDatabase(metadata=ObjectMeta(name="orders", namespace="shop")))
    endpoints, wakes = Endpoints(), Wakes()
    backend = LocalBackend(store)
    backend.bind(endpoints, wakes)
    waiters = [asyncio.ensure_future(backend.wake("shop/orders")) for _ in range(200)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert wakes.keys == ["shop/orders"]
    assert WAKE_ANNOTATION in store.objects["shop/orders"].metadata.annotations
    endpoints.up = True
    backend.ready("shop/orders")
    assert await asyncio.gather(*waiters) == [Upstream("127.0.0.1", 5432)] * 200


async def test_a_database_paused_by_its_spec_is_refused_at_once() -> None:
    store = MemoryStore()
    spec = DatabaseSpec(state=State.PAUSED)
    store.put(ServerlessDatabase(metadata=ObjectMeta(name="orders", namespace="shop"), spec=spec))
    backend = LocalBackend(store)
    backend.bind(Endpoints(), Wakes())
    with pytest.raises(WakeError, match=r"paused by its spec\.state; `sdb resume orders`"):
        await backend.wake("shop/orders")


def test_error_response_is_well_formed() -> None:
    message = protocol.error_response("57P03", "the database is waking up")
    assert message[:1] == b"E"
    (length,) = struct.unpack("!i", message[1:5])
    assert length == len(message) - 1
    fields = {f[:1]: f[1:].decode() for f in message[5:-1].split(b"\0") if f}
    assert fields == {b"S": "FATAL", b"V": "FATAL", b"C": "57P03", b"M": "the database is waking up"}
