"""Which roles a token may become: pg_ident.conf, and in a cluster a role membership.

A door that has checked a token logs in to Postgres as the mapped role with a client certificate
from the operator's CA, and no password. Postgres's `cert` method reads the certificate's name, and
the `identities` map in pg_ident.conf lets that name become exactly the roles bound by
`spec.access.identities`, nothing else.

In a cluster the gateway's connections come from any pod address, so pg_hba picks `cert` by role:
members of `IDENTITY_ROLE` log in only with a certificate (over TLS) and never with a password.
pg_hba.conf then never changes with the spec; the membership is in the catalog, and pg_ident.conf
(which pg_hba cannot do without) is written by the operator's own session to the file the server
reads (`ident_file`), then reloaded. Both change at once, with no file to copy into a pod.

`plan` is pure (the catalog in, ordered SQL out); `apply` reads the catalog and runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg
import psycopg.sql
import structlog

from controller.postgres import membership
from controller.postgres.sessions import Address, OperatorSessions

log = structlog.get_logger("identities")
MAP = "identities"
IDENTITY_ROLE = "sdb_identity"


def hba_rules() -> list[str]:
    """pg_hba.conf's lines for token logins in a cluster, before any password line: a member of
    IDENTITY_ROLE presents a client certificate the map lets become it, or is refused."""
    return [
        f"hostssl all +{IDENTITY_ROLE} all cert map={MAP}",
        f"host    all +{IDENTITY_ROLE} all reject",
    ]


def ident_rules(certificate_name: str, roles: Iterable[str]) -> str:
    """pg_ident.conf: the certificate named `certificate_name` may become exactly these roles."""
    lines = ["# Managed by the serverless-db operator."]
    lines += [f"{MAP} {certificate_name} {role}" for role in sorted(set(roles))]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Catalog:
    exists: bool
    """Whether IDENTITY_ROLE exists."""
    roles: frozenset[str]
    """Every role there is."""
    members: frozenset[str]
    """Roles that are directly members of IDENTITY_ROLE."""
    ident: str
    """pg_ident.conf as the server's `ident_file` holds it now."""


@dataclass(frozen=True)
class Plan:
    revoke: list[psycopg.sql.Composed]
    """Before the map is rewritten: a role that loses its binding loses its way in first."""
    ident: str | None
    """pg_ident.conf to write (then reload); None when it is as wanted."""
    grant: list[psycopg.sql.Composed]
    """After the map is read again: a new member can log in at once."""

    def __len__(self) -> int:
        return len(self.revoke) + len(self.grant) + (self.ident is not None)


def plan(*, certificate_name: str, roles: Iterable[str], catalog: Catalog) -> Plan:
    sql, ident = psycopg.sql.SQL, psycopg.sql.Identifier
    bound = frozenset(roles) - {IDENTITY_ROLE}
    grant: list[psycopg.sql.Composed] = []
    if not catalog.exists and bound:  # pg_hba's `+` of a role that does not exist matches no one
        grant.append(sql("CREATE ROLE {} NOLOGIN").format(ident(IDENTITY_ROLE)))
    # A bound role not made yet is granted on a later pass, once it is (declared roles come first);
    # members are roles that exist, so leaving those out takes no member's way in.
    granted, revoke = membership.changes(IDENTITY_ROLE, wanted=bound & catalog.roles, members=catalog.members)
    grant += granted
    wanted = ident_rules(certificate_name, bound)
    return Plan(revoke, wanted if mappings(wanted) != mappings(catalog.ident) else None, grant)


def mappings(ident: str) -> frozenset[tuple[str, ...]]:
    """A pg_ident.conf's lines that say something (initdb's, all comments, says what an empty one does)."""
    lines = (line.split("#", 1)[0].split() for line in ident.splitlines())
    return frozenset(tuple(words) for words in lines if words)


CATALOG_SQL = """
SELECT r.rolname,
       EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles p ON p.oid = m.roleid
               WHERE p.rolname = %(role)s AND m.member = r.oid)
FROM pg_roles r
"""


def _read_ident(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[str, str]:
    """The server's ident_file, and what it holds ('' when it is missing)."""
    path = str(conn.execute("SHOW ident_file").fetchone()[0])  # type: ignore[index]
    row = conn.execute("SELECT pg_read_file(%s, 0, 1048576, true)", [path]).fetchone()
    return path, str(row[0]) if row and row[0] is not None else ""


def _write_ident(conn: psycopg.Connection[tuple[object, ...]], path: str, text: str) -> None:
    """Write the file through the server (its account owns the data directory), one line a row;
    role names are plain identifiers, so COPY's text format leaves every line as it is."""
    lines = text.rstrip("\n").split("\n")
    statement = psycopg.sql.SQL(
        "COPY (SELECT line FROM unnest({}::text[]) WITH ORDINALITY AS t(line, n) ORDER BY n) TO {}"
    ).format(psycopg.sql.Literal(lines), psycopg.sql.Literal(path))
    conn.execute(statement)
    conn.execute("SELECT pg_reload_conf()")


def _catalog(rows: Sequence[tuple[object, ...]], ident: str) -> Catalog:
    return Catalog(
        exists=any(r[0] == IDENTITY_ROLE for r in rows),
        roles=frozenset(str(r[0]) for r in rows),
        members=frozenset(str(r[0]) for r in rows if r[1]),
        ident=ident,
    )


async def apply(
    sessions: OperatorSessions, key: str, address: Address, *, certificate_name: str, roles: Iterable[str]
) -> int:
    """Let the certificate become exactly `roles`; returns how many changes it took."""
    wanted = list(roles)

    def run() -> int:
        with sessions.connect(key, address) as conn:
            conn.autocommit = True
            rows = conn.execute(CATALOG_SQL, {"role": IDENTITY_ROLE}).fetchall()
            path, current = _read_ident(conn)
            steps = plan(certificate_name=certificate_name, roles=wanted, catalog=_catalog(rows, current))
            for statement in steps.revoke:
                conn.execute(statement)
            if steps.ident is not None:
                try:
                    _write_ident(conn, path, steps.ident)
                except psycopg.Error as error:
                    # A server started before its ident_file was in the data directory reads one the
                    # operator cannot write until it restarts. Until then no role is granted: a
                    # token login is refused by Postgres, and the rest of the database is served.
                    log.warning(
                        "cannot write pg_ident.conf: token logins are refused until the server restarts",
                        database=key,
                        path=path,
                        error=str(error).strip(),
                    )
                    return len(steps.revoke)
            for statement in steps.grant:
                conn.execute(statement)
        return len(steps)

    return await asyncio.to_thread(run)
