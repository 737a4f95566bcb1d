"""The Postgres-statistics source against a real server: what its CPU figures describe, and when."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from support.postgres import Server

from controller.activator import protocol
from controller.activator.proxy import Activator, Upstream, WakeError
from controller.api import types
from controller.metrics.postgres import PostgresSource
from controller.policy import access, plan
from controller.policy.inputs import Compute, ComputeState, Observation, Route
from controller.policy.lifecycle import Action
from controller.policy.plan import Plan
from controller.postgres.sessions import Address, OperatorSessions
from controller.postgres.usage import Usage
from controller.runtime.local.runtime import HOST

pytestmark = pytest.mark.postgres

START = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def test_a_cpu_rate_says_it_describes_the_middle_of_its_interval(pods: Server) -> None:
    """Readings 2 s and then 6 s apart: each rate is of its own interval, and trails by half of it."""
    clock = [START]
    used: Iterator[float] = iter([10.0, 11.0, 14.0])
    db = types.ServerlessDatabase(metadata=types.ObjectMeta(name="orders", namespace="shop"))
    source = PostgresSource(
        lambda _: Address(HOST, pods.port, "any"),
        sessions=OperatorSessions(),
        usage=lambda _: Usage(cpu_seconds=next(used), working_set_bytes=0),
        clock=lambda: clock[0],
    )

    async def readings() -> list[Observation]:
        try:
            observed = []
            for seconds in (0, 2, 8):
                clock[0] = START + timedelta(seconds=seconds)
                observed.append((await source.observe([db]))[db.key])
            return observed
        finally:
            await source.close()

    first, second, third = asyncio.run(readings())
    assert (first.cpu_cores, first.lag) == (None, None)  # nothing to pair the first counter with
    assert second.cpu_cores == pytest.approx(0.5)  # 1 CPU-second over 2 s
    assert second.lag == timedelta(seconds=1)
    assert third.cpu_cores == pytest.approx(0.5)  # 3 over 6 s
    assert third.lag == timedelta(seconds=3)


def test_a_client_stalled_at_the_activator_keeps_a_pause_from_going_on(pods: Server) -> None:
    """A client in the middle of its startup at the activator has no session in Postgres; the
    reading says it was active, so the pause's recheck cancels; once it is gone the pause goes on."""
    spec = types.DatabaseSpec()
    db = types.ServerlessDatabase(
        metadata=types.ObjectMeta(name="orders", namespace="shop"),
        spec=spec,
        status=types.DatabaseStatus(  # idle for an hour, routed to the activator, its settings applied
            phase=types.Phase.PAUSING,
            phase_since=START,
            last_activity_time=START - timedelta(hours=1),
            capacity=types.CapacityStatus(current=1.0, desired=1.0),
            compute=types.ComputeStatus(settings=1.0, access=access.digest(spec)),
        ),
    )
    holding = ComputeState(storage=True, compute=Compute.RUNNING, route=Route.ACTIVATOR, capacity=1.0)
    clock = [START - timedelta(hours=1)]

    async def recheck(source: PostgresSource) -> Plan:
        clock[0] += timedelta(seconds=1)
        reading = (await source.observe([db]))[db.key]
        return plan.decide(db=db, compute=holding, observation=reading, now=clock[0])

    async def scenario() -> tuple[Plan, Plan]:
        activator = Activator(_Asleep())
        source = PostgresSource(
            lambda _: Address(HOST, pods.port, "any"),
            sessions=OperatorSessions(),
            pending=activator.in_hand,
            clock=lambda: clock[0],
        )
        try:
            await source.observe([db])  # watched, and idle, for the hour before the pause began
            clock[0] = START
            port = await activator.listen(db.key, HOST, 0)
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(protocol.ssl_request())
            assert await reader.readexactly(1) == protocol.DECLINE_ENCRYPTION  # in hand; then nothing
            held = await recheck(source)
            writer.write_eof()
            assert await reader.read() == b""  # the activator let it go (and counted it out) first
            gone = await recheck(source)
            writer.close()
            return held, gone
        finally:
            await source.close()
            await activator.close()

    held, gone = asyncio.run(scenario())
    assert (held.action, held.phase, held.reason) == (
        Action.ROUTE_DIRECT,
        types.Phase.ACTIVE,
        types.Reason.PAUSE_CANCELLED,
    )
    assert (gone.action, gone.phase) == (Action.STOP, types.Phase.PAUSING)


class _Asleep:
    """A database that is not awake, and that no test here asks to wake."""

    async def upstream(self, key: str) -> Upstream | None:
        return None

    async def wake(self, key: str) -> Upstream:
        raise WakeError("not woken in this test")
