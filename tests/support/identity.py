"""Tokens minted by a test RS256 key, and the JWKS that verifies them, as an OIDC issuer publishes it;
and which roles a server lets a token become."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from controller.postgres import identities
from support.postgres import Server

ISSUER = "https://issuer.test"


@dataclass
class SigningKey:
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    private: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def jwk(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def mint(
        self,
        subject: str,
        audience: str | list[str],
        *,
        issuer: str = ISSUER,
        lifetime: float = 900.0,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        at = time.time() if now is None else now
        payload = {"iss": issuer, "sub": subject, "aud": audience, "iat": int(at), "exp": int(at + lifetime)}
        return jwt.encode({**payload, **claims}, self.private, algorithm="RS256", headers={"kid": self.kid})


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.jwk() for k in keys]}


def write_jwks(path: Path, *keys: SigningKey) -> Path:
    path.write_text(json.dumps(jwks(*keys)))
    return path


def identity_members(server: Server) -> set[str]:
    """The roles that are members of the group token logins need (`identities.IDENTITY_ROLE`)."""
    with server.connect() as conn:
        rows = conn.execute(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
            "JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = %s",
            [identities.IDENTITY_ROLE],
        ).fetchall()
    return {str(r[0]) for r in rows}
