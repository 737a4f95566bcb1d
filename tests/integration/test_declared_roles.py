"""Roles and databases declared in the spec, on real servers run by `sdb up`: made, kept as declared
against changes by hand, applied to a parked database only when it wakes, with passwords from files
that no log line holds."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.operator import Operator, database, wait_for
from support.requirements import require_postgres

from controller.api import types
from controller.runtime.local import runtime

pytestmark = pytest.mark.postgres

READY_LINE = "database system is ready to accept connections"
PASSWORD = "correct-horse-battery-staple-7"


@pytest.fixture
def declaring(state_dir: Path) -> Iterator[Operator]:
    """An operator that applies declared roles again every second (the default is every 30 s)."""
    require_postgres()
    operator = Operator(state_dir, tick=0.2)
    operator.start("--catalog-resync", "1")
    try:
        yield operator
    finally:
        operator.stop()


def write_secret(operator: Operator, name: str, password: str, *, username: str | None = None) -> None:
    """A role's password Secret, locally: files laid out as a Secret mounted in a pod."""
    directory = operator.state_dir / runtime.SECRETS_DIRECTORY / "default" / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "password").write_text(password + "\n")
    if username is not None:
        (directory / "username").write_text(username)


def as_operator(
    operator: Operator, name: str, dbname: str = "postgres"
) -> psycopg.Connection[tuple[Any, ...]]:
    """The operator's own superuser session, straight to the server (what a hand-made change needs)."""
    port = runtime.read_direct_port(operator.state_dir, f"default/{name}")
    password = (operator.pgdata(name).parent / "password").read_text().strip()
    return psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", password=password, dbname=dbname, autocommit=True
    )


def as_role(operator: Operator, name: str, user: str, password: str, dbname: str) -> psycopg.Connection[Any]:
    """A client through the database's endpoint (the activator when it rests)."""
    endpoint = runtime.read_endpoint(operator.state_dir, f"default/{name}")
    assert endpoint is not None
    return psycopg.connect(
        host="127.0.0.1",
        port=endpoint.port,
        user=user,
        password=password,
        dbname=dbname,
        autocommit=True,
        connect_timeout=60,
    )


def applied(operator: Operator, name: str) -> bool:
    status = operator.get(name).status
    declared = operator.get(name).spec
    states = [r.state for r in status.roles] + [d.state for d in status.databases]
    return len(states) == len(declared.roles) + len(declared.databases) and all(
        s is types.Applied.APPLIED for s in states
    )


def role_row(conn: psycopg.Connection[Any], role: str) -> tuple[Any, ...] | None:
    return conn.execute(
        """select rolcanlogin, rolsuper, rolconnlimit,
                  array(select g.rolname::text from pg_auth_members m join pg_roles g on g.oid = m.roleid
                        where m.member = r.oid order by 1)
           from pg_roles r where rolname = %s""",
        [role],
    ).fetchone()


ALICE = {
    "name": "alice",
    "login": True,
    "inRoles": ["pg_read_all_data"],
    "passwordSecret": {"name": "alice-password"},
}
SHOP: dict[str, Any] = {
    "roles": [ALICE, {"name": "reporting"}],
    "databases": [{"name": "shop", "owner": "alice", "extensions": ["pgcrypto"]}],
}


