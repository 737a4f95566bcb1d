"""The identity applier on a real server: pg_ident.conf written through the server's own session and
read again, the identity role's members kept; and a server whose ident_file it cannot write (one
started before the file was in its data directory) keeps being served, with no role granted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from support.identity import identity_members
from support.postgres import Server, running_server

from controller.postgres import identities
from controller.postgres.sessions import Address, OperatorSessions
from controller.runtime.local.runtime import HOST

pytestmark = pytest.mark.postgres
NAME = "serverless-db-gateway"
ROLE = "map_reader"


def loaded(server: Server) -> set[tuple[str, str, str]]:
    """The map as the server has loaded it (pg_ident_file_mappings reads the file the server uses)."""
    with server.connect() as conn:
        rows = conn.execute("SELECT map_name, sys_name, pg_username FROM pg_ident_file_mappings").fetchall()
    return {(str(r[0]), str(r[1]), str(r[2])) for r in rows}


def apply(server: Server, roles: list[str]) -> int:
    address = Address(HOST, server.port, server.password)
    return asyncio.run(
        identities.apply(OperatorSessions(), "shop/orders", address, certificate_name=NAME, roles=roles)
    )


@pytest.fixture
def writable() -> Iterator[Server]:
    with running_server(any_password=True) as server:  # ident_file in the data directory, as a pod's
        with server.connect() as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN")
        yield server


def test_the_map_and_the_members_follow_the_bound_roles(writable: Server) -> None:
    assert apply(writable, []) == 0  # initdb's file says nothing: nothing is written
    assert apply(writable, [ROLE, "not_made_yet"]) == 3  # the map, the group, one grant
    assert identity_members(writable) == {ROLE}
    assert loaded(writable) == {(identities.MAP, NAME, ROLE), (identities.MAP, NAME, "not_made_yet")}
    assert apply(writable, [ROLE, "not_made_yet"]) == 0
    assert apply(writable, []) == 2  # one revoke, the map
    assert identity_members(writable) == set()
    assert loaded(writable) == set()


def test_a_map_it_cannot_write_leaves_the_database_served_and_no_role_granted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As a pod started before its ident_file was in the data directory: one nobody can write.
    with running_server(any_password=True, parameters={"ident_file": "/nonexistent/pg_ident.conf"}) as server:
        with server.connect() as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN")
        assert apply(server, [ROLE]) == 0
        assert identity_members(server) == set()
        assert "cannot write pg_ident.conf" in capsys.readouterr().out
        with server.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
