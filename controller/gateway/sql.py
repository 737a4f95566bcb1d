"""`POST /sql`: one query, or a batch in one transaction, on a session kept per role.

A request is read whole (within its cap) and checked before anything is woken or connected; the
statements then run on a kept session of the client's role, or a new one that Postgres
authenticates (for a bearer token: checked here, then logged in by the database's identity
endpoint). A client that goes away mid-query has its query cancelled on the server.
"""

from __future__ import annotations

import asyncio

import psycopg
from aiohttp import web

from controller.gateway import request as req
from controller.gateway import results, upstream
from controller.gateway.identity import TokenLogins
from controller.gateway.pool import Pool, Role
from controller.gateway.reach import Door, Reach
from controller.gateway.upstream import (
    QUERY_CANCELED,
    Budget,
    QueryError,
    ResponseTooLargeError,
    Session,
    StatementTimeoutError,
)

CORS = {"Access-Control-Allow-Origin": "*"}
PREFLIGHT = {
    **CORS,
    "Allow": "OPTIONS, POST",
    "Access-Control-Allow-Methods": "OPTIONS, POST",
    "Access-Control-Allow-Headers": ", ".join(
        [
            "Authorization",
            "Content-Type",
            req.CONNECTION_STRING,
            req.RAW_TEXT_OUTPUT,
            req.ARRAY_MODE,
            req.BATCH_ISOLATION_LEVEL,
            req.BATCH_READ_ONLY,
            req.BATCH_DEFERRABLE,
        ]
    ),
    "Access-Control-Max-Age": "86400",
}
CONNECTION_FAILURE = "08006"


class Sql:
    def __init__(self, reach: Reach, pool: Pool, logins: TokenLogins | None = None) -> None:
        self.reach = reach
        self.pool = pool
        self.logins = logins or TokenLogins(None)
        self.limits = reach.limits
        self.observer = reach.observer

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(headers=PREFLIGHT)

    async def handle(self, request: web.Request) -> web.Response:
        started = asyncio.get_running_loop().time()
        try:
            body = await self._body(request)
            credentials = req.authenticate(request.headers)
            work = req.work(body, request.headers)
            await self.reach.check(credentials.key, peer(request))
            if credentials.token:
                await self.logins.check(credentials, peer(request)[0], secure=request.secure)
            payload, status = await self._serve(credentials, work, req.output(request.headers))
        except req.RequestError as error:
            self.observer.gateway_refused(Door.HTTP, error.reason)
            fields = {"code": error.code} if error.code else {}
            return _json(results.dumps(results.error(error.message, fields)), error.status)
        except asyncio.CancelledError:
            self.observer.gateway_refused(Door.HTTP, "client_gone")
            raise
        self.observer.gateway_served(credentials.key, Door.HTTP, asyncio.get_running_loop().time() - started)
        return _json(payload, status)

    async def _body(self, request: web.Request) -> bytes:
        limit = self.limits.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        body = bytearray()
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
        return bytes(body)

    async def _serve(
        self, credentials: req.Credentials, work: req.Query | req.Batch, output: req.Output
    ) -> tuple[bytes, int]:
        """The answer's body and status: 200 with results, or 400 with the error Postgres gave."""
        role = Role.of(credentials)
        async with self.pool.slot(credentials.key):
            session = await self._session(role, credentials)
            try:
                document = await self._run(session, work, output)
            except QueryError as error:
                return results.dumps(results.error(error.message, error.fields)), 400
            except ResponseTooLargeError:
                raise req.RequestError(
                    f"response is too large (max is {self.limits.max_response_bytes} bytes)",
                    status=507,
                    reason="response_too_large",
                ) from None
            except StatementTimeoutError:
                raise req.RequestError(
                    "canceling statement due to statement timeout "
                    f"(the gateway allows {self.limits.statement_timeout:g}s per statement)",
                    code=QUERY_CANCELED,
                    reason="statement_timeout",
                ) from None
            except psycopg.Error as error:
                raise req.RequestError(
                    upstream.broken_statement(error),
                    code=CONNECTION_FAILURE,
                    reason="connection_lost",
                ) from None
            finally:
                self.pool.give(role, session)
        payload = results.dumps(document)
        if len(payload) > self.limits.max_response_bytes:
            raise req.RequestError(
                f"response is too large (max is {self.limits.max_response_bytes} bytes)",
                status=507,
                reason="response_too_large",
            )
        return payload, 200

    async def _session(self, role: Role, credentials: req.Credentials) -> Session:
        if self.reach.backend.awake(credentials.key):
            kept = await self.pool.take(role)
            if kept is not None:
                return kept
        else:
            self.pool.forget(credentials.key)
        address = await self.reach.upstream(credentials.key, Door.HTTP)
        if credentials.token:
            return await Session.open(self.logins.address(credentials.key), credentials, self.logins.tls)
        return await Session.open(address, credentials, self.reach.tls)

    async def _run(self, session: Session, work: req.Query | req.Batch, output: req.Output) -> object:
        budget = Budget(self.limits.max_response_bytes)
        timeout = self.limits.statement_timeout

        async def run(query: req.Query, *, last: bool = False) -> dict[str, object]:
            result = await session.run(query, budget=budget, timeout=timeout, last=last)
            array_mode = output.array_mode if query.array_mode is None else query.array_mode
            return results.encode(result, array_mode=array_mode, raw_text=output.raw_text)

        if isinstance(work, req.Query):
            return await run(work, last=True)
        await session.run(req.Query(work.begin()), budget=budget, timeout=timeout)
        try:
            answers = [await run(query) for query in work.queries]
        except QueryError:
            await session.run(req.Query("ROLLBACK"), budget=budget, timeout=timeout, last=True)
            raise
        # A COMMIT that fails (a deferred constraint, a serialization failure) has ended the
        # transaction all the same: its error is the answer, and no ROLLBACK follows it.
        await session.run(req.Query("COMMIT"), budget=budget, timeout=timeout, last=True)
        return {"results": answers}


def peer(request: web.Request) -> tuple[str, int]:
    """The client's address (a Unix socket or a closed transport has none worth checking)."""
    address = request.transport.get_extra_info("peername") if request.transport else None
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else ("", 0)


def _too_large(limit: int) -> req.RequestError:
    return req.RequestError(
        f"request is too large (max is {limit} bytes)", status=413, reason="request_too_large"
    )


def _json(payload: bytes, status: int) -> web.Response:
    return web.Response(body=payload, status=status, content_type="application/json", headers=CORS)
