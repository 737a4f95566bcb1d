"""The pooled endpoint: PgBouncer's configuration for a database, as a pure function of its spec and
size, and the operator's word with a running pooler over its admin console.

The same for both runtimes; they differ only in the paths, the addresses and how the process runs.
PgBouncer authenticates clients itself, from an auth file of the roles' SCRAM secrets (the very
ones the server stores), so a client logs in to a paused database's pooler without waking it, and
the pooler logs in to the server with the client's own SCRAM keys: no password is in its files.
Its server connections go to the database's endpoint, so the first query of a pooled client wakes
a paused database as a direct client does.

The pool follows capacity: a resize changes it on the console (`SET default_pool_size`), which
holds at once for every pool and drops no client; the configuration file says the same for the
next start.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg

from controller.api import types
from controller.policy import sizing
from controller.postgres import roles

APPLICATION = "pgbouncer"
"""The application_name of server connections no client has named (autoPause.ignoredApplications)."""
ADMIN_USER = "sdb_pooler"
"""The operator's own login to the pooler's admin console; no role of that name exists in Postgres."""
ADMIN_DATABASE = "pgbouncer"
SUPERUSER_POOL_SIZE = 5
"""Server connections for the clients' superuser's own database: administration, not traffic."""
SERVER_IDLE_TIMEOUT_MAX = timedelta(seconds=30)
CONNECT_TIMEOUT_SECONDS = 5


def server_idle_timeout(spec: types.DatabaseSpec) -> int:
    """Seconds an unused server connection stays open.

    Until it closes it is a session in Postgres with the last client's application_name, which counts
    as activity; closing it within a tenth of autoPause.idleAfter (30 s at most) lets an idle pooled
    database pause at most that much later than a direct one.
    """
    seconds = min(spec.auto_pause.idle_after / 10, SERVER_IDLE_TIMEOUT_MAX).total_seconds()
    return max(1, math.ceil(seconds)) if spec.auto_pause.enabled else 600


@dataclass(frozen=True)
class Tls:
    """The pooler's own certificate and key (for clients), and the CA that issued them."""

    certificate: str
    key: str
    authority: str


@dataclass(frozen=True)
class Layout:
    """Where a runtime puts the pooler: what it listens on, where the database is, and its files."""

    listen_address: str
    listen_port: int
    server_host: str
    server_port: int
    auth_file: str
    tls: Tls | None = None
    server_tls_sslmode: str = "prefer"
    server_tls_ca_file: str = ""
    """The CA the server's certificate is checked against (with server_tls_sslmode verify-full)."""
    prepared_statements: int = 0
    """max_prepared_statements (PgBouncer 1.21 and later): protocol-level prepared statements kept per
    server connection in transaction mode; 0 leaves the setting out, as 1.18 does not know it."""


def render(spec: types.DatabaseSpec, capacity: float, layout: Layout) -> str:
    """pgbouncer.ini for a database at `capacity` (settings PgBouncer 1.18 and later all read, and
    max_prepared_statements where the layout's PgBouncer has it)."""
    pool = sizing.pool_size(spec, capacity)
    server = f"host={layout.server_host} port={layout.server_port}"
    databases = {roles.APP_DATABASE: f"{server} dbname={roles.APP_DATABASE}"}
    if spec.superuser_access:
        size = min(SUPERUSER_POOL_SIZE, pool)
        databases["postgres"] = f"{server} dbname=postgres pool_size={size} max_db_connections={size}"
    settings: dict[str, str] = {
        "listen_addr": layout.listen_address,
        "listen_port": str(layout.listen_port),
        "unix_socket_dir": "",
        "auth_type": "scram-sha-256",
        "auth_file": layout.auth_file,
        "admin_users": ADMIN_USER,
        "stats_users": ADMIN_USER,
        "pool_mode": spec.pooling.mode.value,
        "max_client_conn": str(spec.pooling.max_client_connections),
        "default_pool_size": str(pool),
        "max_db_connections": str(pool),
        "min_pool_size": "0",  # a minimum pool would hold the database awake, and wake it when paused
        "reserve_pool_size": "0",
        "server_idle_timeout": str(server_idle_timeout(spec)),
        "server_lifetime": "3600",
        # A wake takes seconds, a failed one answers at once: try again soon, wait long enough.
        "server_login_retry": "1",
        "server_connect_timeout": "60",
        "query_wait_timeout": "120",
        "server_reset_query": "DISCARD ALL",
        "ignore_startup_parameters": "extra_float_digits",
        "application_name_add_host": "0",
        "log_connections": "1",
        "log_disconnections": "1",
        "log_pooler_errors": "1",
        "stats_period": "10",
        "syslog": "0",
        "server_tls_sslmode": layout.server_tls_sslmode,
    }
    if layout.server_tls_ca_file:
        settings["server_tls_ca_file"] = layout.server_tls_ca_file
    if layout.prepared_statements:
        settings["max_prepared_statements"] = str(layout.prepared_statements)
    if layout.tls is not None:
        settings |= {
            "client_tls_sslmode": "require" if spec.tls.required else "allow",
            "client_tls_cert_file": layout.tls.certificate,
            "client_tls_key_file": layout.tls.key,
            "client_tls_ca_file": layout.tls.authority,
            "client_tls_protocols": "tlsv1.2,tlsv1.3",
        }
    lines = ["; Managed by the serverless-db operator.", "[databases]"]
    lines += [f"{name} = {value}" for name, value in databases.items()]
    lines += ["", "[pgbouncer]", *(f"{name} = {value}" for name, value in settings.items())]
    return "\n".join(lines) + "\n"


