"""The activator: the sans-I/O startup parser, and the proxy's hold, relay and refusal paths."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import psycopg
import pytest
from support.fakes import MemoryStore

from controller.activator import protocol
from controller.activator.proxy import Activator, Upstream, WakeError
from controller.api.types import WAKE_ANNOTATION, DatabaseSpec, ObjectMeta, ServerlessDatabase, State
from controller.app.local import LocalBackend

# -- wire formats -------------------------------------------------------------------------------


def test_error_response_is_well_formed() -> None:
    message = protocol.error_response("57P03", "the database is waking up")
    assert message[:1] == b"E"
    (length,) = struct.unpack("!i", message[1:5])
    assert length == len(message) - 1
    fields = {f[:1]: f[1:].decode() for f in message[5:-1].split(b"\0") if f}
    assert fields == {b"S": "FATAL", b"V": "FATAL", b"C": "57P03", b"M": "the database is waking up"}


# -- the proxy ------------------------------------------------------------------------------------


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


@pytest.fixture
async def echo() -> AsyncIterator[Upstream]:
    """An upstream that answers every chunk with the same bytes, upper-cased."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


async def test_connections_are_held_during_one_wake_then_relayed(echo: Upstream) -> None:
    backend = Backend(echo)
    activator = Activator(backend, wake_timeout=5)
    port = await activator.listen("shop/orders", "127.0.0.1", 0)

    async def client(index: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"hello {index}".encode())
        await writer.drain()
        data = await reader.readexactly(len(f"hello {index}"))
        writer.close()
        return data

    results = await asyncio.gather(*(client(i) for i in range(50)))
    assert results == [f"HELLO {i}".encode() for i in range(50)]
    assert backend.wakes == 1
    await activator.close()


async def test_large_transfers_keep_their_bytes_in_order(echo: Upstream) -> None:
    backend = Backend(echo)
    backend.awake = True
    activator = Activator(backend)
    port = await activator.listen("shop/orders", "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = bytes(range(97, 123)) * 200_000  # 5 MB of letters
    writer.write(payload)
    writer.write_eof()
    received = await reader.read(-1)
    assert received == payload.upper()
    await activator.close()


async def libpq_refusal(port: int) -> str:
    """What a real libpq client (sslmode=prefer: an SSLRequest first) reads from the activator."""
    with pytest.raises(psycopg.OperationalError) as caught:
        await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=port, user="alice", dbname="orders", sslmode="prefer", connect_timeout=60
        )
    return str(caught.value)


async def error_fields(port: int, first: bytes = b"") -> dict[bytes, str]:
    """The ErrorResponse fields a raw client gets (libpq does not expose a connect error's SQLSTATE)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if first:
        writer.write(first)
        assert await reader.readexactly(1) == protocol.DECLINE_ENCRYPTION
    writer.write(protocol.startup_message({"user": "alice", "database": "orders"}))
    header = await reader.readexactly(5)
    assert header[:1] == b"E"
    body = await reader.readexactly(struct.unpack("!i", header[1:])[0] - 4)
    assert await reader.read() == b""  # then the connection closes, as Postgres closes it
    writer.close()
    return {f[:1]: f[1:].decode() for f in body.split(b"\0") if f}


async def test_a_failed_wake_answers_57p03_with_the_reason(echo: Upstream) -> None:
    activator = Activator(Backend(echo, fail="Postgres could not start: disk full"))
    port = await activator.listen("shop/orders", "127.0.0.1", 0)
    assert "FATAL:  Postgres could not start: disk full" in await libpq_refusal(port)
    fields = await error_fields(port, protocol.ssl_request())
    assert (fields[b"S"], fields[b"C"], fields[b"M"]) == (
        "FATAL",
        "57P03",
        "Postgres could not start: disk full",
    )
    await activator.close()


@pytest.mark.looptime
async def test_a_wake_longer_than_the_timeout_answers_57p03(echo: Upstream) -> None:
    activator = Activator(Backend(echo, never=True), wake_timeout=30)
    port = await activator.listen("shop/orders", "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    fields = await error_fields(port)
    assert loop.time() - started == pytest.approx(30, abs=1)  # looptime: 30 s of loop time, no real wait
    assert fields[b"C"] == "57P03"
    assert "not ready within 30s" in fields[b"M"]
    await activator.close()


async def test_a_gssenc_request_first_is_declined_then_refused_properly(echo: Upstream) -> None:
    activator = Activator(Backend(echo, fail="paused by spec.state"))
    port = await activator.listen("shop/orders", "127.0.0.1", 0)
    fields = await error_fields(port, protocol.gssenc_request())
    assert (fields[b"C"], fields[b"M"]) == ("57P03", "paused by spec.state")
    await activator.close()


async def test_held_connections_are_counted(echo: Upstream) -> None:
    counts: list[int] = []

    class Counter:
        total = 0

        def held(self, key: str, delta: int) -> None:
            Counter.total += delta
            counts.append(Counter.total)

    activator = Activator(Backend(echo, delay=0.2), observer=Counter())
    port = await activator.listen("shop/orders", "127.0.0.1", 0)
    clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    for _, writer in clients:
        writer.write(b"x")
    for reader, _ in clients:
        assert await reader.readexactly(1) == b"X"
    assert max(counts) == 3
    assert counts[-1] == 0
    for _, writer in clients:
        writer.close()
    await activator.close()


# -- the local operator's wake path ---------------------------------------------------------------


class Endpoints:
    def __init__(self) -> None:
        self.up = False

    def upstream(self, key: str) -> Upstream | None:
        return None

    def running(self, key: str) -> Upstream | None:
        return Upstream("127.0.0.1", 5432) if self.up else None


class Triggers:
    def __init__(self) -> None:
        self.keys: list[str] = []

    def trigger(self, key: str) -> None:
        self.keys.append(key)


async def test_two_hundred_clients_share_one_wake_request() -> None:
    store = MemoryStore()
    store.put(ServerlessDatabase(metadata=ObjectMeta(name="orders", namespace="shop")))
    endpoints, triggers = Endpoints(), Triggers()
    backend = LocalBackend(store)
    backend.bind(endpoints, triggers)
    waiters = [asyncio.ensure_future(backend.wake("shop/orders")) for _ in range(200)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert triggers.keys == ["shop/orders"]
    assert WAKE_ANNOTATION in store.objects["shop/orders"].metadata.annotations
    endpoints.up = True
    backend.ready("shop/orders")
    assert await asyncio.gather(*waiters) == [Upstream("127.0.0.1", 5432)] * 200


async def test_a_database_paused_by_its_spec_is_refused_at_once() -> None:
    store = MemoryStore()
    spec = DatabaseSpec(state=State.PAUSED)
    store.put(ServerlessDatabase(metadata=ObjectMeta(name="orders", namespace="shop"), spec=spec))
    backend = LocalBackend(store)
    backend.bind(Endpoints(), Triggers())
    with pytest.raises(WakeError, match=r"paused by its spec\.state; `sdb resume orders`"):
        await backend.wake("shop/orders")
