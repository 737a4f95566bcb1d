"""ServiceAccount tokens as the API server issues and reviews them: TokenRequest and TokenReview.

Tokens are JWTs signed by the double's own RS256 key, with the claims a real cluster puts in a
projected token (`kubernetes.io` naming the ServiceAccount and its uid). A TokenReview authenticates
one when its signature verifies, it has not expired, its audiences meet the review's, and the
ServiceAccount it names still exists with the same uid, as the real token authenticator checks; a
refusal carries the real server's kind of error text and no user.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import ApiError, bad_request

ISSUER = "https://kubernetes.default.svc.cluster.local"
MIN_EXPIRATION_SECONDS = 600
DEFAULT_EXPIRATION_SECONDS = 3600


class ServiceAccountTokens:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        """The API server's time: a test moves it on to let tokens expire."""
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def request(self, account: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """The status of a TokenRequest for this ServiceAccount object."""
        seconds = int(spec.get("expirationSeconds") or DEFAULT_EXPIRATION_SECONDS)
        if seconds < MIN_EXPIRATION_SECONDS:
            raise bad_request(
                f"spec.expirationSeconds: Invalid value: {seconds}: "
                "may not specify a duration less than 10 minutes"
            )
        audiences = list(spec.get("audiences") or [ISSUER])
        meta = account["metadata"]
        now = int(self.clock())
        claims = {
            "iss": ISSUER,
            "sub": f"system:serviceaccount:{meta['namespace']}:{meta['name']}",
            "aud": audiences,
            "iat": now,
            "nbf": now,
            "exp": now + seconds,
            "kubernetes.io": {
                "namespace": meta["namespace"],
                "serviceaccount": {"name": meta["name"], "uid": meta["uid"]},
            },
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "double"})
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + seconds))
        return {"token": token, "expirationTimestamp": expiry}

    def review(
        self, spec: dict[str, Any], account: Callable[[str, str], dict[str, Any] | None]
    ) -> dict[str, Any]:
        """The status of a TokenReview; `account(namespace, name)` reads a ServiceAccount, None if gone."""
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            raise ApiError(
                422, "Invalid", "TokenReview.authentication.k8s.io is invalid: spec.token: Required value"
            )
        wanted = list(spec.get("audiences") or [ISSUER])
        try:
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS256"],
                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            return _refused("invalid bearer token")
        if claims.get("iss") != ISSUER:
            return _refused("invalid bearer token")
        if float(claims.get("exp", 0)) <= self.clock():
            return _refused("invalid bearer token, service account token has expired")
        stated = claims.get("aud") or []
        granted = [a for a in wanted if a in (stated if isinstance(stated, list) else [stated])]
        if not granted:
            return _refused(f"token audiences {stated} is invalid for the target audiences {wanted}")
        ref = claims.get("kubernetes.io") or {}
        namespace, sa = ref.get("namespace", ""), (ref.get("serviceaccount") or {})
        found = account(namespace, sa.get("name", ""))
        if found is None:
            return _refused(f"service account {namespace}/{sa.get('name')} has been deleted")
        if found["metadata"].get("uid") != sa.get("uid"):
            return _refused("service account UID does not match the token's")
        return {
            "authenticated": True,
            "user": {
                "username": f"system:serviceaccount:{namespace}:{sa['name']}",
                "uid": sa["uid"],
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{namespace}",
                    "system:authenticated",
                ],
            },
            "audiences": granted,
        }


def _refused(message: str) -> dict[str, Any]:
    return {"user": {}, "error": f"[{message}]"}
