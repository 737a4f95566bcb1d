"""The roles and databases a spec declares (spec.roles, spec.databases), kept as declared.

`plan` is pure: what is declared (each role with the password its Secret holds) and the catalog as
observed in, the statements that make the catalog so out, in order; none when it already is. The same
inputs give the same statements, the salt of a new password's verifier included (it is an input).
`apply` is the thin shell: it reads the catalog over the operator's own sessions, runs the plan one
statement at a time, and reports for each declared role and database what was applied and the
Postgres error of what was not. A statement that fails does not stop the others.

What the plan never does: drop a role or database that is not declared `ensure: absent` (one merely
left out of the spec is not the operator's to touch any more), drop a database that holds tables
unless the spec says `dropWithData`, or make a role that can bypass the operator (superuser,
replication, createrole, bypassrls are taken away again if someone grants them). Passwords go to
Postgres as SCRAM verifiers only, so no log line of Postgres's or the operator's holds one.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import psycopg
import psycopg.sql
from psycopg.sql import SQL, Composable, Composed, Identifier, Literal

from controller.api import types
from controller.postgres import encryption, roles
from controller.postgres.sessions import Address, OperatorSessions

OPERATOR_GROUPS = frozenset({encryption.PLAINTEXT_ROLE})
"""Group roles the operator grants by its own rules; a declared role's memberships in them are left to it."""
SCRAM_PREFIX = "SCRAM-SHA-256$"
INFINITY = "infinity"


@dataclass(frozen=True)
class DesiredRole:
    spec: types.RoleSpec
    password: str | None = field(default=None, repr=False)
    """Its password, or a SCRAM verifier of it; None: the role has no password."""
    problem: str = ""
    """Why its password could not be read (its Secret is missing, malformed...): it is left as it is."""


@dataclass(frozen=True)
class Desired:
    roles: tuple[DesiredRole, ...] = ()
    databases: tuple[types.DeclaredDatabase, ...] = ()


@dataclass(frozen=True)
class ObservedRole:
    login: bool = False
    createdb: bool = False
    inherit: bool = True
    connection_limit: int = -1
    valid_until: datetime | None = None
    password: str | None = field(default=None, repr=False)
    """The stored secret, as pg_authid holds it."""
    elevated: bool = False
    """Superuser, replication, createrole or bypassrls: never what a declared role may be."""
    member_of: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ObservedDatabase:
    owner: str
    extensions: frozenset[str] = frozenset()
    empty: bool = True
    """No tables, views or sequences outside the system schemas and extensions."""


@dataclass(frozen=True)
class Observed:
    roles: Mapping[str, ObservedRole] = field(default_factory=dict)
    """The declared roles that exist, by name."""
    databases: Mapping[str, ObservedDatabase] = field(default_factory=dict)


class Kind(StrEnum):
    ROLE = "role"
    DATABASE = "database"


@dataclass(frozen=True)
class Step:
    """One statement of a plan, the declared object it is for, and the database it runs in."""

    kind: Kind
    name: str
    statement: Composed | None
    """None: the plan refuses (see `refusal`); nothing is run."""
    database: str = "postgres"
    as_role: str = ""
    """Run as this role (SET ROLE), so Postgres's own checks apply to it (trusted extensions)."""
    refusal: str = ""


@dataclass(frozen=True)
class Report:
    """What a pass applied: one entry per declared role and database, in spec order."""

    roles: tuple[types.ObjectStatus, ...] = ()
    databases: tuple[types.ObjectStatus, ...] = ()


