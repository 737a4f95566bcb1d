"""The Postgres-statistics source against a real server: what its CPU figures describe, and when."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from support.postgres import Server

from controller.api import types
from controller.metrics.postgres import PostgresSource
from controller.policy.inputs import Observation
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
