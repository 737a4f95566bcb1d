"""Pause at zero, wake on connect, park: the local runtime and the activator on real Postgres servers."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from support.operator import Operator, database, running_operator, wait_for
from support.requirements import require_postgres

from controller.activator import protocol
from controller.api import types
from controller.runtime.local.runtime import cgroup_group, free_port, read_endpoint

pytestmark = pytest.mark.postgres

READY_LINE = "database system is ready to accept connections"


@pytest.fixture
def fast(state_dir: Path) -> Iterator[Operator]:
    """An operator that reads load every 0.2 s, with /metrics on a port of its own."""
    require_postgres()
    with running_operator(state_dir, tick=0.2, wake_timeout=30, metrics_port=free_port()) as running:
        yield running


def starts(operator: Operator, name: str) -> int:
    """How many times Postgres became ready for this database, from its own log."""
    log = operator.pgdata(name).parent / "postgres.log"
    return log.read_text(errors="replace").count(READY_LINE) if log.exists() else 0


def test_twenty_pause_resume_cycles_lose_no_connection_and_no_row(fast: Operator) -> None:
    fast.apply(database("cycler", autoPause={"idleAfter": "1s"}))
    fast.wait_phase("cycler", types.Phase.ACTIVE)
    with fast.connect("cycler") as conn:
        conn.execute("create table rows (cycle int primary key)")
    failures: list[str] = []
    attempts = 0
    stop = threading.Event()

    def background_client() -> None:
        nonlocal attempts
        rng = random.Random(7)
        while not stop.wait(rng.uniform(0.3, 2.5)):
            attempts += 1
            try:
                with fast.connect("cycler") as conn:
                    conn.execute("select count(*) from rows").fetchone()
            except psycopg.Error as error:
                failures.append(str(error))

    client = threading.Thread(target=background_client, daemon=True)
    client.start()
    try:
        for cycle in range(20):
            pauses = fast.metric("sdb_pauses_total", database="cycler")
            with fast.connect("cycler") as conn:  # wakes it when paused
                assert conn.execute("select count(*) from rows").fetchone() == (cycle,)
                conn.execute("insert into rows values (%s)", [cycle])
            wait_for(
                lambda p=pauses: fast.metric("sdb_pauses_total", database="cycler") > p,  # type: ignore[misc]
                timeout=60,
                what=f"pause {cycle + 1}",
            )
    finally:
        stop.set()
        client.join()
    assert failures == []
    assert attempts > 5
    with fast.connect("cycler") as conn:
        every_row = conn.execute("select array_agg(cycle order by cycle) from rows").fetchone()
    assert every_row == (list(range(20)),)
    assert fast.metric("sdb_pauses_total", database="cycler") >= 20
    assert fast.metric("sdb_wakes_total", database="cycler") >= 20


def test_two_hundred_concurrent_connections_to_a_paused_database_start_it_once(fast: Operator) -> None:
    fast.apply(database("crowd", autoPause={"idleAfter": "1s"}))
    fast.wait_phase("crowd", types.Phase.ACTIVE)
    fast.wait_phase("crowd", types.Phase.PAUSED)
    before = starts(fast, "crowd")
    barrier = threading.Barrier(200)

    def client(index: int) -> int:
        barrier.wait()
        with fast.connect("crowd") as conn:
            row = conn.execute("select %s::int", [index]).fetchone()
        assert row is not None
        return int(str(row[0]))

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(client, range(200)))
    assert results == list(range(200))
    assert starts(fast, "crowd") == before + 1
    assert fast.metric("sdb_wakes_total", database="crowd") == 1


def test_a_client_stalled_in_its_startup_at_the_activator_keeps_the_database_awake(fast: Operator) -> None:
    """A client that reached the activator while the database rested, and is still negotiating when
    it is awake, is no session of Postgres's: it still counts as activity, so no pause strands it."""
    fast.apply(database("stalled", autoPause={"idleAfter": "1s"}))
    fast.wait_phase("stalled", types.Phase.ACTIVE)
    fast.wait_phase("stalled", types.Phase.PAUSED)
    endpoint = read_endpoint(fast.state_dir, "default/stalled")
    assert endpoint is not None
    pauses = fast.metric("sdb_pauses_total", database="stalled")
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=30) as stalled:
        stalled.sendall(protocol.ssl_request())
        assert stalled.recv(1) == protocol.ACCEPT_TLS  # the activator has it; no ClientHello follows
        with fast.connect("stalled") as conn:  # wakes it
            assert conn.execute("select 1").fetchone() == (1,)
        fast.wait_phase("stalled", types.Phase.ACTIVE)
        readings = fast.metric("sdb_load_readings_total", database="stalled")

        def fifteen_readings_or_a_pause() -> bool:
            if fast.get("stalled").status.phase is not types.Phase.ACTIVE:
                return True
            return fast.metric("sdb_load_readings_total", database="stalled") >= readings + 15

        wait_for(
            fifteen_readings_or_a_pause,
            timeout=60,
            what="fifteen readings (three times idleAfter) with only the stalled client",
        )
        assert fast.get("stalled").status.phase is types.Phase.ACTIVE
        assert fast.metric("sdb_pauses_total", database="stalled") == pauses
    fast.wait_phase("stalled", types.Phase.PAUSED, timeout=30)  # once it has gone, the database pauses