@dataclass(frozen=True)
class Credential:
    """What a role's password Secret holds (in a cluster a kubernetes.io/basic-auth Secret; locally its
    files), or why it cannot be used."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    problem: str = ""


def desired(spec: types.DatabaseSpec, credentials: Mapping[str, Credential]) -> Desired:
    """What the spec declares, each role with its password from `credentials` (by Secret name).

    A Secret that is missing, has no password, or names another user is a problem of the role's:
    reported, and its password is left as it is (never guessed, never emptied).
    """
    out = []
    for role in spec.roles:
        secret = role.password_secret
        if role.ensure is types.Ensure.ABSENT or not secret:
            out.append(DesiredRole(role))
            continue
        found = credentials.get(secret) or Credential(problem=f"the password Secret {secret} was not found")
        problem = found.problem
        if not problem and found.username not in (None, role.name):
            problem = f"the password Secret {secret} is for user {found.username!r}, not {role.name!r}"
        if not problem and not found.password:
            problem = f"the password Secret {secret} has no password"
        out.append(DesiredRole(role, None if problem else found.password, problem))
    return Desired(tuple(out), spec.databases)


def is_verifier(password: str) -> bool:
    return password.startswith(SCRAM_PREFIX)


def _salt(salt: bytes, name: str) -> bytes:
    """A salt of each role's own from the plan's one, so two roles never share one."""
    return hashlib.sha256(salt + name.encode()).digest()[:16]


def password_matches(stored: str | None, password: str | None) -> bool:
    """Whether the stored secret is that of `password` (None: no password at all)."""
    if password is None:
        return stored is None
    if is_verifier(password):
        return stored == password
    try:
        kind, rest = (stored or "").split("$", 1)
        head, _ = rest.split("$", 1)
        iterations, salt = head.split(":", 1)
        expected = roles.scram_verifier(password, salt=base64.b64decode(salt), iterations=int(iterations))
    except ValueError:
        return False
    return kind == "SCRAM-SHA-256" and hmac.compare_digest(expected, stored or "")


class Verified:
    """`password_matches`, remembered: checking a SCRAM secret costs 4096 rounds of PBKDF2 (about 10 ms),
    which a resync pass would pay for every role, every time. Bounded; keyed by a digest of the
    password with the stored secret, so the memory holds no password."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._known: collections.OrderedDict[bytes, bool] = collections.OrderedDict()

    def __call__(self, stored: str | None, password: str | None) -> bool:
        if stored is None or password is None or is_verifier(password):
            return password_matches(stored, password)
        key = hashlib.sha256(f"{stored}\0{password}".encode()).digest()
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = password_matches(stored, password)
            if len(self._known) > self._size:
                self._known.popitem(last=False)
        self._known.move_to_end(key)
        return known


def _password_sql(name: str, password: str | None, salt: bytes) -> Composable:
    if password is None:
        return SQL("NULL")
    verifier = password if is_verifier(password) else roles.scram_verifier(password, salt=_salt(salt, name))
    return Literal(verifier)


def _attributes(role: types.RoleSpec, observed: ObservedRole | None) -> list[Composable]:
    """The attributes that differ from what is observed (all of them for a new role)."""
    out: list[Composable] = []
    for wanted, seen, yes, no in (
        (role.login, None if observed is None else observed.login, "LOGIN", "NOLOGIN"),
        (role.createdb, None if observed is None else observed.createdb, "CREATEDB", "NOCREATEDB"),
        (role.inherit, None if observed is None else observed.inherit, "INHERIT", "NOINHERIT"),
    ):
        if wanted != seen:
            out.append(SQL(yes if wanted else no))
    if observed is None or observed.elevated:
        out.append(SQL("NOSUPERUSER NOREPLICATION NOCREATEROLE NOBYPASSRLS"))
    if observed is None or observed.connection_limit != role.connection_limit:
        out.append(SQL("CONNECTION LIMIT {}").format(SQL(str(int(role.connection_limit)))))
    seen_until = None if observed is None else observed.valid_until
    if role.valid_until != seen_until and (observed is not None or role.valid_until is not None):
        until = role.valid_until.isoformat() if role.valid_until is not None else INFINITY
        out.append(SQL("VALID UNTIL {}").format(Literal(until)))
    return out


def plan(
    desired: Desired,
    observed: Observed,
    *,
    salt: bytes,
    matches: Callable[[str | None, str | None], bool] = password_matches,
) -> list[Step]:
    """The steps that make the catalog what is declared, in order; none when it already is.

    Roles first (so databases can be owned by them and roles can be members of each other), then
    memberships, then databases and their extensions; drops last, databases before their owners.
    """
    out: list[Step] = []
    present = [r for r in desired.roles if r.spec.ensure is types.Ensure.PRESENT]
    for wanted in present:
        role, seen = wanted.spec, observed.roles.get(wanted.spec.name)
        attributes = _attributes(role, seen)
        # A password that could not be read is left as it is, whatever it is.
        keep_password = bool(wanted.problem) or (seen is not None and matches(seen.password, wanted.password))
        if seen is None:
            if not wanted.problem:
                attributes.append(SQL("PASSWORD {}").format(_password_sql(role.name, wanted.password, salt)))
            out.append(_role(role.name, SQL("CREATE ROLE {} WITH {}"), attributes))
            continue
        if not keep_password:
            attributes.append(SQL("PASSWORD {}").format(_password_sql(role.name, wanted.password, salt)))
        if attributes:
            out.append(_role(role.name, SQL("ALTER ROLE {} WITH {}"), attributes))
    for wanted in present:
        role, seen = wanted.spec, observed.roles.get(wanted.spec.name)
        member_of = seen.member_of if seen is not None else frozenset()
        for group in role.in_roles:
            if group not in member_of:
                statement = SQL("GRANT {} TO {}").format(Identifier(group), Identifier(role.name))
                out.append(Step(Kind.ROLE, role.name, statement))
        # The operator's own groups (sdb_*: plaintext allowed, ...) are its to grant, not the spec's.
        for group in sorted(member_of - set(role.in_roles) - OPERATOR_GROUPS):
            statement = SQL("REVOKE {} FROM {}").format(Identifier(group), Identifier(role.name))
            out.append(Step(Kind.ROLE, role.name, statement))
    for database in desired.databases:
        if database.ensure is types.Ensure.PRESENT:
            out += _database(database, observed.databases.get(database.name))
    for database in desired.databases:
        found = observed.databases.get(database.name)
        if database.ensure is types.Ensure.ABSENT and found is not None:
            out.append(_drop_database(database, found))
    for wanted in desired.roles:
        if wanted.spec.ensure is types.Ensure.ABSENT and wanted.spec.name in observed.roles:
            out.append(
                Step(Kind.ROLE, wanted.spec.name, SQL("DROP ROLE {}").format(Identifier(wanted.spec.name)))
            )
    return out


