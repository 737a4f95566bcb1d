"""The plan that lets the gateway's certificate become exactly the roles bound to identities: the
identity role's members and pg_ident.conf, from the catalog as it is."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg.sql

from controller.postgres import identities
from controller.postgres.identities import Catalog, plan

NAME = "serverless-db-gateway"
INITDB_IDENT = "# PostgreSQL User Name Maps\n# ===\n#\n# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n"


def catalog(*, roles: Iterable[str] = (), members: Iterable[str] = (), ident: str = INITDB_IDENT) -> Catalog:
    members = frozenset(members)
    every = frozenset(roles) | members
    return Catalog(
        exists=bool(members) or identities.IDENTITY_ROLE in every, roles=every, members=members, ident=ident
    )


def text(statements: Iterable[psycopg.sql.Composed]) -> list[str]:
    return [s.as_string() for s in statements]


def test_a_database_without_identities_is_left_as_initdb_made_it() -> None:
    steps = plan(certificate_name=NAME, roles=[], catalog=catalog(roles=["app"]))
    assert (steps.revoke, steps.ident, steps.grant, len(steps)) == ([], None, [], 0)


def test_bound_roles_become_members_after_the_map_is_written() -> None:
    steps = plan(
        certificate_name=NAME,
        roles=["reader", "writer", "reader"],
        catalog=catalog(roles=["reader", "writer"]),
    )
    assert steps.revoke == []
    assert steps.ident is not None
    assert identities.mappings(steps.ident) == {
        ("identities", NAME, "reader"),
        ("identities", NAME, "writer"),
    }
    assert text(steps.grant) == [
        'CREATE ROLE "sdb_identity" NOLOGIN',
        'GRANT "sdb_identity" TO "reader"',
        'GRANT "sdb_identity" TO "writer"',
    ]


def test_a_role_not_made_yet_is_in_the_map_and_granted_later() -> None:
    steps = plan(certificate_name=NAME, roles=["reader"], catalog=catalog(roles=[identities.IDENTITY_ROLE]))
    assert steps.ident is not None
    assert "reader" in steps.ident
    assert steps.grant == []


def test_an_unbound_role_loses_its_membership_before_the_map_changes() -> None:
    current = identities.ident_rules(NAME, ["reader", "writer"])
    steps = plan(
        certificate_name=NAME, roles=["writer"], catalog=catalog(members=["reader", "writer"], ident=current)
    )
    assert text(steps.revoke) == ['REVOKE "sdb_identity" FROM "reader"']
    assert steps.ident is not None
    assert identities.mappings(steps.ident) == {("identities", NAME, "writer")}
    assert steps.grant == []


def test_what_is_already_so_takes_nothing_and_the_same_inputs_give_the_same_plan() -> None:
    current = identities.ident_rules(NAME, ["reader"]).replace("\n", "\n\n  # a comment\n")
    now = catalog(members=["reader"], ident=current)
    assert len(plan(certificate_name=NAME, roles=["reader"], catalog=now)) == 0
    changed = catalog(members=["writer"], roles=["reader"], ident=current)
    first = plan(certificate_name=NAME, roles=["reader"], catalog=changed)
    again = plan(certificate_name=NAME, roles=["reader"], catalog=changed)
    assert (text(first.revoke), first.ident, text(first.grant)) == (
        text(again.revoke),
        again.ident,
        text(again.grant),
    )


def test_the_identity_role_itself_is_never_bound() -> None:
    steps = plan(certificate_name=NAME, roles=[identities.IDENTITY_ROLE], catalog=catalog())
    assert (steps.ident, steps.grant) == (None, [])
