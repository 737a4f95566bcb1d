"""The planner of declared roles and databases: desired state and observed catalog in, SQL out."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controller.api import types
from controller.postgres import declared, roles
from controller.postgres.declared import Desired, DesiredRole, Observed, ObservedDatabase, ObservedRole

SALT = b"\x01" * 16
Ensure = types.Ensure


def role(name: str, password: str | None = None, **spec: object) -> DesiredRole:
    return DesiredRole(types.RoleSpec(name=name, **spec), password)  # type: ignore[arg-type]


def database(name: str, owner: str, **spec: object) -> types.DeclaredDatabase:
    return types.DeclaredDatabase(name=name, owner=owner, **spec)  # type: ignore[arg-type]


def verifier_of(name: str, password: str) -> str:
    """What a plan sends for `name`'s password (the salt is derived from the plan's)."""
    return roles.scram_verifier(password, salt=declared._salt(SALT, name))


def sql(desired: Desired, observed: Observed) -> list[str]:
    return declared.as_text(declared.plan(desired, observed, salt=SALT))


ALICE = ObservedRole(login=True, password=verifier_of("alice", "s3cret"))
UNTIL = datetime(2027, 1, 1, tzinfo=UTC)

CASES = [
    pytest.param(
        Desired(roles=(role("alice", "s3cret", login=True),)),
        Observed(),
        [
            'CREATE ROLE "alice" WITH LOGIN NOCREATEDB INHERIT NOSUPERUSER NOREPLICATION NOCREATEROLE '
            f"NOBYPASSRLS CONNECTION LIMIT -1 PASSWORD '{verifier_of('alice', 's3cret')}'"
        ],
        id="create-with-password",
    ),
    pytest.param(
        Desired(roles=(role("reader", inherit=False, connection_limit=5, valid_until=UNTIL),)),
        Observed(),
        [
            'CREATE ROLE "reader" WITH NOLOGIN NOCREATEDB NOINHERIT NOSUPERUSER NOREPLICATION '
            "NOCREATEROLE NOBYPASSRLS CONNECTION LIMIT 5 VALID UNTIL '2027-01-01T00:00:00+00:00' "
            "PASSWORD NULL"
        ],
        id="create-without-password",
    ),
    pytest.param(
        Desired(roles=(role("alice", "s3cret", login=True),)), Observed({"alice": ALICE}), [], id="in-sync"
    ),
    pytest.param(
        Desired(roles=(role("alice", "s3cret", login=True, createdb=True, connection_limit=10),)),
        Observed({"alice": ALICE}),
        ['ALTER ROLE "alice" WITH CREATEDB CONNECTION LIMIT 10'],
        id="alter",
    ),
    pytest.param(
        Desired(roles=(role("alice", "n3w", login=True),)),
        Observed({"alice": ALICE}),
        [f"ALTER ROLE \"alice\" WITH PASSWORD '{verifier_of('alice', 'n3w')}'"],
        id="new-password",
    ),
    pytest.param(
        Desired(roles=(role("alice", "SCRAM-SHA-256$4096:c2FsdA==$a:b", login=True),)),
        Observed({"alice": ALICE}),
        ["ALTER ROLE \"alice\" WITH PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b'"],
        id="a-verifier-from-the-secret-goes-as-it-is",
    ),
    pytest.param(
        Desired(roles=(role("alice", "s3cret", login=True, in_roles=("pg_read_all_data", "app")),)),
        Observed({"alice": ALICE}),
        ['GRANT "pg_read_all_data" TO "alice"', 'GRANT "app" TO "alice"'],
        id="grant",
    ),
    pytest.param(
        Desired(roles=(role("alice", "s3cret", login=True, in_roles=("app",)),)),
        Observed(
            {
                "alice": ObservedRole(
                    login=True,
                    password=ALICE.password,
                    member_of=frozenset({"app", "pg_monitor", "sdb_plaintext"}),
                )
            }
        ),
        ['REVOKE "pg_monitor" FROM "alice"'],  # sdb_plaintext is the operator's to grant (tls.required)
        id="revoke",
    ),
    pytest.param(
        Desired(roles=(role("alice", "s3cret", login=True),)),
        Observed(
            {
                "alice": ObservedRole(
                    login=False,
                    createdb=True,
                    connection_limit=3,
                    valid_until=UNTIL,
                    password="md5abc",
                    elevated=True,
                )
            }
        ),
        [
            'ALTER ROLE "alice" WITH LOGIN NOCREATEDB NOSUPERUSER NOREPLICATION NOCREATEROLE NOBYPASSRLS '
            f"CONNECTION LIMIT -1 VALID UNTIL 'infinity' PASSWORD '{verifier_of('alice', 's3cret')}'"
        ],
        id="drift-reverted",
    ),
    pytest.param(
        Desired(roles=(role("bot"),)),
        Observed({"bot": ObservedRole(password=verifier_of("bot", "set-by-hand"))}),
        ['ALTER ROLE "bot" WITH PASSWORD NULL'],
        id="a-role-without-a-secret-has-no-password",
    ),
    pytest.param(
        Desired(roles=(DesiredRole(types.RoleSpec("alice", login=True), None, problem="no Secret"),)),
        Observed({"alice": ALICE}),
        [],
        id="an-unreadable-secret-leaves-the-password",
    ),
    pytest.param(
        Desired(roles=(role("alice", ensure=Ensure.ABSENT),)),
        Observed({"alice": ALICE}),
        ['DROP ROLE "alice"'],
        id="drop-role",
    ),
    pytest.param(
        Desired(roles=(role("alice", ensure=Ensure.ABSENT),)), Observed(), [], id="absent-role-already-gone"
    ),
    pytest.param(
        Desired(),
        Observed({"alice": ALICE}, {"shop": ObservedDatabase("alice", empty=False)}),
        [],
        id="removed-from-the-spec-is-left-alone",
    ),
    pytest.param(
        Desired(
            roles=(role("owner", in_roles=("reader",)), role("reader")),
            databases=(database("shop", "owner", extensions=("pgcrypto", "citext")),),
        ),
        Observed({"owner": ObservedRole(), "reader": ObservedRole()}),
        [
            'GRANT "reader" TO "owner"',
            'CREATE DATABASE "shop" OWNER "owner"',
            'REVOKE CONNECT, TEMPORARY ON DATABASE "shop" FROM PUBLIC',
            '[shop as owner] CREATE EXTENSION IF NOT EXISTS "pgcrypto"',
            '[shop as owner] CREATE EXTENSION IF NOT EXISTS "citext"',
        ],
        id="create-database-with-extensions",
    ),
    pytest.param(
        Desired(databases=(database("shop", "app", extensions=("pgcrypto", "citext")),)),
        Observed(databases={"shop": ObservedDatabase("alice", frozenset({"plpgsql", "pgcrypto"}))}),
        ['ALTER DATABASE "shop" OWNER TO "app"', '[shop as app] CREATE EXTENSION IF NOT EXISTS "citext"'],
        id="database-drift-reverted",
    ),
    pytest.param(
        Desired(databases=(database("shop", "app", ensure=Ensure.ABSENT),)),
        Observed(databases={"shop": ObservedDatabase("app", empty=True)}),
        ['DROP DATABASE "shop"'],
        id="drop-an-empty-database",
    ),
    pytest.param(
        Desired(databases=(database("shop", "app", ensure=Ensure.ABSENT),)),
        Observed(databases={"shop": ObservedDatabase("app", empty=False)}),
        ["-- database shop: not dropped: it holds tables (set dropWithData to drop it with them)"],
        id="a-database-with-tables-is-not-dropped",
    ),
    pytest.param(
        Desired(databases=(database("shop", "app", ensure=Ensure.ABSENT, drop_with_data=True),)),
        Observed(databases={"shop": ObservedDatabase("app", empty=False)}),
        ['DROP DATABASE "shop" WITH (FORCE)'],
        id="drop-with-data-when-the-spec-says-so",
    ),
    pytest.param(
        Desired(
            roles=(role("owner", ensure=Ensure.ABSENT),),
            databases=(database("shop", "app", ensure=Ensure.ABSENT),),
        ),
        Observed({"owner": ObservedRole()}, {"shop": ObservedDatabase("owner")}),
        ['DROP DATABASE "shop"', 'DROP ROLE "owner"'],
        id="databases-drop-before-their-owners",
    ),
]


@pytest.mark.parametrize(("desired", "observed", "expected"), CASES)
def test_plan(desired: Desired, observed: Observed, expected: list[str]) -> None:
    assert sql(desired, observed) == expected


@pytest.mark.parametrize(("desired", "observed", "expected"), CASES)
def test_the_same_inputs_give_the_same_sql(desired: Desired, observed: Observed, expected: list[str]) -> None:
    assert sql(desired, observed) == sql(desired, observed)
    again = Observed(
        dict(reversed(list(observed.roles.items()))), dict(reversed(list(observed.databases.items())))
    )
    assert sql(desired, again) == sql(desired, observed)


def test_a_new_salt_is_a_new_verifier_and_the_plaintext_is_never_in_the_sql() -> None:
    desired = Desired(roles=(role("alice", "s3cret", login=True),))
    one = declared.as_text(declared.plan(desired, Observed(), salt=SALT))
    two = declared.as_text(declared.plan(desired, Observed(), salt=b"\x02" * 16))
    assert one != two
    assert not any("s3cret" in line for line in one + two)
    assert "s3cret" not in repr(desired)


def test_the_applied_plan_converges() -> None:
    """Observing what a plan made gives an empty plan: the same pass twice changes nothing."""
    desired = Desired(roles=(role("alice", "s3cret", login=True, in_roles=("app",)),))
    made = Observed(
        {
            "alice": ObservedRole(
                login=True, password=verifier_of("alice", "s3cret"), member_of=frozenset({"app"})
            )
        }
    )
    assert declared.plan(desired, made, salt=b"\x09" * 16) == []


def test_report_names_the_first_error_of_each_object() -> None:
    desired = Desired(
        roles=(
            role("alice"),
            role("bob"),
            DesiredRole(types.RoleSpec("carol"), problem="Secret carol-pw not found"),
        ),
        databases=(database("shop", "app", ensure=Ensure.ABSENT),),
    )
    steps = declared.plan(
        desired, Observed({"bob": ObservedRole()}, {"shop": ObservedDatabase("app", empty=False)}), salt=SALT
    )
    failing = next(i for i, s in enumerate(steps) if s.name == "alice")
    report = declared.report(desired, steps, {failing: "42501: permission denied"})
    assert report.roles == (
        types.ObjectStatus("alice", types.Applied.FAILED, "42501: permission denied"),
        types.ObjectStatus("bob", types.Applied.APPLIED),
        types.ObjectStatus("carol", types.Applied.FAILED, "Secret carol-pw not found"),
    )
    assert report.databases[0].state is types.Applied.FAILED
    assert "dropWithData" in report.databases[0].error


def test_verified_answers_as_the_check_it_remembers_and_stays_bounded() -> None:
    verified = declared.Verified(size=2)
    stored = verifier_of("alice", "s3cret")
    assert verified(stored, "s3cret") is True
    assert verified(stored, "wrong") is False
    assert verified(stored, "s3cret") is True  # from memory
    assert verified(None, None) is True
    assert verified(stored, None) is False
    verified(verifier_of("bob", "x"), "x")
    assert len(verified._known) == 2
    assert not any(b"s3cret" in key for key in verified._known)
