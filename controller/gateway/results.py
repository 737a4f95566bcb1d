"""What `/sql` answers, in the shape `@neondatabase/serverless` reads, built without I/O.

A result is `{command, rowCount, rows, fields, rowAsArray}`: every value is the text Postgres sends
in its text format (the driver parses each one by the field's `dataTypeID`, so a boolean is "t",
never `true`). An error is the JSON of a Postgres ErrorResponse, every key present, with HTTP 400,
the only status the driver reads a SQLSTATE from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ERROR_FIELDS = (
    "severity",
    "code",
    "detail",
    "hint",
    "position",
    "internalPosition",
    "internalQuery",
    "where",
    "schema",
    "table",
    "column",
    "dataType",
    "constraint",
    "file",
    "line",
    "routine",
)
"""Beside `message`, what the driver copies from a 400 body onto its NeonDbError."""

BOOL, INT2, INT4, OID, FLOAT4, FLOAT8, JSON, JSONB = 16, 21, 23, 26, 700, 701, 114, 3802


@dataclass(frozen=True)
class Field:
    name: str
    type_oid: int
    table_oid: int
    column: int
    size: int
    modifier: int

    def encode(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataTypeID": self.type_oid,
            "tableID": self.table_oid,
            "columnID": self.column,
            "dataTypeSize": self.size,
            "dataTypeModifier": self.modifier,
            "format": "text",
        }


@dataclass(frozen=True)
class Result:
    """One statement's outcome, as Postgres sent it (values in its text format)."""

    fields: Sequence[Field]
    rows: Sequence[Sequence[str | None]]
    status: str
    """The command tag, e.g. `INSERT 0 5`."""


def command(status: str) -> tuple[str, int | None]:
    """The tag's verb, and its count when it has one (`INSERT 0 5` is 5; `BEGIN` has none)."""
    words = status.split()
    if not words:
        return "", None
    count = int(words[-1]) if len(words) > 1 and words[-1].isdigit() else None
    return words[0], count


def encode(result: Result, *, array_mode: bool, raw_text: bool) -> dict[str, Any]:
    verb, count = command(result.status)
    rows: list[Any]
    if raw_text:
        rows = [list(row) for row in result.rows]
    else:
        rows = [
            [_json_value(v, f.type_oid) for v, f in zip(row, result.fields, strict=True)]
            for row in result.rows
        ]
    if not array_mode:
        names = [f.name for f in result.fields]
        rows = [dict(zip(names, row, strict=True)) for row in rows]
    return {
        "command": verb,
        "rowCount": count,
        "rows": rows,
        "fields": [f.encode() for f in result.fields],
        "rowAsArray": array_mode,
    }


def _json_value(text: str | None, type_oid: int) -> Any:
    """Without raw text output, as Neon: booleans, small integers, floats and JSON as JSON; the rest
    (int8, numeric, times, arrays) stays text, since JSON cannot hold them exactly."""
    if text is None:
        return None
    if type_oid == BOOL:
        return text == "t"
    if type_oid in (INT2, INT4, OID):
        return int(text)
    if type_oid in (FLOAT4, FLOAT8):
        number = float(text)
        return number if math.isfinite(number) else text
    if type_oid in (JSON, JSONB):
        return json.loads(text)
    return text


def error(message: str, fields: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """The 400 body: `message` and every field of ERROR_FIELDS (null where Postgres sent none)."""
    given = fields or {}
    return {"message": message, **{name: given.get(name) for name in ERROR_FIELDS}}


def dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