def _role(name: str, template: SQL, attributes: Sequence[Composable]) -> Step:
    return Step(Kind.ROLE, name, template.format(Identifier(name), SQL(" ").join(attributes)))


def _database(database: types.DeclaredDatabase, found: ObservedDatabase | None) -> list[Step]:
    name, owner = Identifier(database.name), Identifier(database.owner)
    out: list[Step] = []
    if found is None:
        out.append(Step(Kind.DATABASE, database.name, SQL("CREATE DATABASE {} OWNER {}").format(name, owner)))
        # As the maintenance databases (roles.plan): its owner and the owner's members connect, not PUBLIC.
        revoke = SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(name)
        out.append(Step(Kind.DATABASE, database.name, revoke))
    elif found.owner != database.owner:
        out.append(
            Step(Kind.DATABASE, database.name, SQL("ALTER DATABASE {} OWNER TO {}").format(name, owner))
        )
    have = found.extensions if found is not None else frozenset()
    for extension in database.extensions:
        if extension not in have:
            statement = SQL("CREATE EXTENSION IF NOT EXISTS {}").format(Identifier(extension))
            out.append(Step(Kind.DATABASE, database.name, statement, database.name, as_role=database.owner))
    return out


def _drop_database(database: types.DeclaredDatabase, found: ObservedDatabase) -> Step:
    name = Identifier(database.name)
    if database.drop_with_data:
        return Step(Kind.DATABASE, database.name, SQL("DROP DATABASE {} WITH (FORCE)").format(name))
    if not found.empty:
        refusal = "not dropped: it holds tables (set dropWithData to drop it with them)"
        return Step(Kind.DATABASE, database.name, None, refusal=refusal)
    return Step(Kind.DATABASE, database.name, SQL("DROP DATABASE {}").format(name))


def report(desired: Desired, steps: Sequence[Step], errors: Mapping[int, str]) -> Report:
    """Each declared object's outcome: Failed with the first error among its steps (or its password's
    problem, or the plan's refusal), else Applied. `errors` is by step index."""
    first: dict[tuple[Kind, str], str] = {}
    for index, step in enumerate(steps):
        problem = step.refusal or errors.get(index, "")
        if problem:
            first.setdefault((step.kind, step.name), problem)

    def status(kind: Kind, name: str, problem: str = "") -> types.ObjectStatus:
        error = first.get((kind, name)) or problem
        return types.ObjectStatus(name, types.Applied.FAILED if error else types.Applied.APPLIED, error)

    return Report(
        roles=tuple(status(Kind.ROLE, r.spec.name, r.problem) for r in desired.roles),
        databases=tuple(status(Kind.DATABASE, d.name) for d in desired.databases),
    )


# -- the shell -------------------------------------------------------------------------------------

_ROLES_SQL = """
SELECT r.rolname, r.rolcanlogin, r.rolcreatedb, r.rolinherit, r.rolconnlimit, r.rolvaliduntil,
       r.rolpassword, r.rolsuper OR r.rolreplication OR r.rolcreaterole OR r.rolbypassrls,
       ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_authid g ON g.oid = m.roleid
             WHERE m.member = r.oid ORDER BY 1)
FROM pg_authid r WHERE r.rolname = ANY(%s)
"""
_DATABASES_SQL = "SELECT datname, pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = ANY(%s)"
_CONTENTS_SQL = """
SELECT ARRAY(SELECT extname FROM pg_extension ORDER BY 1)::text[],
       NOT EXISTS (
           SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\\_%%'
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e'))
"""


