"""Token logins at the gateway: what the driver's `authToken` (an `Authorization: Bearer` header on
`/sql`) or a WebSocket session's password proves, and where such a session goes.

A token is checked by the identity endpoint's authenticator (one check, one cache, one refusal log
for every door), and a session it admits is opened through the database's identity endpoint: that
is the one place a token becomes a Postgres login, as the mapped role, with the operator CA's client
certificate and no password. A role bound to an identity has no password, so the role a WebSocket
startup names says whether its password is a token. Tokens are taken only over TLS.
"""

from __future__ import annotations

from controller.activator import protocol
from controller.activator.proxy import Upstream
from controller.gateway.reach import PostgresTls
from controller.gateway.request import Credentials, RequestError
from controller.identity import tokens
from controller.identity.endpoint import NEEDS_TLS, IdentityEndpoint
from controller.identity.tokens import Refused

REFUSED = "token_refused"
"""The gateway's refusal reason for a token the authenticator turned down (it counts the why)."""


class TokenLogins:
    def __init__(self, endpoint: IdentityEndpoint | None, tls: PostgresTls | None = None) -> None:
        self.endpoint = endpoint
        self.tls = tls or PostgresTls()
        """How the endpoint's certificate is checked: as a database's locally (it serves the
        database's own), against the activator's loopback CA in a cluster."""

    async def bound(self, key: str, role: str) -> bool:
        return self.endpoint is not None and await self.endpoint.bound(key, role)

    def require_tls(self, key: str, peer: str, *, secure: bool) -> None:
        """Cleartext auth without TLS is refused, before the token is read."""
        if secure:
            return
        if self.endpoint is not None:
            self.endpoint.refused("plaintext", key, peer)
        raise RequestError(NEEDS_TLS, code=protocol.INVALID_AUTHORIZATION_SPECIFICATION, reason="plaintext")

    async def check(self, credentials: Credentials, peer: str, *, secure: bool) -> None:
        """Refuse a bearer token that may not log in as the connection string's user, saying why
        (28P01 or 28000)."""
        key, role = credentials.key, credentials.user
        self.require_tls(key, peer, secure=secure)
        if self.endpoint is None:
            raise RequestError(
                "token authentication is not served here: give the role's password in the connection string",
                code=protocol.INVALID_AUTHORIZATION_SPECIFICATION,
                reason="unsupported_authentication",
            )
        result = await self.endpoint.verify(key, credentials.token, role)
        if result is None:  # deleted since the gateway looked
            raise RequestError("the database does not exist", code="3D000", reason="unknown_database")
        if isinstance(result, Refused):
            message = tokens.refusal_message(result.reason, role)
            raise RequestError(message, code=tokens.sqlstate(result.reason), reason=REFUSED)

    def address(self, key: str) -> Upstream:
        """The database's identity endpoint, which logs an admitted token in as its role."""
        address = self.endpoint.address(key) if self.endpoint is not None else None
        if address is None:
            raise RequestError(
                "the database's identity endpoint is not listening yet; try again",
                code=protocol.CANNOT_CONNECT_NOW,
                reason="identity_unavailable",
            )
        return address
