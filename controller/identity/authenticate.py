"""The one credential check for a token: from the cache, against a trusted issuer's keys, or by a
TokenReview; every refusal logged with who the token claims to be and why, never the token.

Every door that takes a token (the Postgres-wire identity endpoint, the HTTP gateway's bearer token)
asks this, so each says the same thing for the same token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import structlog

from controller.activator.refusals import RefusalLog
from controller.api import codec, types, units
from controller.identity import tokens
from controller.identity.cache import VerifiedTokens
from controller.identity.tokens import Reason, Refused, Verified

Reviewer = Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any]]]
"""Creates a TokenReview and returns its status; raises when the API server cannot answer."""

log = structlog.get_logger("identity")
REVIEW_TIMEOUT = 5.0


class Observer(Protocol):
    def token_checked(self, key: str, outcome: str) -> None:
        """One token check for database `key`: `accepted`, or the refusal's reason in lower case."""

    def token_cache_hit(self, key: str) -> None: ...


class NoObserver:
    def token_checked(self, key: str, outcome: str) -> None:
        pass

    def token_cache_hit(self, key: str) -> None:
        pass


ACCEPTED = "accepted"


def fingerprint(identities: Sequence[types.IdentitySpec]) -> str:
    """Names a set of identities: a verification is reused only while they are the same."""
    document = json.dumps([codec.encode_identity(i) for i in identities], sort_keys=True)
    return hashlib.sha256(document.encode()).hexdigest()[:16]


class Authenticator:
    def __init__(
        self,
        *,
        issuers: Sequence[tokens.Issuer] = (),
        reviewer: Reviewer | None = None,
        clock: Callable[[], datetime] = units.now_utc,
        cache: VerifiedTokens | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.issuers = {issuer.url: issuer for issuer in issuers}
        self.reviewer = reviewer
        self.clock = clock
        self.cache = cache or VerifiedTokens()
        self.observer = observer or NoObserver()
        self.refusals: RefusalLog | None = None

    async def authenticate(
        self, key: str, identities: Sequence[types.IdentitySpec], token: str, role: str
    ) -> Verified | Refused:
        """Whether `token` may log in to database `key` as `role`."""
        result = await self._verify(key, identities, token)
        result = tokens.for_role(result, role)
        if isinstance(result, Refused):
            self._log(key, role, result)
            self.observer.token_checked(key, result.reason.name.lower())
        else:
            self.observer.token_checked(key, ACCEPTED)
        return result

    async def _verify(
        self, key: str, identities: Sequence[types.IdentitySpec], token: str
    ) -> Verified | Refused:
        now = self.clock()
        scope = f"{key}\0{fingerprint(identities)}"
        cached = self.cache.get(scope, token, now=now)
        if cached is not None:
            self.observer.token_cache_hit(key)
            return cached
        claims = tokens.unverified_claims(token)
        if claims is None:
            return Refused(Reason.MALFORMED)
        issuer = self.issuers.get(str(claims.get("iss")))
        if issuer is not None:
            result = tokens.verify_oidc(token, issuer, identities, key, now=now)
        elif self.reviewer is not None:
            result = await self._review(key, identities, token, now)
        else:
            result = Refused(Reason.UNTRUSTED_ISSUER, f"{claims.get('iss')}#{claims.get('sub')}")
        if isinstance(result, Verified):
            self.cache.put(scope, token, result, now=now)
        return result

    async def _review(
        self, key: str, identities: Sequence[types.IdentitySpec], token: str, now: datetime
    ) -> Verified | Refused:
        assert self.reviewer is not None
        request = tokens.review_request(token, tokens.review_audiences(identities, key))
        try:
            async with asyncio.timeout(REVIEW_TIMEOUT):
                status = await self.reviewer(request)
        except Exception as error:  # the API server's fault, not the client's: say so, log why
            log.warning("token review failed", database=key, error=f"{type(error).__name__}: {error}")
            return Refused(Reason.REVIEW_FAILED)
        return tokens.read_review(token, status, identities, key, now=now)

    def _log(self, key: str, role: str, refused: Refused) -> None:
        if self.refusals is None:  # made on first use: it needs the running loop
            self.refusals = RefusalLog(logger=log)
        self.refusals.refused(refused.reason.name.lower(), database=key, role=role, identity=refused.identity)