def _error(error: psycopg.Error) -> str:
    """A Postgres error as status shows it: its SQLSTATE and primary message (never the statement)."""
    diag = error.diag
    message = diag.message_primary or type(error).__name__
    return f"{diag.sqlstate}: {message}" if diag.sqlstate else message


def _observe(
    sessions: OperatorSessions,
    key: str,
    address: Address,
    conn: psycopg.Connection[tuple[object, ...]],
    desired: Desired,
) -> Observed:
    names = [r.spec.name for r in desired.roles]
    found_roles = {
        str(row[0]): ObservedRole(
            login=bool(row[1]),
            createdb=bool(row[2]),
            inherit=bool(row[3]),
            connection_limit=int(row[4]),  # type: ignore[call-overload]
            valid_until=_until(row[5]),
            password=row[6] if isinstance(row[6], str) else None,
            elevated=bool(row[7]),
            member_of=frozenset(str(g) for g in row[8]),  # type: ignore[attr-defined]
        )
        for row in conn.execute(_ROLES_SQL, [names]).fetchall()
    }
    owners = {
        str(row[0]): str(row[1])
        for row in conn.execute(_DATABASES_SQL, [[d.name for d in desired.databases]]).fetchall()
    }
    found_databases = {}
    for database in desired.databases:
        owner = owners.get(database.name)
        if owner is None:
            continue
        looks = (database.ensure is types.Ensure.PRESENT and database.extensions) or (
            database.ensure is types.Ensure.ABSENT and not database.drop_with_data
        )
        if not looks:
            found_databases[database.name] = ObservedDatabase(owner)
            continue
        with sessions.connect(key, address, dbname=database.name) as inside:
            row = inside.execute(_CONTENTS_SQL).fetchone()
        assert row is not None
        extensions = frozenset(str(e) for e in row[0])  # type: ignore[attr-defined]
        found_databases[database.name] = ObservedDatabase(owner, extensions, bool(row[1]))
    return Observed(found_roles, found_databases)


def _until(value: object) -> datetime | None:
    # Postgres's 'infinity' reads as datetime.max (psycopg); either way the role does not expire.
    if not isinstance(value, datetime) or value.year >= 9999:
        return None
    return value


async def apply(
    sessions: OperatorSessions,
    key: str,
    address: Address,
    desired: Desired,
    *,
    salt: bytes,
    verified: Verified | None = None,
) -> Report:
    """Make the declared roles and databases so; the report says what could not be, and why."""
    matches = verified or password_matches
    return await asyncio.to_thread(_apply, sessions, key, address, desired, salt, matches)


def _apply(
    sessions: OperatorSessions,
    key: str,
    address: Address,
    desired: Desired,
    salt: bytes,
    matches: Callable[[str | None, str | None], bool],
) -> Report:
    if not desired.roles and not desired.databases:
        return Report()
    with sessions.connect(key, address) as conn:
        observed = _observe(sessions, key, address, conn, desired)
        steps = plan(desired, observed, salt=salt, matches=matches)
        errors: dict[int, str] = {}
        for index, step in enumerate(steps):
            if step.statement is None:
                continue
            try:
                if step.database == "postgres":
                    conn.execute(step.statement)
                else:
                    _run_inside(sessions, key, address, step)
            except psycopg.Error as error:
                if isinstance(error, psycopg.OperationalError) and conn.closed:
                    raise
                errors[index] = _error(error)
    return report(desired, steps, errors)


def _run_inside(sessions: OperatorSessions, key: str, address: Address, step: Step) -> None:
    assert step.statement is not None
    with sessions.connect(key, address, dbname=step.database) as inside:
        if step.as_role:
            inside.execute(SQL("SET ROLE {}").format(Identifier(step.as_role)))
        inside.execute(step.statement)


def as_text(steps: Sequence[Step]) -> list[str]:
    """The plan as SQL text, each statement prefixed by where it runs when not in postgres (tests, docs)."""
    out = []
    for step in steps:
        if step.statement is None:
            out.append(f"-- {step.kind.value} {step.name}: {step.refusal}")
            continue
        text = step.statement.as_string(None)
        where = f"{step.database}" + (f" as {step.as_role}" if step.as_role else "")
        out.append(text if step.database == "postgres" else f"[{where}] {text}")
    return out
