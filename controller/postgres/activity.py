"""What counts as a client session, in SQL, for every source that asks Postgres directly.

A session counts unless it is the operator's own (tagged by application_name), or it belongs to an
ignored application (exporters, pooler minimum pools) and is not inside a transaction: an ignored
application's session `idle in transaction` holds locks and snapshots, so it is activity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controller.api import types

ACTIVITY_SQL = """
SELECT
    count(*) FILTER (WHERE counted) AS client_sessions,
    count(*) FILTER (WHERE counted AND wait_event_type IN ('Lock', 'IO', 'LWLock')) AS waiting_sessions,
    (SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database) AS transactions,
    (SELECT sum(sessions) FROM pg_stat_database) AS sessions_started
FROM (
    SELECT wait_event_type,
           application_name <> %(monitor)s
           AND (application_name <> ALL(%(ignored)s)
                OR state IN ('idle in transaction', 'idle in transaction (aborted)')) AS counted
    FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
) AS activity
"""
"""One statement (one transaction of our own per reading, subtracted from the rate)."""

MONITOR_TRANSACTIONS_PER_READING = 1


@dataclass(frozen=True)
class Activity:
    client_sessions: int
    waiting_sessions: int
    transactions: int
    """Committed and rolled back transactions since the statistics were reset."""
    sessions_started: int
    """Sessions ever started (PostgreSQL 14+), to see clients that came and went between readings."""


def parameters(ignored_applications: Sequence[str]) -> dict[str, object]:
    return {"monitor": types.MONITOR_APPLICATION, "ignored": list(ignored_applications)}


def parse(row: tuple[object, ...] | None) -> Activity:
    if row is None:
        return Activity(0, 0, 0, 0)
    client, waiting, transactions, started = row
    return Activity(
        int(str(client or 0)), int(str(waiting or 0)), int(str(transactions or 0)), int(str(started or 0))
    )
