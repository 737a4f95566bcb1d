"""Who may connect to a database, as roles: the operator's superuser, the application role that owns
the application database (what clients get), and a superuser for clients only when the spec allows.

`plan` is pure, the desired roles and the observed catalog in, ordered SQL out; `apply` reads the
catalog over the operator's own session and runs the plan. Passwords go in pre-hashed (SCRAM), so
they never reach Postgres's logs nor the operator's; each role's secret is `role_verifier`'s, which
the pooler checks clients against too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
import psycopg.sql
import scramp

from controller.postgres.sessions import Address, OperatorSessions

OPERATOR_ROLE = "postgres"
APP_ROLE = "app"
APP_DATABASE = "app"
SUPERUSER_ROLE = "superuser"
SCRAM_ITERATIONS = 4096
"""Postgres's own default (scram_iterations)."""

_SCRAM = scramp.ScramMechanism("SCRAM-SHA-256")


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 secret Postgres stores for a password (pg_authid.rolpassword's format)."""
    salt, stored, server, iterations = _SCRAM.make_auth_info(password, iterations, salt)
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored).decode()}:{b64(server).decode()}"


def role_verifier(password: str) -> str:
    """The one SCRAM secret the operator gives a role for `password`, the same wherever it is computed.

    The pooler checks clients against the secret the server stores, and logs in to the server with
    the client's SCRAM keys, which works only when both hold the very same secret. The salt is
    derived from the password, so each runtime can compute that secret from the credentials alone,
    even while the server is down. The passwords are the operator's own random 192 bits, so a
    salt that is a function of them gives an attacker no table to precompute.
    """
    salt = hmac.new(password.encode(), b"dbscale.io/scram-salt", hashlib.sha256).digest()[:16]
    return scram_verifier(password, salt=salt)


@dataclass(frozen=True)
class Desired:
    app_password: str = field(repr=False)
    superuser_password: str | None = field(default=None, repr=False)
    """None: no client may be a superuser (the role, if it exists, cannot log in)."""


@dataclass(frozen=True)
class Role:
    login: bool
    superuser: bool
    password: str | None = field(default=None, repr=False)
    """The stored secret (SCRAM), as pg_authid holds it."""


@dataclass(frozen=True)
class Catalog:
    roles: Mapping[str, Role]
    databases: Mapping[str, str]
    """Database name to its owner's name."""
    public_connect: frozenset[str] = frozenset()
    """Databases PUBLIC may connect to."""


Statement = psycopg.sql.Composed


def plan(desired: Desired, catalog: Catalog) -> list[Statement]:
    """The statements that make the catalog what is desired, in order; none when it already is."""
    sql, ident, literal = psycopg.sql.SQL, psycopg.sql.Identifier, psycopg.sql.Literal
    out: list[Statement] = []
    app = catalog.roles.get(APP_ROLE)
    if app is None:
        out.append(sql("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEROLE").format(ident(APP_ROLE)))
    elif not app.login or app.superuser:
        out.append(sql("ALTER ROLE {} LOGIN NOSUPERUSER").format(ident(APP_ROLE)))
    verifier = role_verifier(desired.app_password)
    if app is None or app.password != verifier:
        out.append(sql("ALTER ROLE {} PASSWORD {}").format(ident(APP_ROLE), literal(verifier)))
    if APP_DATABASE not in catalog.databases:
        out.append(sql("CREATE DATABASE {} OWNER {}").format(ident(APP_DATABASE), ident(APP_ROLE)))
    elif catalog.databases[APP_DATABASE] != APP_ROLE:
        out.append(sql("ALTER DATABASE {} OWNER TO {}").format(ident(APP_DATABASE), ident(APP_ROLE)))
    # The maintenance databases are the operator's: clients have no business there.
    for name in sorted(catalog.public_connect - {APP_DATABASE}):
        out.append(sql("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(ident(name)))
    superuser = catalog.roles.get(SUPERUSER_ROLE)
    if desired.superuser_password is not None:
        if superuser is None:
            out.append(sql("CREATE ROLE {} LOGIN SUPERUSER").format(ident(SUPERUSER_ROLE)))
        elif not superuser.login or not superuser.superuser:
            out.append(sql("ALTER ROLE {} LOGIN SUPERUSER").format(ident(SUPERUSER_ROLE)))
        verifier = role_verifier(desired.superuser_password)
        if superuser is None or superuser.password != verifier:
            out.append(sql("ALTER ROLE {} PASSWORD {}").format(ident(SUPERUSER_ROLE), literal(verifier)))
    elif superuser is not None and (superuser.login or superuser.password is not None):
        out.append(sql("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(ident(SUPERUSER_ROLE)))
    return out


CATALOG_SQL = """
SELECT 'role', rolname, rolcanlogin, rolsuper, rolpassword FROM pg_authid
UNION ALL
SELECT 'database', datname, has_database_privilege('public', datname, 'CONNECT'), false,
       pg_get_userbyid(datdba)::text
FROM pg_database WHERE datallowconn
"""


def _catalog(rows: list[tuple[object, ...]]) -> Catalog:
    roles = {
        str(r[1]): Role(bool(r[2]), bool(r[3]), r[4] if isinstance(r[4], str) else None)
        for r in rows
        if r[0] == "role"
    }
    databases = {str(r[1]): str(r[4]) for r in rows if r[0] == "database"}
    public = frozenset(str(r[1]) for r in rows if r[0] == "database" and r[2])
    return Catalog(roles, databases, public)


async def apply(sessions: OperatorSessions, key: str, address: Address, desired: Desired) -> int:
    """Make the roles what is desired; returns how many statements that took."""
    return await asyncio.to_thread(_apply, sessions, key, address, desired)


def _apply(sessions: OperatorSessions, key: str, address: Address, desired: Desired) -> int:
    with sessions.connect(key, address) as conn:
        statements = plan(desired, _catalog(conn.execute(CATALOG_SQL).fetchall()))
        for statement in statements:
            conn.execute(statement)
    return len(statements)
