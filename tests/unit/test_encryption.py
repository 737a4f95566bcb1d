"""Plaintext as a role membership: the statements for spec.tls.required, from the catalog."""

from __future__ import annotations

import psycopg
import pytest
from support.postgres import Server

from controller.postgres import encryption
from controller.postgres.encryption import Catalog


def text(statements: list[psycopg.sql.Composed]) -> list[str]:
    return [s.as_string(None) for s in statements]


def test_a_new_database_gets_the_role_and_every_client_role_may_use_plaintext() -> None:
    catalog = Catalog(exists=False, logins=frozenset({"app", "superuser"}), members=frozenset())
    assert text(encryption.plan(required=False, catalog=catalog)) == [
        'CREATE ROLE "sdb_plaintext" NOLOGIN',
        'GRANT "sdb_plaintext" TO "app"',
        'GRANT "sdb_plaintext" TO "superuser"',
    ]


def test_required_revokes_every_membership_and_nothing_more_is_done_once_it_holds() -> None:
    catalog = Catalog(exists=True, logins=frozenset({"app", "reader"}), members=frozenset({"app", "old"}))
    assert text(encryption.plan(required=True, catalog=catalog)) == [
        'REVOKE "sdb_plaintext" FROM "app"',
        'REVOKE "sdb_plaintext" FROM "old"',
    ]
    settled = Catalog(exists=True, logins=frozenset({"app", "reader"}), members=frozenset())
    assert encryption.plan(required=True, catalog=settled) == []
    allowed = Catalog(exists=True, logins=frozenset({"app"}), members=frozenset({"app"}))
    assert encryption.plan(required=False, catalog=allowed) == []


@pytest.mark.postgres
def test_the_catalog_read_from_postgres_leaves_out_the_operator_and_predefined_roles(pods: Server) -> None:
    with pods.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS enc_client")
        conn.execute("CREATE ROLE enc_client LOGIN")
        rows = conn.execute(encryption.CATALOG_SQL, {"role": encryption.PLAINTEXT_ROLE}).fetchall()
        catalog = encryption._catalog(rows)
        assert "enc_client" in catalog.logins
        assert "postgres" not in catalog.logins
        assert not any(name.startswith("pg_") for name in catalog.logins)
        conn.execute("DROP ROLE enc_client")
