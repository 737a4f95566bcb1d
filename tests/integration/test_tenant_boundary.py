"""The tenant boundary on this host: what a database's user and a spec author cannot do, on real servers.

Each test is a finding of a security review, tried as an attacker would: a client that is handed a
superuser, a tenant writing into its data directory (what `COPY ... TO` lets a superuser do, done
here directly), a spec that names another database's files.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess

import psycopg
import pytest
from support.operator import Operator, database, wait_for

from controller.api import types
from controller.runtime.local import accounts, runtime

pytestmark = pytest.mark.postgres


def psql(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["psql", dsn, "-Atc", sql], capture_output=True, text=True, check=False)


def test_clients_get_the_application_role_and_no_password_on_the_command_line(operator: Operator) -> None:
    operator.apply(database("tenant"))
    operator.wait_phase("tenant", types.Phase.ACTIVE)
    _, dsn, _ = operator.sdb("dsn", "tenant")
    dsn = dsn.strip()
    endpoint = runtime.read_endpoint(operator.state_dir, "default/tenant")
    assert endpoint is not None
    assert endpoint.password not in dsn  # the URI can be on a command line: /proc/*/cmdline is public
    assert "passfile=" in dsn
    passfile = operator.state_dir / runtime.PASSFILE
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    who = psql(
        dsn, "select current_user, current_database(), rolsuper from pg_roles where rolname = current_user"
    )
    assert who.stdout.strip() == "app|app|f", who.stderr
    # The finding: COPY ... TO PROGRAM ran shell commands as the server's account.
    copy = psql(dsn, "copy (select 1) to program 'id'")
    assert copy.returncode != 0
    assert "permission denied" in copy.stderr or "must be superuser" in copy.stderr, copy.stderr
    assert psql(dsn, "create table mine as select 1 as one").returncode == 0  # it owns its database
    code, _, err = operator.sdb("dsn", "tenant", "--superuser", check=False)
    assert code == 1
    assert "superuser access is off" in err
    _, inline, _ = operator.sdb("dsn", "tenant", "--show-password")
    assert endpoint.password in inline


def test_a_superuser_comes_only_from_its_own_password_and_goes_when_the_spec_says(operator: Operator) -> None:
    operator.apply(database("owner", superuserAccess=True))
    operator.wait_phase("owner", types.Phase.ACTIVE)
    _, dsn, _ = operator.sdb("dsn", "owner", "--superuser")
    assert (
        psql(dsn.strip(), "select rolsuper from pg_roles where rolname = current_user").stdout.strip() == "t"
    )
    operator.apply(database("owner", superuserAccess=False))

    def refused() -> bool:
        return psql(dsn.strip(), "select 1").returncode != 0

    wait_for(refused, timeout=30, what="the superuser to lose its login")
    assert not (operator.pgdata("owner").parent / "superuser-password").exists()


def test_the_operator_writes_nothing_through_a_link_in_the_data_directory(operator: Operator) -> None:
    operator.apply(database("linked"))
    operator.wait_phase("linked", types.Phase.ACTIVE)
    victim = operator.state_dir.parent / "precious"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    pgdata = operator.pgdata("linked")
    for name in ("sdb.tmp", "sdb.conf", "postgresql.conf.tmp", ".postgresql.conf.tmp"):
        (pgdata / name).unlink(missing_ok=True)
        (pgdata / name).symlink_to(victim)
    operator.sdb("pause", "linked")
    operator.wait_phase("linked", types.Phase.PAUSED)
    operator.sdb("resume", "linked")
    operator.wait_phase("linked", types.Phase.ACTIVE)
    assert victim.read_text() == "precious\n"
    assert victim.stat().st_uid == os.geteuid()


def test_a_forged_pid_file_gets_no_signal_sent_to_its_pid(operator: Operator) -> None:
    operator.apply(database("forged"))
    operator.wait_phase("forged", types.Phase.ACTIVE)
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        pid_file = operator.pgdata("forged") / "postmaster.pid"
        lines = pid_file.read_text().split("\n")
        real = int(lines[0])
        pid_file.write_text("\n".join([str(bystander.pid), *lines[1:]]))
        operator.sdb("pause", "forged")
        operator.wait_phase("forged", types.Phase.PAUSED)
        assert bystander.poll() is None  # never signalled
        wait_for(lambda: not os.path.exists(f"/proc/{real}"), what="the real postmaster to stop")
    finally:
        bystander.kill()
        bystander.wait()


def test_a_data_directory_is_never_made_again_whatever_record_is_missing(operator: Operator) -> None:
    operator.apply(database("victim", autoPause={"enabled": False}))
    operator.wait_phase("victim", types.Phase.ACTIVE)
    with operator.connect("victim") as conn:
        conn.execute("create table kept as select 'still here' as note")
    operator.stop()
    # Every record of the operator's goes, and the marker an older release looked for in the data
    # directory (whose absence once meant "create": initdb then removed the data).
    directory = operator.pgdata("victim").parent
    for record in ("server.json", "postgresql.conf", "runtime.json"):
        (directory / record).unlink()
    (operator.pgdata("victim") / "postgresql.conf").unlink()
    operator.start()

    def serving() -> bool:
        ready = operator.get("victim").status.condition(types.ConditionType.READY)
        return ready is not None and ready.status is types.ConditionStatus.TRUE

    wait_for(serving, timeout=60, what="victim to serve again")
    with operator.connect("victim") as conn:
        assert conn.execute("select note from kept").fetchone() == ("still here",)


def test_a_directory_the_operator_did_not_make_is_left_alone(operator: Operator) -> None:
    stranger = operator.pgdata("stranger")
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("someone's\n")
    operator.apply(database("stranger"))
    wait_for(lambda: operator.get("stranger").status.phase is types.Phase.FAILED, what="a refusal")
    ready = operator.get("stranger").status.condition(types.ConditionType.READY)
    assert ready is not None
    assert "was not made by this operator" in ready.message
    assert (stranger / "notes.txt").read_text() == "someone's\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give each database an account of its own")
def test_one_database_cannot_read_another_databases_files(operator: Operator) -> None:
    operator.apply(database("reader", superuserAccess=True))
    operator.apply(database("secret"))
    operator.wait_phase("reader", types.Phase.ACTIVE)
    operator.wait_phase("secret", types.Phase.ACTIVE)
    owners = {operator.pgdata(n).stat().st_uid for n in ("reader", "secret")}
    assert len(owners) == 2
    assert all(pwd.getpwuid(uid).pw_name.startswith(accounts.NAME_PREFIX) for uid in owners)
    endpoint = runtime.read_endpoint(operator.state_dir, "default/reader", superuser=True)
    assert endpoint is not None
    dsn = f"postgresql://{endpoint.user}:{endpoint.password}@127.0.0.1:{endpoint.port}/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for target in (
            operator.pgdata("secret") / "PG_VERSION",
            operator.pgdata("secret").parent / "password",
            operator.pgdata("secret").parent / "postgres.log",
        ):
            with pytest.raises(psycopg.Error, match="ermission denied"):
                conn.execute("select pg_read_file(%s)", [str(target)])


def test_logs_and_passwords_are_private(operator: Operator) -> None:
    operator.apply(database("quiet"))
    operator.wait_phase("quiet", types.Phase.ACTIVE)
    directory = operator.pgdata("quiet").parent
    for name in ("postgres.log", "password", "app-password", "runtime.json", "server.json"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(operator.pgdata("quiet").stat().st_mode) == 0o700
