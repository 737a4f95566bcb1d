"""Whether clients may connect without TLS, as a role membership rather than a file to reload.

pg_hba.conf never changes with the spec: it takes TLS from anyone, and plaintext only from members
of `PLAINTEXT_ROLE`. `spec.tls.required` is then which login roles are members: every client role
when it is false, none when it is true. A membership is in the catalog, read at each connection, so
the change is immediate in both runtimes, with no file to copy into a pod and no reload to time.

`plan` is pure (the catalog in, ordered SQL out); `apply` reads the catalog and runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg.sql

from controller.postgres import membership
from controller.postgres.sessions import USER, Address, OperatorSessions

PLAINTEXT_ROLE = "sdb_plaintext"


def hba_rules(network: str, *, local_peer: bool = False) -> str:
    """pg_hba.conf: SCRAM over TLS from `network`; plaintext only for members of PLAINTEXT_ROLE.
    `local_peer`: Unix-socket connections by OS user (an image's init scripts use them)."""
    lines = ["# Managed by the serverless-db operator. Plaintext: members of sdb_plaintext only."]
    if local_peer:
        lines.append("local   all all peer")
    lines += [
        f"hostssl all all {network} scram-sha-256",
        f"host    all +{PLAINTEXT_ROLE} {network} scram-sha-256",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Catalog:
    exists: bool
    """Whether PLAINTEXT_ROLE exists."""
    logins: frozenset[str]
    """Roles that can log in, but the operator's own."""
    members: frozenset[str]
    """Roles that are directly members of PLAINTEXT_ROLE."""


def plan(*, required: bool, catalog: Catalog) -> list[psycopg.sql.Composed]:
    sql, ident = psycopg.sql.SQL, psycopg.sql.Identifier
    out: list[psycopg.sql.Composed] = []
    if not catalog.exists:
        out.append(sql("CREATE ROLE {} NOLOGIN").format(ident(PLAINTEXT_ROLE)))
    grants, revokes = membership.changes(
        PLAINTEXT_ROLE, wanted=frozenset() if required else catalog.logins, members=catalog.members
    )
    return out + grants + revokes


CATALOG_SQL = """
SELECT r.rolname, r.rolcanlogin,
       EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles p ON p.oid = m.roleid
               WHERE p.rolname = %(role)s AND m.member = r.oid)
FROM pg_roles r WHERE r.rolname !~ '^pg_'
"""


def _catalog(rows: Sequence[tuple[object, ...]]) -> Catalog:
    names = {str(r[0]) for r in rows}
    return Catalog(
        exists=PLAINTEXT_ROLE in names,
        logins=frozenset(str(r[0]) for r in rows if r[1] and r[0] != USER),
        members=frozenset(str(r[0]) for r in rows if r[2]),
    )


async def apply(sessions: OperatorSessions, key: str, address: Address, *, required: bool) -> int:
    """Make plaintext allowed or not for every client role; returns how many statements it took."""

    def run() -> int:
        with sessions.connect(key, address) as conn:
            rows = conn.execute(CATALOG_SQL, {"role": PLAINTEXT_ROLE}).fetchall()
            statements = plan(required=required, catalog=_catalog(rows))
            for statement in statements:
                conn.execute(statement)
        return len(statements)

    return await asyncio.to_thread(run)
