"""A client's session on its database's Postgres, as the gateway runs `/sql` queries on it.

psycopg opens the session (so Postgres authenticates the client's own user and password, by
whatever method its pg_hba asks) and cancels a query; the queries themselves go through libpq's
own interface (`psycopg.pq`), because the gateway needs what psycopg's cursors hide: the extended
protocol even without parameters (one statement per query, as Neon runs them), results in chunks
(so a response that grows past its cap is stopped while it is read, not after libpq buffered all of
it), every field of a RowDescription and of an ErrorResponse, and values as Postgres's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass

import psycopg
from psycopg import pq

from controller.activator.proxy import Upstream
from controller.gateway import request, results
from controller.gateway.reach import PostgresTls

CHUNK_ROWS = 256
"""Rows libpq hands over at a time: the response cap is checked between chunks."""
CANCEL_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10
UNABLE_TO_CONNECT = "08001"
"""sqlclient_unable_to_establish_sqlconnection: libpq gives no SQLSTATE for a failed connect."""
QUERY_CANCELED = "57014"
RESET = b"DISCARD ALL"
_OPENS_A_TRANSACTION = ("BEGIN", "START TRANSACTION")
ROW_OVERHEAD = 2
VALUE_OVERHEAD = 4
"""JSON's brackets, quotes and commas around each row and value: the running size is an upper bound."""

_F = pq.DiagnosticField
_ERROR_FIELDS = {
    "severity": _F.SEVERITY_NONLOCALIZED,
    "code": _F.SQLSTATE,
    "detail": _F.MESSAGE_DETAIL,
    "hint": _F.MESSAGE_HINT,
    "position": _F.STATEMENT_POSITION,
    "internalPosition": _F.INTERNAL_POSITION,
    "internalQuery": _F.INTERNAL_QUERY,
    "where": _F.CONTEXT,
    "schema": _F.SCHEMA_NAME,
    "table": _F.TABLE_NAME,
    "column": _F.COLUMN_NAME,
    "dataType": _F.DATATYPE_NAME,
    "constraint": _F.CONSTRAINT_NAME,
    "file": _F.SOURCE_FILE,
    "line": _F.SOURCE_LINE,
    "routine": _F.SOURCE_FUNCTION,
}
_WHERE_LIBPQ_CONNECTED = re.compile(r"^connection (to server at|failed:) [^\n]*?(failed: |: )", re.DOTALL)


class QueryError(Exception):
    """Postgres refused a statement: its ErrorResponse, field by field."""

    def __init__(self, message: str, fields: dict[str, str | None]) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class ResponseTooLargeError(Exception):
    pass


class StatementTimeoutError(Exception):
    pass


@dataclass
class Budget:
    """What is left of the response cap for the rest of one request."""

    remaining: int

    def spend(self, size: int) -> None:
        self.remaining -= size
        if self.remaining < 0:
            raise ResponseTooLargeError


