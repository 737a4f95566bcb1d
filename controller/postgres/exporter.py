"""The postgres_exporter sidecar of a database pod: its flags, and a query file made from the same
SQL (`activity`) that says who is a client for every source that asks Postgres directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import psycopg.sql
import yaml

from controller.api import types
from controller.postgres import activity

QUERY_NAMESPACE = "pg_sdb"
"""The exporter names each column `<namespace>_<column>`: pg_sdb_client_sessions, and so on."""

COLUMNS: Mapping[str, tuple[str, str]] = {
    "client_sessions": ("GAUGE", "Sessions that count as client activity (controller.postgres.activity)."),
    "waiting_sessions": ("GAUGE", "Client sessions waiting on a lock or on I/O."),
    "transactions": ("COUNTER", "Transactions committed or rolled back, in every database."),
    "sessions_started": ("COUNTER", "Sessions ever started, in every database (PostgreSQL 14+)."),
}
"""activity.ACTIVITY_SQL's columns, with how the exporter should type each."""

APPLICATION = types.MONITOR_APPLICATION
"""The sidecar's sessions carry the operator's own application_name (in its DSN): they never count."""

ARGS = (
    "--disable-default-metrics",
    "--disable-settings-metrics",
    "--no-collector.database",
    "--no-collector.bgwriter",
)
"""postgres_exporter 0.11's flags (Debian 12's release; later ones name their collectors differently)
for a sidecar that runs our query file and nothing else.

Its own statements are then a known count per scrape (subtracted from the transaction rate), and it
keeps one persistent session, so it starts no session of its own per scrape. Later releases open a
fresh session for every scrape whatever the flags: they need `exporter_sessions_per_scrape=1` and
their own count of statements, and then every Prometheus replica scraping the sidecar adds its
scrapes to the counters the others read.
"""
TRANSACTIONS_PER_SCRAPE = 3
"""Statements the sidecar runs per scrape with ARGS: a ping, `SELECT version()`, our query."""
SESSIONS_PER_SCRAPE = 0
"""Sessions the sidecar starts per scrape with ARGS: none, its one session stays open."""


def metric_name(column: str) -> str:
    return f"{QUERY_NAMESPACE}_{column}"


def queries(ignored_applications: Sequence[str]) -> str:
    """postgres_exporter's `--extend.query-path` file for a database, from activity.ACTIVITY_SQL.

    The exporter cannot pass parameters, so each `%(name)s` becomes the literal of its value.
    """
    parameters = activity.parameters(ignored_applications)

    def literal(match: re.Match[str]) -> str:
        if match.group(0) == "%%":  # psycopg's escaped percent sign
            return "%"
        return psycopg.sql.Literal(parameters[match.group(1)]).as_string(None)

    query = re.sub(r"%\((\w+)\)s|%%", literal, activity.ACTIVITY_SQL)
    document = {
        QUERY_NAMESPACE: {
            "query": query.strip() + "\n",
            "master": True,  # counters are server-wide: run once even with --auto-discover-databases
            "metrics": [
                {column: {"usage": usage, "description": description}}
                for column, (usage, description) in COLUMNS.items()
            ],
        }
    }
    return yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=1000)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings as `|` blocks, so the query in a ConfigMap reads as SQL."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)
