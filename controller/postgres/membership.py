"""A group role's direct members made a wanted set, as pg_hba.conf's `+group` rules read them:
what decides a role's way in (plaintext allowed, a certificate required) without pg_hba changing."""

from __future__ import annotations

from collections.abc import Set

import psycopg.sql


def changes(
    group: str, *, wanted: Set[str], members: Set[str]
) -> tuple[list[psycopg.sql.Composed], list[psycopg.sql.Composed]]:
    """The GRANTs that make each wanted role a member, and the REVOKEs that take each other member
    out, each in name order."""
    sql, ident = psycopg.sql.SQL, psycopg.sql.Identifier
    grants = [sql("GRANT {} TO {}").format(ident(group), ident(role)) for role in sorted(wanted - members)]
    revokes = [
        sql("REVOKE {} FROM {}").format(ident(group), ident(role)) for role in sorted(members - wanted)
    ]
    return grants, revokes
