"""The local runtime on real Postgres servers, driven through the real operator process and CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import psutil
import pytest
from support.operator import SDB, Operator, database, wait_for
from support.requirements import require_postgres

from controller.api import types
from controller.app import local
from controller.runtime.local import accounts
from controller.runtime.local.server import Cluster, Install

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]


def show(operator: Operator, name: str, setting: str) -> str:
    with operator.connect(name) as conn:
        row = conn.execute(f"SHOW {setting}").fetchone()
    assert row is not None
    return str(row[0])


def test_sample_comes_up_active_and_answers(operator: Operator) -> None:
    operator.apply(ROOT / "manifests/samples/minimal.yaml")
    operator.wait_phase("hello", types.Phase.ACTIVE, timeout=60)
    db = operator.get("hello")
    assert db.status.endpoint.startswith("127.0.0.1:")
    assert db.status.capacity.current == 0.25
    out = subprocess.run(
        ["psql", operator.dsn("hello"), "-Atc", "select 1"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"
    _, table, _ = operator.sdb("get")
    assert table.splitlines()[0].split() == ["NAME", "PHASE", "CAPACITY", "MIN", "MAX", "CONNECTIONS", "AGE"]
    assert table.splitlines()[1].split()[:5] == ["hello", "Active", "0.25", "0.25", "4"]


def test_resize_applies_settings_in_place_without_dropping_a_session(operator: Operator) -> None:
    operator.apply(database("sized", capacity={"min": 0.25, "max": 2}))
    operator.wait_phase("sized", types.Phase.ACTIVE)
    assert show(operator, "sized", "work_mem") == "4MB"
    with operator.connect("sized") as session:
        pid = session.execute("select pg_backend_pid()").fetchone()
        # Raising the floor is a resize: 1 CU has 16MB of work_mem (4 GiB / 256)
        operator.apply(database("sized", capacity={"min": 1, "max": 2}))
        wait_for(lambda: operator.get("sized").status.capacity.current == 1.0, what="capacity 1")
        wait_for(lambda: session.execute("SHOW work_mem").fetchone() == ("16MB",), what="work_mem 16MB")
        assert session.execute("select pg_backend_pid()").fetchone() == pid  # the same session, no restart
    assert show(operator, "sized", "effective_cache_size") == "3GB"
    scaling = operator.get("sized").status.condition(types.ConditionType.SCALING)
    assert scaling is not None
    _, described, _ = operator.sdb("describe", "sized")
    assert "ScaledUp" in described


def test_stop_and_start_keep_a_committed_row_and_shut_down_cleanly(operator: Operator) -> None:
    operator.apply(database("keeper"))
    operator.wait_phase("keeper", types.Phase.ACTIVE)
    with operator.connect("keeper") as conn:
        conn.execute("create table t (v text)")
        conn.execute("insert into t values ('committed')")
    operator.stop()
    cluster = Cluster(
        install=Install.find(),
        user=accounts.for_database(operator.state_dir, "default/keeper"),
        pgdata=operator.pgdata("keeper"),
        log=operator.pgdata("keeper").parent / "postgres.log",
    )
    assert cluster.postmaster() is None
    assert asyncio.run(cluster.clean_shutdown()), "the stop was not a clean shutdown"
    operator.start()
    operator.wait_phase("keeper", types.Phase.ACTIVE)
    wait_for(lambda: operator.get("keeper").status.capacity.current is not None, what="keeper running")
    with operator.connect("keeper") as conn:
        assert conn.execute("select v from t").fetchall() == [("committed",)]


def test_password_is_private_and_never_in_status(operator: Operator) -> None:
    operator.apply(database("secret"))
    operator.wait_phase("secret", types.Phase.ACTIVE)
    password_file = operator.pgdata("secret").parent / "password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    password = password_file.read_text().strip()
    _, as_json, _ = operator.sdb("get", "secret", "-o", "json")
    _, described, _ = operator.sdb("describe", "secret")
    assert password not in as_json
    assert password not in described
    assert password not in operator.log.read_text()


def test_delete_keeps_storage_by_default_and_removes_it_when_asked(operator: Operator) -> None:
    operator.apply(database("kept"))
    operator.apply(database("dropped", storage={"retainOnDelete": False}))
    operator.wait_phase("kept", types.Phase.ACTIVE)
    operator.wait_phase("dropped", types.Phase.ACTIVE)
    with operator.connect("kept") as conn:
        conn.execute("create table survivor as select 42 as answer")
    operator.sdb("delete", "kept")
    operator.sdb("delete", "dropped")
    assert operator.store.read("default/kept") is None
    assert operator.store.read("default/dropped") is None
    assert (operator.pgdata("kept") / "PG_VERSION").exists()
    assert not operator.pgdata("dropped").parent.exists()
    # the kept storage serves a new object of the same name, data and all
    operator.apply(database("kept"))
    operator.wait_phase("kept", types.Phase.ACTIVE)
    with operator.connect("kept") as conn:
        assert conn.execute("select answer from survivor").fetchall() == [(42,)]


def test_killed_mid_create_then_restarted_ends_with_one_healthy_database(state_dir: Path) -> None:
    require_postgres()
    operator = Operator(state_dir)
    operator.start()
    operator.apply(database("phoenix"))
    # kill the operator (and its initdb) as soon as the data directory starts to appear
    wait_for(lambda: operator.pgdata("phoenix").exists(), timeout=30, every=0.005, what="initdb to begin")
    operator.kill()
    assert operator.get("phoenix").status.phase is not types.Phase.ACTIVE
    operator.start()
    try:
        operator.wait_phase("phoenix", types.Phase.ACTIVE)
        with operator.connect("phoenix") as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        postmasters = [
            p
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"]
            and str(operator.pgdata("phoenix")) in " ".join(p.info["cmdline"])
            and p.info["cmdline"][0].endswith("postgres")
        ]
        assert len(postmasters) == 1
        assert [p.name for p in (state_dir / "databases" / "default").iterdir()] == ["phoenix"]
    finally:
        operator.stop()


def test_a_second_operator_on_a_taken_port_says_which_flag_moves_it(state_dir: Path, tmp_path: Path) -> None:
    """Two `sdb up` on two state directories: a port the user chose that is taken is a one-line
    error naming its flag; the default port, when taken, gives way to a free one, said in the log."""
    require_postgres()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chosen = subprocess.run(
            [*SDB, "up", "--state-dir", str(state_dir.parent / "chosen"), "--metrics-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert chosen.returncode == 1
        assert chosen.stderr.strip().splitlines() == [
            f"error: port {port} (--metrics-port) is already in use, perhaps by another `sdb`; "
            "choose another with --metrics-port PORT, 0 for any free port, or -1 for none"
        ]
    with contextlib.ExitStack() as stack:
        default = socket.socket()
        stack.enter_context(default)
        default.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # another process holding it does as well
            default.bind(("127.0.0.1", local.METRICS_PORT))
            default.listen()
        log = tmp_path / "default.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [*SDB, "up", "--state-dir", str(state_dir), "--log-format", "json"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            line: dict[str, str] = wait_for(
                lambda: next(
                    (json.loads(x) for x in log.read_text().splitlines() if "serving metrics" in x), {}
                ),
                what="the operator to serve /metrics",
            )
            served = int(line["address"].rsplit(":", 1)[1].split("/")[0])
            assert served != local.METRICS_PORT
            assert any(f"port {local.METRICS_PORT} is taken" in x for x in log.read_text().splitlines())
            with urllib.request.urlopen(f"http://127.0.0.1:{served}/metrics", timeout=5) as response:
                assert b"sdb_databases" in response.read()
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
