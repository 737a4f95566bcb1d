"""What both runtimes must do alike, on real Postgres: the settings a start puts in force, and an idle
database that steps down to its floor pausing after its last client, not after its last resize.

Locally `sdb up` runs the servers; on Kubernetes the cluster operator runs against the API double,
with one real server standing in for the database's pod (the double's pods run nothing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kubeapi import KubeApiDouble
from kubernetes import client
from support.cluster import activator_slice, create, eventually, operator, sdb
from support.operator import Operator, database, running_operator, wait_for
from support.postgres import Server, running_server
from support.requirements import require_postgres

from controller.api import codec, types, units
from controller.policy import sizing
from controller.policy.inputs import Tuning

pytestmark = pytest.mark.postgres

IDLE_AFTER = 4.0
TICK = 0.25
AT_ONE_CU: dict[str, Any] = {
    "capacity": {"min": 1, "max": 4},
    "autoPause": {"idleAfter": f"{IDLE_AFTER:g}s"},
    "autoPark": {"enabled": False},
}
"""Running at 1 CU; it pauses IDLE_AFTER after its last client."""
RESOLUTION = IDLE_AFTER / 10
"""How far apart two activities must be for status to keep the later one (a tenth of idleAfter, at
most): the resize comes at least this long after the client, so a resize counted as a client shows."""
SHRUNK: dict[str, Any] = {"capacity": {"min": 0.25, "max": 0.25}}
"""A maximum below its size: the operator resizes it down at once, with a session of its own."""


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


# -- a resize while idle does not count as a client ----------------------------------------------


def test_locally_the_operators_own_sessions_never_delay_a_pause(local: Operator) -> None:
    local.apply(database("idle", **AT_ONE_CU))
    local.wait_phase("idle", types.Phase.ACTIVE)
    with local.connect("idle") as conn:  # a client, seen by a reading
        conn.execute("select 1")
        wait_for(lambda: local.get("idle").status.connections == 1, what="the client's session in status")
    left = units.now_utc()
    wait_for(lambda: local.get("idle").status.connections == 0, what="a reading after the client left")
    time.sleep(RESOLUTION)
    local.apply(database("idle", **{**AT_ONE_CU, **SHRUNK}))
    wait_for(lambda: local.get("idle").status.capacity.current == 0.25, what="the resize down")
    local.wait_phase("idle", types.Phase.PAUSED, timeout=30)
    assert_paused_after_the_client(local.get("idle").status, left)


async def test_on_kubernetes_the_operators_own_sessions_never_delay_a_pause(
    kube: KubeApiDouble, pod: Server
) -> None:
    kube.create(activator_slice())
    fast = Tuning(tick=timedelta(seconds=TICK))
    async with operator(kube, pod, direct_readings=True, tuning=fast):
        create(kube, **AT_ONE_CU)
        await eventually(
            lambda: sdb(kube).get("status", {}).get("phase") == "Active", timeout=30, what="Active"
        )
        with pod.connect() as conn:  # a client, seen by a reading
            conn.execute("select 1")
            await eventually(lambda: sdb(kube)["status"].get("connections") == 1, what="the client in status")
        left = datetime.now(UTC)
        await eventually(
            lambda: sdb(kube)["status"].get("connections", 0) == 0, what="a reading after it left"
        )
        await asyncio.sleep(RESOLUTION)
        patch_spec(kube, SHRUNK)
        await eventually(
            lambda: sdb(kube)["status"]["capacity"].get("current") == 0.25, timeout=30, what="the resize down"
        )
        await eventually(lambda: sdb(kube)["status"]["phase"] == "Paused", timeout=30, what="Paused")
    assert_paused_after_the_client(codec.decode(sdb(kube)).status, left)


def patch_spec(kube: KubeApiDouble, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube.api_client()).patch_namespaced_custom_object(
        types.GROUP, types.VERSION, "shop", types.PLURAL, "orders", {"spec": spec}
    )


def assert_paused_after_the_client(status: types.DatabaseStatus, left: datetime) -> None:
    """The resize came after the client left, and did not count as a client.

    Told by order, not by timing: the resize is asked for once a reading has recorded that the
    client left. Had the resize's own session counted, the activity would come after
    the resize.
    """
    assert status.phase is types.Phase.PAUSED
    assert status.last_activity_time is not None
    resized = status.capacity.last_scale_time
    assert resized is not None
    assert left < resized
    assert status.last_activity_time < resized, (status.last_activity_time, resized)
