"""What both runtimes must do alike, on real Postgres: the settings a start puts in force, and an idle
database that steps down to its floor pausing after its last client, not after its last resize.

Locally `sdb up` runs the servers; on Kubernetes the cluster operator runs against the API double,
with one real server standing in for the database's pod (the double's pods run nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kubeapi import KubeApiDouble
from support.cluster import activator_slice, create, eventually, operator, sdb
from support.operator import Operator, database, running_operator
from support.postgres import Server, running_server
from support.requirements import require_postgres

from controller.api import codec, types, units
from controller.policy import sizing
from controller.policy.inputs import Tuning
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes import permissions
from controller.runtime.kubernetes.informer import Informer
from controller.runtime.kubernetes.store import KubeStore

pytestmark = pytest.mark.postgres

IDLE_AFTER = 4.0
SCALE_DOWN_DELAY = 2.0
TICK = 0.25
STEPPING_DOWN: dict[str, Any] = {
    "capacity": {"min": 0.25, "max": 4},
    "autoPause": {"idleAfter": f"{IDLE_AFTER:g}s"},
    "autoPark": {"enabled": False},
    "scaling": {"scaleDownDelay": f"{SCALE_DOWN_DELAY:g}s"},
}
"""Woken, it starts at 1 CU and, idle, steps down to 0.25 (three resizes) before it may pause."""


@pytest.fixture
def local(state_dir: Path) -> Iterator[Operator]:
    require_postgres()
    with running_operator(state_dir, tick=TICK) as running:
        yield running


@pytest.fixture
def pod() -> Iterator[Server]:
    """A fresh server of its own: the settings it shows are this test's alone."""
    with running_server(any_password=True) as server:
        yield server


def show(conn: psycopg.Connection[tuple[object, ...]], name: str) -> str:
    row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


def assert_paused_after_the_client(status: types.DatabaseStatus, left: datetime, scaled_down: int) -> None:
    """Steps down happened after the client left, and none of them counted as a client.

    Told by order, not by timing: the pass after the client left records its activity, and a later
    pass makes the last step down (each step waits scaleDownDelay). Had that step's own session
    counted, the activity would come after it.
    """
    assert scaled_down >= 2
    assert status.last_activity_time is not None
    last_step = status.capacity.last_scale_time
    assert last_step is not None
    assert left < last_step
    assert status.last_activity_time < last_step, (status.last_activity_time, last_step)


# -- the settings a start puts in force ----------------------------------------------------------

FLOOR = 0.5
WORK_MEM = sizing.reloadable_settings(FLOOR)["work_mem"]  # 2 GiB / 256 = 8MB; a fresh server has 4MB


def test_locally_a_start_runs_with_the_settings_of_its_size(local: Operator) -> None:
    local.apply(database("sized", capacity={"min": FLOOR, "max": 4}, autoPause={"enabled": False}))
    local.wait_phase("sized", types.Phase.ACTIVE)
    with local.connect("sized") as conn:
        assert show(conn, "work_mem") == WORK_MEM


async def test_on_kubernetes_a_start_runs_with_the_settings_of_its_size(
    kube: KubeApiDouble, pod: Server
) -> None:
    kube.create(activator_slice())
    async with operator(kube, pod):
        create(kube, capacity={"min": FLOOR, "max": 4}, autoPause={"enabled": False})
        await eventually(lambda: sdb(kube).get("status", {}).get("phase") == "Active", what="Active")
        assert pod.setting("work_mem") == WORK_MEM


# -- an idle database stepping down pauses after its last client ---------------------------------


def test_locally_the_operators_own_sessions_never_delay_a_pause(local: Operator) -> None:
    local.apply(database("idle", **STEPPING_DOWN))
    local.wait_phase("idle", types.Phase.ACTIVE)
    local.wait_phase("idle", types.Phase.PAUSED, timeout=30)
    with local.connect("idle") as conn:  # wakes it at 1 CU
        conn.execute("select 1")
    left = units.now_utc()
    local.wait_phase("idle", types.Phase.ACTIVE)  # the status the wake's pass writes
    local.wait_phase("idle", types.Phase.PAUSED, timeout=30)
    events = [e for e in local.store.events("default/idle") if e.last_time > left]
    scaled_down = sum(e.count for e in events if e.reason == types.Reason.SCALED_DOWN.value)
    assert_paused_after_the_client(local.get("idle").status, left, scaled_down)


async def test_on_kubernetes_the_operators_own_sessions_never_delay_a_pause(
    kube: KubeApiDouble, pod: Server
) -> None:
    kube.create(activator_slice())
    fast = Tuning(tick=timedelta(seconds=TICK))
    async with operator(kube, pod, direct_readings=True, tuning=fast):
        create(kube, **STEPPING_DOWN)
        await eventually(
            lambda: sdb(kube).get("status", {}).get("phase") == "Paused", timeout=30, what="Paused"
        )
        # A client connects: the activator asks for a wake, as it does, with a WakeRequest.
        activator = kc.Kube(kube.api_client(), permissions.ACTIVATOR)
        await KubeStore(activator, Informer(activator, kc.DATABASES)).request_wake("shop/orders")
        await eventually(lambda: sdb(kube)["status"]["phase"] == "Active", timeout=30, what="woken")
        with pod.connect() as conn:  # the client the activator let through
            conn.execute("select 1")
        left = datetime.now(UTC)
        await eventually(lambda: sdb(kube)["status"]["phase"] == "Paused", timeout=30, what="Paused again")
    scaled_down = sum(
        int(e.get("count") or 1)
        for e in kube.list("events", "shop")
        if e["reason"] == types.Reason.SCALED_DOWN.value
        and units.parse_time(e["lastTimestamp"]) >= left.replace(microsecond=0)
    )
    assert_paused_after_the_client(codec.decode(sdb(kube)).status, left, scaled_down)
