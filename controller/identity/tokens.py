"""What a token proves, without I/O: its signature against a JWKS, or a TokenReview's answer, read
with the time handed in, then matched against the database's identities.

A refusal carries one `Reason`, the few words a client is told; what the token said is never in it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from controller.api import types

ALGORITHMS = ("RS256",)
"""Signatures taken; never `none`, and no HMAC, whose key would be the JWKS itself."""
LEEWAY_SECONDS = 30
"""Clocks across a cluster are never quite equal: a token this far past its exp still counts."""
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
MAX_TOKEN_LENGTH = 16 * 1024


class Reason(enum.StrEnum):
    """Why a token was refused: what the client reads, and what the log line says."""

    MALFORMED = "the password is not a token"
    EXPIRED = "the token has expired"
    NOT_YET_VALID = "the token is not valid yet"
    WRONG_AUDIENCE = "the token is for another audience"
    BAD_SIGNATURE = "the token's signature does not verify"
    UNTRUSTED_ISSUER = "the token's issuer is not trusted here"
    NOT_BOUND = "the identity is not bound to this database"
    NOT_BOUND_TO_ROLE = "the identity is not bound to this role"
    REVIEW_FAILED = "the token could not be checked; try again"


@dataclass(frozen=True)
class Refused:
    reason: Reason
    identity: str = ""
    """Who the token claims to be (issuer and subject, or the ServiceAccount), for the log; may be
    a claim the signature did not prove."""


@dataclass(frozen=True)
class Verified:
    identity: str
    """`system:serviceaccount:NS:NAME`, or `ISSUER#SUBJECT`."""
    roles: frozenset[str]
    """Every role the identity is bound to on this database."""
    expires: datetime


@dataclass(frozen=True)
class Issuer:
    """An OIDC issuer this operator trusts, and its keys (a JWKS document)."""

    url: str
    jwks: Mapping[str, Any]


def default_audience(key: str) -> str:
    namespace, name = types.split_key(key)
    return f"dbscale.io/{namespace}/{name}"


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The claims a token states, before anything is proved: for choosing the check, and a refusal's words."""
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


