"""The operator's own SQL on a database: a tagged session, and sizing settings through ALTER SYSTEM.

Shared by the runtimes: locally the server is on 127.0.0.1, in a cluster on its pod's address.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
import psycopg.sql

from controller.api import types

USER = "postgres"
CONNECT_TIMEOUT_SECONDS = 5


def connect(
    host: str, port: int, password: str, *, dbname: str = "postgres"
) -> psycopg.Connection[tuple[object, ...]]:
    """A session of the operator's own, tagged so it never counts as a client."""
    return psycopg.connect(
        host=host,
        port=port,
        user=USER,
        password=password,
        dbname=dbname,
        application_name=types.MONITOR_APPLICATION,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        autocommit=True,
    )


def alter_system(
    host: str, port: int, password: str, settings: Mapping[str, str], *, reload: bool = True
) -> dict[str, str]:
    """Set reloadable settings through ALTER SYSTEM and reload; returns those whose value changed.

    Every setting is written, changed or not, so postgresql.auto.conf always holds the whole size.
    Without `reload` the values wait there for the next start.
    """
    with connect(host, port, password) as conn:
        rows = conn.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)", [list(settings)]
        ).fetchall()
        current = {str(row[0]): row[1] for row in rows}
        changed = {k: v for k, v in settings.items() if _normalized(current.get(k)) != _normalized(v)}
        for name, value in settings.items():
            conn.execute(
                psycopg.sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    psycopg.sql.Identifier(name), psycopg.sql.Literal(value)
                )
            )
        if changed and reload:
            conn.execute("SELECT pg_reload_conf()")
    return changed


def _normalized(value: object) -> str:
    return str(value).strip().lower().replace(" ", "")
