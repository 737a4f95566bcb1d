"""The pooled endpoint: a real PgBouncer per database in front of its endpoint, with real clients.

Debian 12's PgBouncer is 1.18: in transaction mode a client's prepared statements do not follow it
from one server connection to the next, so psycopg clients set `prepare_threshold=None` (asyncpg
`statement_cache_size=0`); docs/pooling.md says so, and the tests show both sides of it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.operator import Operator, database, running_operator, wait_for
from support.requirements import require_pgbouncer, require_postgres

from controller.api import codec, types
from controller.policy import sizing
from controller.postgres import pooler
from controller.runtime.local import runtime

pytestmark = pytest.mark.postgres

READY_LINE = "database system is ready to accept connections"


@pytest.fixture
def fast(state_dir: Path) -> Iterator[Operator]:
    require_postgres()
    require_pgbouncer()
    with running_operator(state_dir, tick=0.2, wake_timeout=30, metrics_port=runtime.free_port()) as running:
        yield running


def pooled(name: str, **spec: Any) -> dict[str, Any]:
    return database(name, pooling={"enabled": True, **spec.pop("pooling", {})}, **spec)


def pooled_dsn(operator: Operator, name: str, *options: str) -> str:
    _, dsn, _ = operator.sdb("dsn", name, "--pooled", *options)
    return dsn.strip()


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
    # PgBouncer 1.18 keeps no prepared statement across server connections (docs/pooling.md).
    options = {"autocommit": True, "connect_timeout": 60, "prepare_threshold": None, **kwargs}
    return psycopg.connect(dsn, **options)


def starts(operator: Operator, name: str) -> int:
    log = operator.pgdata(name).parent / "postgres.log"
    return log.read_text(errors="replace").count(READY_LINE) if log.exists() else 0


def console(operator: Operator, name: str) -> pooler.Console:
    directory = operator.pgdata(name).parent
    port = runtime.read_endpoint(operator.state_dir, f"default/{name}", pooled=True)
    assert port is not None
    return pooler.Console("127.0.0.1", port.port, (directory / "pooler-password").read_text().strip())


def pool_setting(operator: Operator, name: str) -> int:
    with psycopg.connect(
        host="127.0.0.1",
        port=console(operator, name).port,
        user=pooler.ADMIN_USER,
        password=console(operator, name).password,
        dbname=pooler.ADMIN_DATABASE,
        autocommit=True,
    ) as conn:
        rows = conn.execute("SHOW CONFIG").fetchall()
    return int(next(str(row[1]) for row in rows if row[0] == "default_pool_size"))


def test_three_hundred_pooled_clients_on_a_paused_database_are_served_with_one_wake(fast: Operator) -> None:
    fast.apply(pooled("crowd", autoPause={"idleAfter": "2s"}))
    fast.wait_phase("crowd", types.Phase.ACTIVE)
    dsn = pooled_dsn(fast, "crowd")
    with connect(dsn) as conn:
        # Through the pooler, to the database's own endpoint; the pooler's idle server connection
        # must not keep it awake.
        assert conn.execute("select current_user, current_database()").fetchone() == ("app", "app")
    fast.wait_phase("crowd", types.Phase.PAUSED, timeout=60)
    before = starts(fast, "crowd")
    wakes = fast.metric("sdb_wakes_total", database="crowd")
    barrier = threading.Barrier(300)
    backends: set[int] = set()

    def client(index: int) -> int:
        barrier.wait()
        with connect(dsn) as conn:
            row = conn.execute("select %s::int, pg_backend_pid()", [index]).fetchone()
        assert row is not None
        backends.add(int(str(row[1])))
        return int(str(row[0]))

    with ThreadPoolExecutor(max_workers=300) as threads:
        results = list(threads.map(client, range(300)))
    assert results == list(range(300))
    assert starts(fast, "crowd") == before + 1
    assert fast.metric("sdb_wakes_total", database="crowd") == wakes + 1
    # 300 clients on no more server sessions than the pool allows at the database's size.
    assert len(backends) <= sizing.pool_size(codec.decode_spec(pooled("crowd")["spec"]), 0.25)
    # PgBouncer's own count of them reaches /metrics, and its queue drains. Both come from one
    # reading of its console every few seconds, which may have been taken mid-crowd: the counter
    # past 300 does not mean the last reading came after the crowd, so wait for one that did.
    wait_for(
        lambda: (
            fast.metric("sdb_pooler_transactions_total", database="crowd") >= 300
            and fast.metric("sdb_pooler_clients", database="crowd", state="waiting") == 0
        ),
        timeout=30,
        what="the pooler's transactions on /metrics, and none waiting",
    )


def test_plaintext_is_refused_by_the_pooler_when_the_spec_requires_tls(fast: Operator) -> None:
    fast.apply(pooled("strict", tls={"required": True}))
    fast.wait_phase("strict", types.Phase.ACTIVE)
    dsn = pooled_dsn(fast, "strict", "--verify")
    assert "sslmode=verify-full" in dsn
    with connect(dsn) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.info.pgconn.ssl_in_use
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        connect(dsn.replace("sslmode=verify-full", "sslmode=disable")).close()


def test_prepared_statements_in_transaction_mode_need_the_client_setting(fast: Operator) -> None:
    fast.apply(pooled("prepared"))
    fast.wait_phase("prepared", types.Phase.ACTIVE)
    dsn = pooled_dsn(fast, "prepared")
    query = "select %s::int"

    def prepared_then_moved(**kwargs: Any) -> None:
        with connect(dsn, **kwargs) as client, connect(dsn) as other:
            for value in range(6):  # psycopg prepares from the fifth execution by default
                client.execute(query, [value])
            # The other client takes the server connection that holds the prepared statement
            # (PgBouncer hands out the most recently used one), so the next query runs on another.
            other.execute("begin")
            other.execute("select 1")
            try:
                assert client.execute(query, [7]).fetchone() == (7,)
            finally:
                other.execute("rollback")

    with pytest.raises(psycopg.errors.InvalidSqlStatementName, match="does not exist"):
        prepared_then_moved(prepare_threshold=5)
    prepared_then_moved()  # prepare_threshold=None: every client of a 1.18 pooler works


def test_the_pool_follows_a_resize_without_dropping_a_client(fast: Operator) -> None:
    fast.apply(pooled("growing", capacity={"min": 0.25, "max": 0.25}))
    fast.wait_phase("growing", types.Phase.ACTIVE)
    small = sizing.pool_size(codec.decode_spec(pooled("growing")["spec"]), 0.25)
    assert pool_setting(fast, "growing") == small
    with connect(pooled_dsn(fast, "growing")) as held:
        held.execute("select 1")
        fast.apply(pooled("growing", capacity={"min": 1, "max": 1}))
        large = sizing.pool_size(codec.decode_spec(pooled("growing")["spec"]), 1.0)
        assert large > small
        wait_for(lambda: pool_setting(fast, "growing") == large, timeout=60, what="the pool to grow")
        assert held.execute("select 2").fetchone() == (2,)


def test_turning_pooling_off_stops_the_pooler_and_the_endpoint_stays(fast: Operator) -> None:
    fast.apply(pooled("switch"))
    fast.wait_phase("switch", types.Phase.ACTIVE)
    dsn = pooled_dsn(fast, "switch")
    with connect(dsn) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    wait_for(lambda: fast.get("switch").status.pooled_endpoint, timeout=10, what="status.pooledEndpoint")
    assert f":{psycopg.conninfo.conninfo_to_dict(dsn)['port']}" in fast.get("switch").status.pooled_endpoint
    fast.apply(database("switch"))

    def refused() -> bool:
        try:
            connect(dsn, connect_timeout=2).close()
        except psycopg.OperationalError:
            return True
        return False

    files = fast.pgdata("switch").parent / "pooler"
    wait_for(lambda: refused() and not files.exists(), timeout=30, what="the pooler to stop and go")
    wait_for(
        lambda: not fast.get("switch").status.pooled_endpoint, timeout=10, what="no status.pooledEndpoint"
    )
    code, _, err = fast.sdb("dsn", "switch", "--pooled", check=False)
    assert code != 0
    assert "spec.pooling.enabled" in err
    with fast.connect("switch") as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_a_pooler_that_dies_is_started_again_and_a_restarted_operator_keeps_it(fast: Operator) -> None:
    fast.apply(pooled("sturdy", superuserAccess=True))
    fast.wait_phase("sturdy", types.Phase.ACTIVE)
    dsn = pooled_dsn(fast, "sturdy")
    with connect(pooled_dsn(fast, "sturdy", "--superuser")) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == ("superuser", "postgres")
    record = fast.pgdata("sturdy").parent / "pooler" / "pooler.json"
    first = json.loads(record.read_text())["pid"]
    os.kill(first, signal.SIGKILL)

    def serves() -> bool:
        try:
            with connect(dsn, connect_timeout=2) as conn:
                return conn.execute("select 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    wait_for(serves, timeout=30, what="the pooler to be started again")
    second = json.loads(record.read_text())["pid"]
    assert second != first
    fast.kill()  # the pooler has a session of its own: it outlives the operator's SIGKILL
    assert serves()
    fast.start()

    def read_by_the_restarted_operator() -> bool:
        # It reads the pooler's console once it has taken the pooler back (and serves /metrics).
        try:
            return fast.metric("sdb_pooler_transactions_total", database="sturdy") > 0
        except urllib.error.URLError:
            return False

    wait_for(read_by_the_restarted_operator, timeout=30, what="the restarted operator to read the pooler")
    assert serves()
    assert json.loads(record.read_text())["pid"] == second  # adopted, not started twice