def _audiences(claims: Mapping[str, Any]) -> frozenset[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return frozenset({aud})
    if isinstance(aud, list):
        return frozenset(a for a in aud if isinstance(a, str))
    return frozenset()


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _times(claims: Mapping[str, Any], now: datetime) -> Reason | None:
    exp, nbf, at = _time(claims, "exp"), _time(claims, "nbf"), now.timestamp()
    if exp is None or exp + LEEWAY_SECONDS <= at:
        return Reason.EXPIRED  # a token that never expires is not taken either
    if nbf is not None and nbf - LEEWAY_SECONDS > at:
        return Reason.NOT_YET_VALID
    return None


def _expected(identity: types.IdentitySpec, key: str) -> str:
    return identity.audience or default_audience(key)


def _bind(
    name: str,
    entries: Sequence[types.IdentitySpec],
    claims: Mapping[str, Any],
    key: str,
    expires: float,
) -> Verified | Refused:
    """The roles of the entries this identity matches whose audience the token carries."""
    if not entries:
        return Refused(Reason.NOT_BOUND, name)
    audiences = _audiences(claims)
    roles = frozenset(e.role for e in entries if _expected(e, key) in audiences)
    if not roles:
        return Refused(Reason.WRONG_AUDIENCE, name)
    return Verified(name, roles, datetime.fromtimestamp(expires, tz=UTC))


def verify_oidc(
    token: str, issuer: Issuer, identities: Iterable[types.IdentitySpec], key: str, *, now: datetime
) -> Verified | Refused:
    """An OIDC token, checked against its issuer's keys and the database's identities at `now`."""
    claims = unverified_claims(token)
    if claims is None:
        return Refused(Reason.MALFORMED)
    name = f"{claims.get('iss')}#{claims.get('sub')}"
    if claims.get("iss") != issuer.url:
        return Refused(Reason.UNTRUSTED_ISSUER, name)
    try:
        header = jwt.get_unverified_header(token)
        keys = jwt.PyJWKSet.from_dict(dict(issuer.jwks))
        kid = header.get("kid")
        candidates = [k for k in keys.keys if kid is None or k.key_id == kid]
        if not candidates or header.get("alg") not in ALGORITHMS:
            return Refused(Reason.BAD_SIGNATURE, name)
    except jwt.PyJWTError:
        return Refused(Reason.BAD_SIGNATURE, name)
    for candidate in candidates:
        try:
            # Times and audience are checked below, against the `now` handed in: PyJWT reads a clock.
            jwt.decode(
                token,
                key=candidate.key,
                algorithms=list(ALGORITHMS),
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError:
            return Refused(Reason.MALFORMED, name)
    else:
        return Refused(Reason.BAD_SIGNATURE, name)
    if (problem := _times(claims, now)) is not None:
        return Refused(problem, name)
    entries = [
        i
        for i in identities
        if i.service_account is None and i.issuer == issuer.url and i.subject == claims.get("sub")
    ]
    return _bind(name, entries, claims, key, float(claims["exp"]))


def review_audiences(identities: Iterable[types.IdentitySpec], key: str) -> list[str]:
    """The audiences a TokenReview asks for: every one a ServiceAccount entry accepts, sorted."""
    wanted = {_expected(i, key) for i in identities if i.service_account is not None}
    return sorted(wanted or {default_audience(key)})


def read_review(
    token: str,
    status: Mapping[str, Any],
    identities: Iterable[types.IdentitySpec],
    key: str,
    *,
    now: datetime,
) -> Verified | Refused:
    """A ServiceAccount token, from the `status` of the TokenReview that asked `review_audiences`.

    The API server says only authenticated or not; why not is read from the token's own claims
    (expired, another audience), and anything else is a bad signature.
    """
    claims = unverified_claims(token)
    if claims is None:
        return Refused(Reason.MALFORMED)
    stated = claims.get("sub")
    name = str(stated) if isinstance(stated, str) else ""
    if not status.get("authenticated"):
        if (problem := _times(claims, now)) is not None:
            return Refused(problem, name)
        if not _audiences(claims) & set(review_audiences(identities, key)):
            return Refused(Reason.WRONG_AUDIENCE, name)
        return Refused(Reason.BAD_SIGNATURE, name)
    username = str((status.get("user") or {}).get("username") or "")
    if not username.startswith(SERVICE_ACCOUNT_PREFIX) or username.count(":") != 3:
        return Refused(Reason.NOT_BOUND, username)
    namespace, account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).split(":")
    # The audiences the API server says the token is good for: a subset of those asked.
    granted = {a for a in status.get("audiences") or [] if isinstance(a, str)}
    entries = [
        i
        for i in identities
        if i.service_account is not None
        and (i.service_account.namespace, i.service_account.name) == (namespace, account)
    ]
    exp = _time(claims, "exp")
    if exp is None:
        return Refused(Reason.EXPIRED, username)
    return _bind(username, entries, {"aud": sorted(granted)}, key, exp)


def review_request(token: str, audiences: Sequence[str]) -> dict[str, Any]:
    """The TokenReview to create for a ServiceAccount token."""
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": list(audiences)},
    }


def for_role(result: Verified | Refused, role: str) -> Verified | Refused:
    """A verified identity may log in only as a role it is bound to."""
    if isinstance(result, Verified) and role not in result.roles:
        return Refused(Reason.NOT_BOUND_TO_ROLE, result.identity)
    return result


INVALID_PASSWORD = "28P01"
INVALID_AUTHORIZATION_SPECIFICATION = "28000"
CANNOT_CONNECT_NOW = "57P03"

_BINDING = frozenset({Reason.NOT_BOUND, Reason.NOT_BOUND_TO_ROLE})


def sqlstate(reason: Reason) -> str:
    """Postgres's code for the refusal: a token that proves nothing is a bad password (28P01); one
    that proves who it is, for a database or role it has no right to, is 28000."""
    if reason is Reason.REVIEW_FAILED:
        return CANNOT_CONNECT_NOW
    return INVALID_AUTHORIZATION_SPECIFICATION if reason in _BINDING else INVALID_PASSWORD


def refusal_message(reason: Reason, role: str) -> str:
    return f'token authentication failed for user "{role}": {reason.value}'
