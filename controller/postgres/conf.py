"""Configuration files as Postgres reads them: one `name = 'value'` line per setting."""

from __future__ import annotations

from collections.abc import Mapping


def quote(value: str) -> str:
    """A configuration-file string literal: Postgres reads backslash escapes in it, so both escape."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def render(settings: Mapping[str, str], *, header: str) -> str:
    """The file for `settings`, in their order, under a comment line (`header`)."""
    lines = [f"# {header}", *(f"{name} = {quote(value)}" for name, value in settings.items())]
    return "\n".join(lines) + "\n"