def test_a_failed_wake_refuses_with_57p03_keeps_the_data_and_a_later_wake_works(fast: Operator) -> None:
    fast.apply(database("fragile", autoPause={"idleAfter": "1s"}))
    fast.wait_phase("fragile", types.Phase.ACTIVE)
    with fast.connect("fragile") as conn:
        conn.execute("create table kept as select 'still here' as note")
    fast.wait_phase("fragile", types.Phase.PAUSED)
    # A setting Postgres cannot start with: the next start fails.
    fast.apply(
        database(
            "fragile",
            autoPause={"idleAfter": "1s"},
            postgres={"parameters": {"lock_timeout": "no_such_duration"}},
        )
    )
    with pytest.raises(psycopg.OperationalError) as refused:
        fast.connect("fragile")
    message = str(refused.value)
    assert "FATAL:  the database could not be woken" in message
    assert "no_such_duration" in message
    db = fast.get("fragile")
    assert db.status.phase is types.Phase.PAUSED
    ready = db.status.condition(types.ConditionType.READY)
    assert ready is not None
    assert ready.reason == "StartFailed"
    assert "no_such_duration" in ready.message
    assert (fast.pgdata("fragile") / "PG_VERSION").exists()
    # The cause goes away: the next client wakes it, and the data is there.
    fast.apply(database("fragile", autoPause={"idleAfter": "1s"}))
    with fast.connect("fragile") as conn:
        assert conn.execute("select note from kept").fetchone() == ("still here",)


def test_idle_in_transaction_keeps_it_awake_but_our_own_and_ignored_sessions_do_not(fast: Operator) -> None:
    fast.apply(database("busy", autoPause={"idleAfter": "1s"}))
    fast.wait_phase("busy", types.Phase.ACTIVE)
    exporter = psycopg.connect(fast.dsn("busy"), application_name="postgres_exporter", autocommit=True)
    try:
        with psycopg.connect(fast.dsn("busy"), application_name="psql") as client:
            client.execute("select 1")  # opens a transaction: the session is now idle in transaction
            time.sleep(3)  # three times idleAfter, fifteen readings
            assert fast.get("busy").status.phase is types.Phase.ACTIVE
            assert fast.get("busy").status.connections == 1  # the exporter's idle session does not count
            client.rollback()
        # the exporter, even idle in transaction, counts: ignoring it only covers idle sessions
        exporter.execute("begin")
        exporter.execute("select 1")
        time.sleep(2)
        assert fast.get("busy").status.phase is types.Phase.ACTIVE
        exporter.execute("rollback")
        # now only the operator's monitoring session and an idle exporter remain: it pauses
        fast.wait_phase("busy", types.Phase.PAUSED, timeout=20)
    finally:
        exporter.close()


def test_a_parked_database_costs_no_work_and_wakes_on_connect(fast: Operator) -> None:
    fast.apply(database("sleeper", autoPause={"idleAfter": "1s"}, autoPark={"idleAfter": "1s"}))
    fast.wait_phase("sleeper", types.Phase.ACTIVE)
    with fast.connect("sleeper") as conn:
        conn.execute("create table t as select 1 as one")
    fast.wait_phase("sleeper", types.Phase.PARKED, timeout=30)
    reconciles = fast.metric("sdb_reconciles_total", database="sleeper")
    readings = fast.metric("sdb_load_readings_total", database="sleeper")
    time.sleep(2)  # ten ticks
    assert fast.metric("sdb_reconciles_total", database="sleeper") == reconciles
    assert fast.metric("sdb_load_readings_total", database="sleeper") == readings
    assert fast.metric("sdb_parks_total", database="sleeper") == 1
    group = cgroup_group(fast.state_dir)
    cgroups = list(Path("/sys/fs/cgroup").glob(f"*/**/{group}/default.sleeper"))
    assert cgroups == []  # nothing of its compute remains
    with fast.connect("sleeper") as conn:
        assert conn.execute("select one from t").fetchone() == (1,)
    fast.wait_phase("sleeper", types.Phase.ACTIVE)


def test_manual_pause_refuses_connections_until_resumed(fast: Operator) -> None:
    fast.apply(database("manual"))
    fast.wait_phase("manual", types.Phase.ACTIVE)
    fast.sdb("pause", "manual")
    fast.wait_phase("manual", types.Phase.PAUSED)
    with pytest.raises(psycopg.OperationalError, match=r"paused by its spec\.state"):
        fast.connect("manual")
    fast.sdb("resume", "manual")
    fast.wait_phase("manual", types.Phase.ACTIVE)
    with fast.connect("manual") as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    events = [e.reason for e in fast.store.events("default/manual")]
    assert {"Pausing", "Paused", "Resuming", "Started"} <= set(events)
    fast.sdb("park", "manual")
    fast.wait_phase("manual", types.Phase.PARKED)
    _, described, _ = fast.sdb("describe", "manual")
    assert "Parked     True" in described
    wait_for(lambda: fast.get("manual").status.connections == 0)
