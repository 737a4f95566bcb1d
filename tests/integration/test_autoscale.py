"""Autoscaling from real load: pgbench against a real Postgres under the local runtime."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.operator import Operator, database, running_operator, wait_for
from support.requirements import require_commands, require_postgres

from controller.api import types
from controller.runtime.local.runtime import free_port, read_endpoint

pytestmark = pytest.mark.postgres

TICK = 1.0


@pytest.fixture
def scaling(state_dir: Path) -> Iterator[Operator]:
    require_postgres()
    require_commands("pgbench", package="postgresql-contrib")
    with running_operator(state_dir, tick=TICK, metrics_port=free_port()) as running:
        yield running


def pgbench(operator: Operator, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    endpoint = read_endpoint(operator.state_dir, f"default/{name}")
    assert endpoint is not None
    return subprocess.run(
        [
            "pgbench",
            "-h",
            "127.0.0.1",
            "-p",
            str(endpoint.port),
            "-U",
            endpoint.user,
            *args,
            endpoint.database,
        ],
        env={**os.environ, "PGPASSWORD": endpoint.password},
        capture_output=True,
        text=True,
        check=False,
    )


def test_load_grows_it_within_two_readings_and_the_floor_returns_after_the_delay(scaling: Operator) -> None:
    scaling.apply(
        database(
            "busy",
            capacity={"min": 0.25, "max": 2},
            autoPause={"enabled": False},
            scaling={"scaleDownDelay": "5s"},
        )
    )
    scaling.wait_phase("busy", types.Phase.ACTIVE)
    assert pgbench(scaling, "busy", "-i", "-q", "-s", "5").returncode == 0
    wait_for(
        lambda: scaling.get("busy").status.capacity.current == 0.25, timeout=30, what="the floor after init"
    )
    history: list[tuple[float, float]] = []
    """(when the status was read, the capacity it had then)."""
    began: list[float] = []
    """When each look began: what it then read happened after it."""
    readings: list[tuple[float, float]] = []
    """(readings of busy's load taken so far, the CPU the last one saw), as the operator serves them."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            began.append(time.monotonic())
            current = scaling.get("busy").status.capacity.current or 0.0
            history.append((time.monotonic(), current))
            readings.append(
                (
                    scaling.metric("sdb_load_readings_total", database="busy"),
                    scaling.metric("sdb_cpu_used_cores", database="busy"),
                )
            )
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    load = pgbench(scaling, "busy", "-c", "8", "-j", "2", "-T", "12", "-n")
    ended = time.monotonic()

    def floor_reached() -> float | None:
        """When the watcher first saw the floor after the load, once the floor holds."""
        if scaling.get("busy").status.capacity.current != 0.25:
            return None
        return next((t for t, c in history if t > ended and c == 0.25), None)

    floor_again = wait_for(floor_reached, timeout=60, what="the floor after the load")
    assert floor_again is not None
    stop.set()
    watcher.join()
    assert load.returncode == 0, load.stderr
    assert re.search(r"number of failed transactions: 0 ", load.stdout), load.stdout
    after = [i for i, (t, _) in enumerate(history) if t >= started]
    grown = next((i for i in after if history[i][1] > 0.25), None)
    assert grown is not None, "capacity never grew under load"
    seen = next((i for i in after if readings[i][1] > 0.6 * 0.25), None)
    assert seen is not None, "no reading saw the load"
    assert max(c for _, c in history) <= 2.0
    # Down only once scaleDownDelay (5 s) has passed since the last reading taken under load (not
    # since pgbench exited: that reading may be a tick older). A look's counts were fetched before
    # the next look began, so the count two looks before the first after the end was all taken under
    # load; its reading came after the last look that had not yet counted it, and was decided after.
    first_after = next(i for i, t in enumerate(began) if t > ended)
    loaded = readings[first_after - 2][0]
    unseen = max(i for i in range(first_after) if readings[i][0] < loaded)
    floor_seen = next(t for t, c in history[unseen:] if c == 0.25)
    assert floor_seen - began[unseen] >= 5.0
    events = [e.reason for e in scaling.store.events("default/busy")]
    assert "ScaledUp" in events
    assert "ScaledDown" in events
    assert scaling.metric("sdb_resizes_total", database="busy", direction="up") >= 1
    assert scaling.metric("sdb_resizes_total", database="busy", direction="down") >= 1
    # Counted in readings, not seconds (a busy machine stretches a tick), from the first reading that
    # saw the floor's CPU in use: growth within two.
    readings_to_grow = readings[grown][0] - readings[seen][0]
    assert readings_to_grow <= 2, f"grew {readings_to_grow:g} readings after the load showed, not within two"
