"""What a client sends to `/sql`, read without I/O: the connection string, the headers and the body.

Which database a request is for comes from the connection string's host, in one scheme for both
runtimes: `<name>.<namespace>`, optionally followed by `.svc` and a cluster domain, so that the
Service name a client uses in a cluster (`orders.shop.svc`) also names the database to the gateway.
The port, and every query parameter but `application_name`, are ignored: the gateway decides where
the database is, and only Postgres decides whether the user and password let the client in.

Nothing here echoes the connection string back: it carries a password.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

AUTHORIZATION = "Authorization"
CONNECTION_STRING = "Neon-Connection-String"
RAW_TEXT_OUTPUT = "Neon-Raw-Text-Output"
ARRAY_MODE = "Neon-Array-Mode"
BATCH_ISOLATION_LEVEL = "Neon-Batch-Isolation-Level"
BATCH_READ_ONLY = "Neon-Batch-Read-Only"
BATCH_DEFERRABLE = "Neon-Batch-Deferrable"

ISOLATION_LEVELS = {
    "ReadUncommitted": "READ UNCOMMITTED",
    "ReadCommitted": "READ COMMITTED",
    "RepeatableRead": "REPEATABLE READ",
    "Serializable": "SERIALIZABLE",
}
CONNECTION_STRINGS_REMEMBERED = 1024
"""Connection strings whose reading is remembered (each is a few hundred bytes held in memory, as
the sessions kept for them hold their passwords too)."""
MAX_QUERIES = 1000
"""Statements in one batch: each is a round trip inside one transaction, so a bound keeps it short."""

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
NAMING = "<name>.<namespace>, or the Service name <name>.<namespace>.svc"


class RequestError(Exception):
    """A request the gateway refuses: the HTTP status, the message, and a SQLSTATE where one fits."""

    def __init__(
        self, message: str, *, status: int = 400, code: str = "", reason: str = "bad_request"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.reason = reason
        """Why, as a bounded word for the refusal counter (never a database name or a value)."""


@dataclass(frozen=True)
class Credentials:
    """Who the client says it is, and which database it names."""

    key: str
    """The database, `namespace/name`."""
    user: str
    database: str
    password: str = field(repr=False)
    application_name: str = ""
    token: str = field(default="", repr=False)
    """An `Authorization: Bearer` token (the driver's `authToken`): the login is the token's, and
    the connection string's password, if any, is not used."""

    @property
    def secret(self) -> str:
        """What proves the login: the token when there is one, else the password."""
        return self.token or self.password


@dataclass(frozen=True)
class Query:
    text: str
    params: tuple[str | None, ...] = ()
    array_mode: bool | None = None
    """The body's own choice for this query (Neon's extension), else the request's header decides."""


@dataclass(frozen=True)
class Batch:
    """Queries run in one transaction, with the driver's transaction options."""

    queries: tuple[Query, ...]
    isolation_level: str | None = None
    read_only: bool = False
    deferrable: bool = False

    def begin(self) -> str:
        words = ["BEGIN"]
        if self.isolation_level is not None:
            words += ["ISOLATION LEVEL", ISOLATION_LEVELS[self.isolation_level]]
        if self.read_only:
            words.append("READ ONLY")
        if self.deferrable:
            words.append("DEFERRABLE")
        return " ".join(words)


@dataclass(frozen=True)
class Output:
    """How results are written: Postgres's text for every value (what the driver sends), rows as arrays."""

    raw_text: bool
    array_mode: bool


def database_key(host: str) -> str | None:
    """`namespace/name` from a host in the gateway's scheme, or None when the host is not in it."""
    labels = host.lower().rstrip(".").split(".")
    if len(labels) < 2 or (len(labels) > 2 and labels[2] != "svc"):
        return None
    name, namespace = labels[0], labels[1]
    if not (_LABEL.fullmatch(name) and _LABEL.fullmatch(namespace)):
        return None
    return f"{namespace}/{name}"


def authenticate(headers: Mapping[str, str]) -> Credentials:
    """Who a request says it is: the one place its credentials are read. A password is Postgres's to
    check, when a session is opened with it; a bearer token is the identity check's (a kept session
    is only ever reused for the same password or token)."""
    found = credentials(headers.get(CONNECTION_STRING))
    if AUTHORIZATION not in headers:
        return found
    return dataclasses.replace(found, password="", token=bearer(headers[AUTHORIZATION]))


def bearer(value: str) -> str:
    """The token of an `Authorization: Bearer TOKEN` header (what the driver sends for `authToken`);
    a refusal never repeats the header."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestError(
            "the Authorization header must be `Bearer <token>`",
            code="28000",
            reason="unsupported_authentication",
        )
    return token.strip()


def credentials(value: str | None) -> Credentials:
    """The `Neon-Connection-String` header, read; a refusal never repeats it (it holds a password)."""
    if not value:
        raise RequestError(f"the {CONNECTION_STRING} header is missing")
    return _read_connection_string(value)


@functools.lru_cache(maxsize=CONNECTION_STRINGS_REMEMBERED)
def _read_connection_string(value: str) -> Credentials:
    """Remembered: a client sends the same header with every request, and reading a URL costs more
    than the rest of a request's checks. Only the ones read well are kept (a refusal raises)."""
    try:
        url = urlsplit(value)
        host = url.hostname
        username, password = url.username, url.password
    except ValueError:
        raise RequestError(f"the {CONNECTION_STRING} header is not a valid URL") from None
    if url.scheme not in ("postgres", "postgresql"):
        raise RequestError(f"the {CONNECTION_STRING} header must be a postgres:// or postgresql:// URL")
    key = database_key(host or "")
    if key is None:
        raise RequestError(f"the connection string's host must name a database: {NAMING}", code="3D000")
    user = unquote(username or "")
    if not user:
        raise RequestError("the connection string has no user")
    database = unquote(url.path.removeprefix("/"))
    if not database or "/" in database:
        raise RequestError("the connection string has no database name in its path")
    application = parse_qs(url.query).get("application_name", [""])[-1]
    return Credentials(key, user, database, unquote(password or ""), application)


def flag(headers: Mapping[str, str], name: str) -> bool:
    """A Neon header flag is on only when it says exactly `true`."""
    return headers.get(name) == "true"


def output(headers: Mapping[str, str]) -> Output:
    return Output(raw_text=flag(headers, RAW_TEXT_OUTPUT), array_mode=flag(headers, ARRAY_MODE))


def work(body: bytes, headers: Mapping[str, str]) -> Query | Batch:
    """The body (`{query, params}` or `{queries: [...]}`, whatever its content type says) and the batch
    headers, checked."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise RequestError("the request body is not JSON") from None
    if not isinstance(document, dict):
        raise RequestError("the request body must be a JSON object with `query` or `queries`")
    if "queries" in document:
        queries = document["queries"]
        if not isinstance(queries, list) or not queries:
            raise RequestError("`queries` must be a non-empty array of {query, params} objects")
        if len(queries) > MAX_QUERIES:
            raise RequestError(f"a batch holds at most {MAX_QUERIES} queries (this one has {len(queries)})")
        level = headers.get(BATCH_ISOLATION_LEVEL)
        if level is not None and level not in ISOLATION_LEVELS:
            raise RequestError(
                f"invalid isolation level in {BATCH_ISOLATION_LEVEL}: one of {', '.join(ISOLATION_LEVELS)}"
            )
        return Batch(
            tuple(_query(q, f"queries[{i}]") for i, q in enumerate(queries)),
            isolation_level=level,
            read_only=flag(headers, BATCH_READ_ONLY),
            deferrable=flag(headers, BATCH_DEFERRABLE),
        )
    return _query(document, "the body")


def _query(document: Any, where: str) -> Query:
    if not isinstance(document, dict) or not isinstance(document.get("query"), str):
        raise RequestError(f"{where} must be an object with a `query` string")
    params = document.get("params", [])
    if not isinstance(params, list):
        raise RequestError(f"{where}: `params` must be an array")
    array_mode = document.get("arrayMode")
    if array_mode is not None and not isinstance(array_mode, bool):
        raise RequestError(f"{where}: `arrayMode` must be true or false")
    return Query(document["query"], tuple(parameter(p) for p in params), array_mode)


def parameter(value: Any) -> str | None:
    """A JSON parameter as Postgres text: the driver sends strings and nulls; numbers, booleans, arrays
    and objects (which other clients send) become the text Postgres would parse them from."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, list):
        return "{" + ",".join(_element(v) for v in value) + "}"
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "{" + ",".join(_element(v) for v in value) + "}"
    text = parameter(value) or ""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