POOL_SIZE_SETTINGS = ("default_pool_size", "max_db_connections")
"""What a resize changes: set on the console (`resize`), never by a reload."""


def needs_reload(before: str, after: str) -> bool:
    """Whether a running pooler must read its configuration again to go from `before` to `after`.

    Not for the pool size alone: a RELOAD drops the server connections still logging in, and
    PgBouncer then turns every waiting client away for server_login_retry, which a wake (when the
    size changes) would turn into refused clients.
    """

    return shape(before) != shape(after)


def shape(ini: str) -> str:
    """The configuration without the pool size: what a running pooler cannot take from its console."""
    return "\n".join(line for line in ini.splitlines() if line.split(" = ", 1)[0] not in POOL_SIZE_SETTINGS)


@dataclass(frozen=True)
class Secrets:
    """The logins the pooler checks: each role's SCRAM secret as the server stores it, and the
    operator's own console password (which PgBouncer keeps as a SCRAM secret of its own)."""

    verifiers: Mapping[str, str] = field(repr=False)
    admin_password: str = field(repr=False)


def auth_file(secrets: Secrets) -> str:
    """PgBouncer's auth_file: one `"user" "secret"` line per login."""
    entries = {**secrets.verifiers, ADMIN_USER: roles.role_verifier(secrets.admin_password)}
    return "".join(f'"{_quoted(user)}" "{_quoted(secret)}"\n' for user, secret in sorted(entries.items()))


def _quoted(value: str) -> str:
    return value.replace('"', '""')


def client_roles(spec: types.DatabaseSpec) -> tuple[str, ...]:
    """The roles clients may log in to the pooler as: the application role, and the superuser if allowed."""
    return (roles.APP_ROLE, roles.SUPERUSER_ROLE) if spec.superuser_access else (roles.APP_ROLE,)


# -- the admin console -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Console:
    """Where the operator reaches a pooler's admin console, and with which password."""

    host: str
    port: int
    password: str = field(repr=False)
    sslmode: str = "prefer"


@dataclass(frozen=True)
class Stats:
    """One reading of a pooler: clients and server connections now, and its totals since it started."""

    clients_active: int
    clients_waiting: int
    servers_active: int
    servers_idle: int
    max_wait_seconds: float
    transactions: int
    queries: int
    transaction_seconds: float
    query_seconds: float
    wait_seconds: float


def _connect(console: Console) -> psycopg.Connection[tuple[object, ...]]:
    # The console speaks the simple query protocol only: psycopg uses it for statements without
    # parameters, and autocommit keeps it from sending BEGIN.
    return psycopg.connect(
        host=console.host,
        port=console.port,
        user=ADMIN_USER,
        password=console.password,
        dbname=ADMIN_DATABASE,
        sslmode=console.sslmode,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        autocommit=True,
    )


def _rows(conn: psycopg.Connection[tuple[object, ...]], command: str) -> list[dict[str, object]]:
    cursor = conn.execute(command)
    names = [column.name for column in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _number(value: object) -> float:
    try:
        return float(str(value))
    except ValueError:
        return 0.0


def parse_stats(pools: Sequence[Mapping[str, object]], totals: Sequence[Mapping[str, object]]) -> Stats:
    """SHOW POOLS and SHOW STATS, summed over the pooler's databases and users (the console's own
    `pgbouncer` database is left out: it is the operator, not a client)."""
    pools = [p for p in pools if p.get("database") != ADMIN_DATABASE]
    totals = [t for t in totals if t.get("database") != ADMIN_DATABASE]

    def pool_sum(*columns: str) -> int:
        return int(sum(_number(p.get(c)) for p in pools for c in columns))

    def total(column: str) -> float:
        return sum(_number(t.get(column)) for t in totals)

    max_wait = max(
        (_number(p.get("maxwait")) + _number(p.get("maxwait_us")) / 1e6 for p in pools), default=0.0
    )
    return Stats(
        clients_active=pool_sum("cl_active"),
        clients_waiting=pool_sum("cl_waiting"),
        servers_active=pool_sum("sv_active"),
        servers_idle=pool_sum("sv_idle", "sv_used", "sv_tested", "sv_login"),
        max_wait_seconds=max_wait,
        transactions=int(total("total_xact_count")),
        queries=int(total("total_query_count")),
        transaction_seconds=total("total_xact_time") / 1e6,
        query_seconds=total("total_query_time") / 1e6,
        wait_seconds=total("total_wait_time") / 1e6,
    )


def _read(console: Console) -> Stats:
    with _connect(console) as conn:
        return parse_stats(_rows(conn, "SHOW POOLS"), _rows(conn, "SHOW STATS"))


async def read(console: Console) -> Stats:
    return await asyncio.to_thread(_read, console)


def _resize(console: Console, pool: int) -> None:
    with _connect(console) as conn:
        for name in POOL_SIZE_SETTINGS:
            conn.execute(f"SET {name} = {int(pool)}")


async def resize(console: Console, pool: int) -> None:
    """The pool size, in force at once for every pool: connections above it close as they come free."""
    await asyncio.to_thread(_resize, console, pool)


def _reload(console: Console) -> None:
    with _connect(console) as conn:
        conn.execute("RELOAD")


async def reload(console: Console) -> None:
    """Read the configuration and auth files again; connected clients stay."""
    await asyncio.to_thread(_reload, console)