def test_declared_roles_and_databases_are_made_and_hand_made_changes_reverted(declaring: Operator) -> None:
    write_secret(declaring, "alice-password", PASSWORD, username="alice")
    declaring.apply(database("shop", autoPause={"enabled": False}, **SHOP))
    declaring.wait_phase("shop", types.Phase.ACTIVE)
    wait_for(lambda: applied(declaring, "shop"), what="the declared roles to be applied")
    with as_role(declaring, "shop", "alice", PASSWORD, "shop") as alice:
        assert alice.execute("select current_user, current_database()").fetchone() == ("alice", "shop")
        assert alice.execute("select extname from pg_extension where extname = 'pgcrypto'").fetchone()
        # sdb_plaintext: a login role may connect without TLS (spec.tls.required is false); the
        # operator grants it by its own rule, and the declared memberships leave it be.
        assert role_row(alice, "alice") == (True, False, -1, ["pg_read_all_data", "sdb_plaintext"])
        assert role_row(alice, "reporting") == (False, False, -1, [])
    # By hand: alice made a superuser that cannot log in, out of her group, reporting dropped, the
    # extension dropped. The next pass makes each as declared again.
    with as_operator(declaring, "shop") as superuser:
        superuser.execute("alter role alice nologin superuser connection limit 1")
        superuser.execute("revoke pg_read_all_data from alice")
        superuser.execute("drop role reporting")
        with as_operator(declaring, "shop", "shop") as inside:
            inside.execute("drop extension pgcrypto")

        def reverted() -> bool:
            return role_row(superuser, "alice") == (
                True,
                False,
                -1,
                ["pg_read_all_data", "sdb_plaintext"],
            ) and role_row(superuser, "reporting") == (False, False, -1, [])

        wait_for(reverted, timeout=30, what="the hand-made changes to be reverted")
    with as_role(declaring, "shop", "alice", PASSWORD, "shop") as alice:
        wait_for(
            lambda: alice.execute("select 1 from pg_extension where extname = 'pgcrypto'").fetchone(),
            what="the extension to be made again",
        )


def test_removed_from_the_spec_is_left_alone_and_absent_drops(declaring: Operator) -> None:
    write_secret(declaring, "alice-password", PASSWORD)
    declaring.apply(database("shop", autoPause={"enabled": False}, **SHOP))
    wait_for(lambda: applied(declaring, "shop"), timeout=60, what="the declared roles to be applied")
    with as_role(declaring, "shop", "alice", PASSWORD, "shop") as alice:
        alice.execute("create table orders as select 1 as id")
    declaring.apply(database("shop", autoPause={"enabled": False}, roles=SHOP["roles"]))  # shop left out
    wait_for(lambda: declaring.get("shop").status.databases == (), what="a pass without shop")
    with as_operator(declaring, "shop") as superuser:
        assert superuser.execute("select 1 from pg_database where datname = 'shop'").fetchone() == (1,)
    declaring.apply(
        database(
            "shop",
            autoPause={"enabled": False},
            roles=[ALICE, {"name": "reporting", "ensure": "absent"}],
            databases=[{"name": "shop", "owner": "alice", "ensure": "absent"}],
        )
    )

    def refused() -> bool:
        databases = declaring.get("shop").status.databases
        return bool(databases) and databases[0].state is types.Applied.FAILED

    wait_for(refused, timeout=30, what="the drop of a database with tables to be refused")
    assert "dropWithData" in declaring.get("shop").status.databases[0].error
    with as_operator(declaring, "shop") as superuser:
        wait_for(lambda: role_row(superuser, "reporting") is None, what="reporting to be dropped")
        assert superuser.execute("select 1 from pg_database where datname = 'shop'").fetchone() == (1,)


def test_a_parked_database_gets_a_new_role_on_its_next_wake_before_the_first_query(
    declaring: Operator,
) -> None:
    declaring.apply(database("sleeper", autoPause={"idleAfter": "1s"}, autoPark={"idleAfter": "1s"}))
    declaring.wait_phase("sleeper", types.Phase.PARKED, timeout=60)
    log = declaring.pgdata("sleeper").parent / "postgres.log"
    starts = log.read_text(errors="replace").count(READY_LINE)
    write_secret(declaring, "bob-password", PASSWORD)
    declaring.apply(
        database(
            "sleeper",
            autoPause={"idleAfter": "1s"},
            autoPark={"idleAfter": "1s"},
            roles=[{"name": "bob", "login": True, "passwordSecret": {"name": "bob-password"}}],
        )
    )
    time.sleep(3)  # fifteen ticks: a role change is no reason to wake
    assert declaring.get("sleeper").status.phase is types.Phase.PARKED
    assert declaring.get("sleeper").status.roles == (types.ObjectStatus("bob", types.Applied.PENDING),)
    assert log.read_text(errors="replace").count(READY_LINE) == starts
    # bob's very first session wakes it, and gets in: his role was made before he was let through.
    with as_role(declaring, "sleeper", "bob", PASSWORD, "app") as bob:
        assert bob.execute("select current_user").fetchone() == ("bob",)
    assert log.read_text(errors="replace").count(READY_LINE) == starts + 1
    wait_for(
        lambda: declaring.get("sleeper").status.roles == (types.ObjectStatus("bob", types.Applied.APPLIED),),
        what="status to say bob was applied",
    )