class Session:
    """One Postgres session, used by one request at a time."""

    def __init__(self, connection: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        self.connection = connection
        self.broken = False
        """Interrupted mid-query or lost: never reused."""
        self.resetting = False
        """A `DISCARD ALL` went out behind the last statement, in the same write; its answer is unread
        until the session is next taken (`reset`)."""

    @classmethod
    async def open(cls, upstream: Upstream, credentials: request.Credentials, tls: PostgresTls) -> Session:
        try:
            connection = await psycopg.AsyncConnection.connect(
                tls.conninfo(),
                host=upstream.host,
                port=upstream.port,
                user=credentials.user,
                password=credentials.secret,  # a token goes to the identity endpoint, which asks for it
                dbname=credentials.database,
                application_name=credentials.application_name,
                client_encoding="UTF8",
                connect_timeout=CONNECT_TIMEOUT,
                gssencmode="disable",
                autocommit=True,
            )
        except psycopg.OperationalError as error:
            raise request.RequestError(
                f"could not connect to the database: {_reason(str(error))}",
                code=UNABLE_TO_CONNECT,
                reason="connect_failed",
            ) from None
        return cls(connection)

    @property
    def idle(self) -> bool:
        """Ready for another request: connected, no transaction left open, and not closed by the
        server meanwhile (reading what it sent, without waiting, finds a termination)."""
        pgconn = self.connection.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError:
            self.broken = True
        return (
            not self.broken
            and pgconn.status == pq.ConnStatus.OK
            and pgconn.transaction_status == pq.TransactionStatus.IDLE
        )

    async def run(
        self, query: request.Query, *, budget: Budget, timeout: float, last: bool = False
    ) -> results.Result:
        """Run one statement; a Postgres error is a QueryError and leaves the session usable.

        `last`: the request's last statement. The reset (`DISCARD ALL`) is pipelined behind it, in
        the same write and after its own Sync, so Postgres runs it whatever the statement did, with
        no round trip of its own; `reset` then reads its answer.

        Past `timeout`, or past the budget, or when the caller is cancelled (the client went away),
        the query is cancelled on the server and the session is closed rather than drained.
        """
        try:
            async with asyncio.timeout(timeout):
                return await self._run(query, budget, last=last)
        except TimeoutError:
            await self._abandon()
            raise StatementTimeoutError from None
        except (ResponseTooLargeError, asyncio.CancelledError, psycopg.Error):
            await self._abandon()
            raise

    async def _run(self, query: request.Query, budget: Budget, *, last: bool) -> results.Result:
        pgconn = self.connection.pgconn
        if last:
            pgconn.enter_pipeline_mode()
        pgconn.send_query_params(
            query.text.encode(),
            [None if p is None else p.encode() for p in query.params],
            result_format=pq.Format.TEXT,
        )
        if last:
            pgconn.pipeline_sync()
            pgconn.send_query_params(RESET, None, result_format=pq.Format.TEXT)
            pgconn.pipeline_sync()
            self.resetting = True
        # In a pipeline this applies to the statement whose results come first: the client's.
        pgconn.set_chunked_rows_mode(CHUNK_ROWS)
        await self._flush()
        fields: list[results.Field] = []
        rows: list[list[str | None]] = []
        status = ""
        failure: QueryError | None = None
        while (result := await self._next()) is not None:
            state = result.status
            if state in (pq.ExecStatus.TUPLES_CHUNK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
                if not fields and result.nfields:
                    fields = _fields(result)
                rows += _rows(result, budget)
                if result.command_status:  # in chunked mode, on the last chunk: not the final result
                    status = result.command_status.decode()
            elif state == pq.ExecStatus.FATAL_ERROR:
                failure = _error(result)
            # EMPTY_QUERY: an empty statement has no fields, rows or tag.
        if last:
            await self._synced()
            if status in _OPENS_A_TRANSACTION:
                # The reset behind it fails in the transaction it left open: closed now, never kept.
                self.broken = True
        if failure is not None:
            raise failure
        return results.Result(fields, rows, status)

    async def _synced(self) -> None:
        """Past a pipeline's Sync (what follows is the next statement's)."""
        result = await self._next()
        if result is None or result.status != pq.ExecStatus.PIPELINE_SYNC:
            raise psycopg.OperationalError("the pipeline lost its Sync")

    async def _flush(self) -> None:
        pgconn = self.connection.pgconn
        while pgconn.flush():
            await _ready(pgconn.socket, write=True)

    async def _next(self) -> pq.abc.PGresult | None:
        pgconn = self.connection.pgconn
        while pgconn.is_busy():
            await _ready(pgconn.socket, write=False)
            pgconn.consume_input()
        return pgconn.get_result()

    async def _abandon(self) -> None:
        """Stop the server's work (a closed socket alone goes unnoticed by a query that sends nothing)."""
        self.broken = True
        with contextlib.suppress(psycopg.Error, OSError):
            await asyncio.shield(self.connection.cancel_safe(timeout=CANCEL_TIMEOUT))
        await self.close()

    async def reset(self) -> None:
        """Make sure the last request's session state (settings, temporary tables, prepared
        statements, advisory locks, LISTENs) is gone before the next request gets the session: read
        the answer of the `DISCARD ALL` pipelined behind its last statement (Postgres ran it right
        after that statement, so nothing was held meanwhile), or run one when none was. A reset that
        fails leaves the session broken, so it is closed, never reused."""
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                if not self.resetting:
                    await self._run(request.Query(RESET.decode()), Budget(1 << 20), last=False)
                    return
                self.resetting = False
                self.connection.pgconn.consume_input()  # usually all here: no wait on the socket
                result = await self._next()
                while (extra := await self._next()) is not None:
                    result = extra
                await self._synced()
                self.connection.pgconn.exit_pipeline_mode()
                if result is None or result.status != pq.ExecStatus.COMMAND_OK:
                    self.broken = True
        except (QueryError, TimeoutError, psycopg.Error):
            self.broken = True

    async def close(self) -> None:
        self.broken = True
        with contextlib.suppress(psycopg.Error, OSError):
            await self.connection.close()


async def _ready(fd: int, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


def _fields(result: pq.abc.PGresult) -> list[results.Field]:
    return [
        results.Field(
            name=(result.fname(i) or b"").decode(),
            type_oid=result.ftype(i),
            table_oid=result.ftable(i),
            column=result.ftablecol(i),
            size=result.fsize(i),
            modifier=result.fmod(i),
        )
        for i in range(result.nfields)
    ]


def _rows(result: pq.abc.PGresult, budget: Budget) -> list[list[str | None]]:
    rows = []
    columns = range(result.nfields)
    for r in range(result.ntuples):
        row: list[str | None] = []
        size = ROW_OVERHEAD
        for c in columns:
            value = result.get_value(r, c)
            if value is None:
                row.append(None)
                size += VALUE_OVERHEAD
            else:
                row.append(value.decode())
                size += len(value) + VALUE_OVERHEAD
        budget.spend(size)
        rows.append(row)
    return rows


def _error(result: pq.abc.PGresult) -> QueryError:
    def text(field: pq.DiagnosticField) -> str | None:
        value = result.error_field(field)
        return None if value is None else value.decode(errors="replace")

    message = text(_F.MESSAGE_PRIMARY) or (result.error_message or b"").decode(errors="replace").strip()
    return QueryError(message, {name: text(field) for name, field in _ERROR_FIELDS.items()})


def _reason(message: str) -> str:
    """libpq's reason without its preamble, which names the server's internal address."""
    return _WHERE_LIBPQ_CONNECTED.sub("", message.strip()).strip()


def broken_statement(error: psycopg.Error) -> str:
    """What to tell a client whose statement lost its connection."""
    return f"the connection to the database was lost: {_reason(str(error))}"
