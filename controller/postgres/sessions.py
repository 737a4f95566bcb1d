"""The operator's own sessions on a database: tagged, so they never count as clients, and counted.

A reading of Postgres's statistics sees every session that started since the one before; only those
the operator did not open itself are a client that came and went. Every session of the operator's,
in either runtime (a reading, a resize's ALTER SYSTEM, the settings a stop leaves for the next wake),
is opened here, so the count is whole.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
import psycopg.sql

from controller.api import types

USER = "postgres"
CONNECT_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class Address:
    """Where the operator reaches a database's Postgres, and with which password."""

    host: str
    port: int
    password: str = field(repr=False)


class OperatorSessions:
    """Opens the operator's sessions and counts them per database key."""

    def __init__(self) -> None:
        self._opened: collections.Counter[str] = collections.Counter()

    def opened(self, key: str) -> int:
        """Sessions opened on this database so far (a counter: compare two readings)."""
        return self._opened[key]

    def _parameters(self, address: Address, dbname: str = "postgres") -> dict[str, object]:
        return {
            "host": address.host,
            "port": address.port,
            "user": USER,
            "password": address.password,
            "dbname": dbname,
            "application_name": types.MONITOR_APPLICATION,
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "autocommit": True,
        }

    def connect(
        self, key: str, address: Address, *, dbname: str = "postgres"
    ) -> psycopg.Connection[tuple[object, ...]]:
        self._opened[key] += 1
        return psycopg.connect(**self._parameters(address, dbname))  # type: ignore[arg-type]

    async def connect_async(self, key: str, address: Address) -> psycopg.AsyncConnection[tuple[object, ...]]:
        self._opened[key] += 1
        return await psycopg.AsyncConnection.connect(**self._parameters(address))  # type: ignore[arg-type]

    async def alter_system(
        self, key: str, address: Address, settings: Mapping[str, str], *, reload: bool
    ) -> dict[str, str]:
        """ALTER SYSTEM for each setting, then a reload if any changed; returns those that changed.

        Every setting is written, changed or not, so postgresql.auto.conf always holds a whole size.
        Without `reload` the values wait there for the next start.
        """
        return await asyncio.to_thread(self._alter_system, key, address, settings, reload)

    def _alter_system(
        self, key: str, address: Address, settings: Mapping[str, str], reload: bool
    ) -> dict[str, str]:
        with self.connect(key, address) as conn:
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

    async def reload(self, key: str, address: Address) -> None:
        """Have the server read its configuration files again (pg_ident.conf included)."""

        def run() -> None:
            with self.connect(key, address) as conn:
                conn.execute("SELECT pg_reload_conf()")

        await asyncio.to_thread(run)

    def forget(self, key: str) -> None:
        """A deleted database: its count goes (a new one of the same name starts from zero)."""
        self._opened.pop(key, None)


def _normalized(value: object) -> str:
    return str(value).strip().lower().replace(" ", "")