def test_a_password_from_a_file_works_and_no_log_line_holds_it(declaring: Operator) -> None:
    declaring.apply(database("secretive", autoPause={"enabled": False}))
    declaring.wait_phase("secretive", types.Phase.ACTIVE)
    with as_operator(declaring, "secretive") as superuser:  # Postgres logs every statement from here on
        superuser.execute("alter system set log_statement = 'all'")
        superuser.execute("select pg_reload_conf()")
    write_secret(declaring, "carol-password", PASSWORD, username="carol")
    write_secret(declaring, "dave-password", PASSWORD, username="not-dave")
    declaring.apply(
        database(
            "secretive",
            autoPause={"enabled": False},
            roles=[
                {"name": "carol", "login": True, "passwordSecret": {"name": "carol-password"}},
                {"name": "dave", "login": True, "passwordSecret": {"name": "dave-password"}},
                {"name": "erin", "login": True, "passwordSecret": {"name": "missing"}},
            ],
        )
    )

    def reported() -> list[types.ObjectStatus]:
        roles = declaring.get("secretive").status.roles
        return list(roles) if len(roles) == 3 else []

    carol, dave, erin = wait_for(reported, timeout=30, what="the roles to be reported")
    assert carol.state is types.Applied.APPLIED
    _, described, _ = declaring.sdb("describe", "secretive")
    assert re.search(r"role +erin +Failed +the password Secret missing was not found", described), described
    assert (dave.state, dave.error) == (
        types.Applied.FAILED,
        "the password Secret dave-password is for user 'not-dave', not 'dave'",
    )
    assert (erin.state, erin.error) == (types.Applied.FAILED, "the password Secret missing was not found")

    def warned() -> set[str]:
        # The events of a pass are recorded after its status is written: wait for them.
        events = declaring.store.events("default/secretive")
        return {e.message for e in events if e.reason == "DeclaredNotApplied"}

    wait_for(
        lambda: "role erin not as declared: the password Secret missing was not found" in warned(),
        what="a warning event for erin",
    )
    with as_role(declaring, "secretive", "carol", PASSWORD, "app") as session:
        assert session.execute("select current_user").fetchone() == ("carol",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        as_role(declaring, "secretive", "carol", "wrong", "app")
    # A new password in the file is the role's on a later pass.
    write_secret(declaring, "carol-password", PASSWORD + "-rotated", username="carol")

    def rotated() -> bool:
        try:
            as_role(declaring, "secretive", "carol", PASSWORD + "-rotated", "app").close()
        except psycopg.OperationalError:
            return False
        return True

    wait_for(rotated, timeout=30, what="the new password to work")
    server_log = (declaring.pgdata("secretive").parent / "postgres.log").read_text(errors="replace")
    assert 'CREATE ROLE "carol"' in server_log  # the statement was logged, with a SCRAM verifier only
    assert "SCRAM-SHA-256$" in server_log
    for text in (server_log, declaring.log.read_text(errors="replace")):
        assert PASSWORD not in text
    assert PASSWORD not in str(declaring.get("secretive").status)
    assert PASSWORD not in str(declaring.store.events("default/secretive"))
