"""Table tests of the token verifier, the TokenReview reader and the cache of verified tokens."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from support.identity import ISSUER, SigningKey, jwks

from controller.api import codec, types
from controller.identity import tokens
from controller.identity.authenticate import Authenticator
from controller.identity.cache import VerifiedTokens
from controller.identity.tokens import Reason, Refused, Verified
from controller.metrics.exposition import OperatorMetrics

KEY = "shop/orders"
AUDIENCE = "dbscale.io/shop/orders"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SIGNER = SigningKey(kid="k1")
OTHER = SigningKey(kid="k1")  # the same kid, another key: a forgery
ISSUER_KEYS = tokens.Issuer(ISSUER, jwks(SIGNER))
IDENTITIES = (
    types.IdentitySpec(role="reader", issuer=ISSUER, subject="alice"),
    types.IdentitySpec(role="writer", issuer=ISSUER, subject="alice"),
    types.IdentitySpec(role="batch", issuer=ISSUER, subject="job", audience="billing"),
    types.IdentitySpec(role="worker", service_account=types.ServiceAccountRef("shop", "api")),
)


def _mint(signer: SigningKey = SIGNER, subject: str = "alice", audience: Any = AUDIENCE, **kw: Any) -> str:
    return signer.mint(subject, audience, now=kw.pop("now", NOW.timestamp()), **kw)


def _segment(document: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


def _unsigned() -> str:
    claims = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "exp": NOW.timestamp() + 600}
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(claims)}."


def _hmac_with_public_key() -> str:
    """The classic confusion: HS256 keyed with the issuer's public key, which anyone can read."""
    public = json.dumps(SIGNER.jwk()).encode()
    claims = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "exp": int(NOW.timestamp()) + 600}
    header = {"alg": "HS256", "kid": "k1"}
    signing_input = f"{_segment(header)}.{_segment(claims)}".encode()
    import hashlib
    import hmac

    mac = hmac.new(public, signing_input, hashlib.sha256).digest()
    return signing_input.decode() + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


OIDC_CASES = [
    (
        "valid",
        _mint(),
        Verified(f"{ISSUER}#alice", frozenset({"reader", "writer"}), NOW + timedelta(minutes=15)),
    ),
    ("valid, one of several audiences", _mint(audience=["x", AUDIENCE]), {"reader", "writer"}),
    ("expired", _mint(lifetime=600, now=NOW.timestamp() - 900), Reason.EXPIRED),
    ("expired within the leeway", _mint(lifetime=600, now=NOW.timestamp() - 610), {"reader", "writer"}),
    (
        "no expiry at all",
        jwt.encode(
            {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE},
            SIGNER.private,
            algorithm="RS256",
            headers={"kid": "k1"},
        ),
        Reason.EXPIRED,
    ),
    ("not valid yet", _mint(nbf=int(NOW.timestamp()) + 300), Reason.NOT_YET_VALID),
    ("wrong audience", _mint(audience="dbscale.io/shop/other"), Reason.WRONG_AUDIENCE),
    ("no audience", _mint(audience=[]), Reason.WRONG_AUDIENCE),
    ("the entry's own audience", _mint(subject="job", audience="billing"), {"batch"}),
    ("the database's audience where the entry names another", _mint(subject="job"), Reason.WRONG_AUDIENCE),
    ("bad signature: another key, the same kid", _mint(OTHER), Reason.BAD_SIGNATURE),
    ("bad signature: a key the JWKS lacks", _mint(SigningKey(kid="k9")), Reason.BAD_SIGNATURE),
    ("bad signature: alg none", _unsigned(), Reason.BAD_SIGNATURE),
    ("bad signature: HS256 keyed with the public key", _hmac_with_public_key(), Reason.BAD_SIGNATURE),
    ("bad signature: a claim changed after signing", None, Reason.BAD_SIGNATURE),
    ("another issuer", _mint(issuer="https://elsewhere.test"), Reason.UNTRUSTED_ISSUER),
    ("a subject no entry names", _mint(subject="mallory"), Reason.NOT_BOUND),
    ("not a token", "hunter2", Reason.MALFORMED),
    ("a token far too long", "x" * 20_000, Reason.MALFORMED),
]


def _tampered() -> str:
    header, _, signature = _mint().split(".")
    claims = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "exp": int(NOW.timestamp()) + 86_400 * 365}
    return f"{header}.{_segment(claims)}.{signature}"


@pytest.mark.parametrize(("case", "token", "expected"), OIDC_CASES, ids=[c[0] for c in OIDC_CASES])
def test_oidc_tokens(case: str, token: str | None, expected: Any) -> None:
    result = tokens.verify_oidc(token or _tampered(), ISSUER_KEYS, IDENTITIES, KEY, now=NOW)
    if isinstance(expected, Reason):
        assert isinstance(result, Refused)
        assert result.reason is expected
    elif isinstance(expected, set):
        assert isinstance(result, Verified)
        assert result.roles == expected
    else:
        assert result == expected


def test_a_refusal_names_who_the_token_claims_to_be_and_never_the_token() -> None:
    token = _mint(audience="elsewhere")
    result = tokens.verify_oidc(token, ISSUER_KEYS, IDENTITIES, KEY, now=NOW)
    assert result == Refused(Reason.WRONG_AUDIENCE, f"{ISSUER}#alice")
    assert token not in repr(result)


def test_a_role_the_identity_is_not_bound_to_is_refused() -> None:
    verified = tokens.verify_oidc(_mint(), ISSUER_KEYS, IDENTITIES, KEY, now=NOW)
    assert tokens.for_role(verified, "writer") == verified
    assert tokens.for_role(verified, "worker") == Refused(Reason.NOT_BOUND_TO_ROLE, f"{ISSUER}#alice")


# -- TokenReview -----------------------------------------------------------------------------------

SA_SUBJECT = "system:serviceaccount:shop:api"


def _sa_token(**kw: Any) -> str:
    return _mint(subject=kw.pop("subject", SA_SUBJECT), issuer="https://kubernetes.default.svc", **kw)


def _answer(authenticated: bool, username: str = SA_SUBJECT, audiences: Any = (AUDIENCE,)) -> dict[str, Any]:
    if not authenticated:
        return {"authenticated": False, "error": "[invalid bearer token]"}
    return {"authenticated": True, "user": {"username": username}, "audiences": list(audiences)}


REVIEW_CASES = [
    ("bound", _sa_token(), _answer(True), {"worker"}),
    (
        "authenticated, but no entry names it",
        _sa_token(subject="system:serviceaccount:shop:web"),
        _answer(True, "system:serviceaccount:shop:web"),
        Reason.NOT_BOUND,
    ),
    ("a user, not a ServiceAccount", _sa_token(), _answer(True, "alice@example.com"), Reason.NOT_BOUND),
    (
        "authenticated for another audience only",
        _sa_token(),
        _answer(True, audiences=["other"]),
        Reason.WRONG_AUDIENCE,
    ),
    (
        "refused, and its exp has passed",
        _sa_token(lifetime=60, now=NOW.timestamp() - 3600),
        _answer(False),
        Reason.EXPIRED,
    ),
    (
        "refused, and it states another audience",
        _sa_token(audience="https://kubernetes.default.svc"),
        _answer(False),
        Reason.WRONG_AUDIENCE,
    ),
    ("refused, for no reason the token shows", _sa_token(), _answer(False), Reason.BAD_SIGNATURE),
    ("not a token", "hunter2", _answer(False), Reason.MALFORMED),
]


@pytest.mark.parametrize(
    ("case", "token", "status", "expected"), REVIEW_CASES, ids=[c[0] for c in REVIEW_CASES]
)
def test_token_reviews(case: str, token: str, status: dict[str, Any], expected: Any) -> None:
    result = tokens.read_review(token, status, IDENTITIES, KEY, now=NOW)
    if isinstance(expected, Reason):
        assert isinstance(result, Refused)
        assert result.reason is expected
    else:
        assert isinstance(result, Verified)
        assert result.roles == expected
        assert result.identity == SA_SUBJECT


def test_a_review_asks_for_every_audience_a_service_account_entry_takes() -> None:
    custom = types.IdentitySpec(role="r", service_account=types.ServiceAccountRef("a", "b"), audience="vault")
    assert tokens.review_audiences(IDENTITIES, KEY) == [AUDIENCE]
    assert tokens.review_audiences((*IDENTITIES, custom), KEY) == [AUDIENCE, "vault"]
    assert tokens.review_audiences((), KEY) == [AUDIENCE]
    request = tokens.review_request("t", [AUDIENCE])
    assert request["kind"] == "TokenReview"
    assert request["spec"] == {"token": "t", "audiences": [AUDIENCE]}


# -- the cache -------------------------------------------------------------------------------------


def _verified(expires: datetime) -> Verified:
    return Verified("someone", frozenset({"reader"}), expires)


def test_the_cache_keeps_a_verification_until_the_token_expires() -> None:
    cache = VerifiedTokens()
    cache.put("db", "token", _verified(NOW + timedelta(minutes=5)), now=NOW)
    assert cache.get("db", "token", now=NOW + timedelta(minutes=4)) is not None
    assert cache.get("other", "token", now=NOW) is None
    assert cache.get("db", "token2", now=NOW) is None
    assert cache.get("db", "token", now=NOW + timedelta(minutes=5)) is None
    assert len(cache) == 0


def test_the_cache_is_bounded_and_drops_the_soonest_to_expire() -> None:
    cache = VerifiedTokens(max_entries=2)
    for index, minutes in enumerate((3, 1, 2)):
        cache.put("db", f"t{index}", _verified(NOW + timedelta(minutes=minutes)), now=NOW)
    assert len(cache) == 2
    assert cache.get("db", "t1", now=NOW) is None
    assert cache.get("db", "t0", now=NOW) is not None


def test_the_cache_keeps_hashes_not_tokens() -> None:
    cache = VerifiedTokens()
    token = _mint()
    cache.put("db", token, _verified(NOW + timedelta(minutes=5)), now=NOW)
    assert token not in repr(vars(cache))


async def test_the_authenticator_verifies_once_per_token_and_identities() -> None:
    clock = [NOW]
    authenticator = Authenticator(issuers=[ISSUER_KEYS], clock=lambda: clock[0])
    token = _mint(lifetime=120)
    assert isinstance(await authenticator.authenticate(KEY, IDENTITIES, token, "reader"), Verified)
    # The issuer's keys gone: only the cache can still say yes, and it does, until the token expires.
    authenticator.issuers[ISSUER] = tokens.Issuer(ISSUER, {"keys": []})
    assert isinstance(await authenticator.authenticate(KEY, IDENTITIES, token, "writer"), Verified)
    refused = await authenticator.authenticate(KEY, IDENTITIES[:1], token, "reader")
    assert refused == Refused(Reason.BAD_SIGNATURE, f"{ISSUER}#alice")  # other identities: checked again
    authenticator.issuers[ISSUER] = ISSUER_KEYS
    clock[0] = NOW + timedelta(minutes=3)
    result = await authenticator.authenticate(KEY, IDENTITIES, token, "reader")
    assert isinstance(result, Refused)
    assert result.reason is Reason.EXPIRED


async def test_every_check_is_counted_by_outcome_and_cache_hits_apart() -> None:
    metrics = OperatorMetrics()
    authenticator = Authenticator(issuers=[ISSUER_KEYS], clock=lambda: NOW, observer=metrics)
    token = _mint(lifetime=120)
    await authenticator.authenticate(KEY, IDENTITIES, token, "reader")  # verified
    await authenticator.authenticate(KEY, IDENTITIES, token, "reader")  # from the cache
    await authenticator.authenticate(KEY, IDENTITIES, token, "nobody")  # from the cache, other role
    await authenticator.authenticate(KEY, IDENTITIES, _mint(lifetime=-120), "reader")
    namespace, name = types.split_key(KEY)

    def sample(metric: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(metric, {"namespace": namespace, "database": name, **labels})

    assert sample("sdb_identity_token_checks_total", outcome="accepted") == 2
    assert sample("sdb_identity_token_checks_total", outcome="not_bound_to_role") == 1
    assert sample("sdb_identity_token_checks_total", outcome="expired") == 1
    assert sample("sdb_identity_token_cache_hits_total") == 2
    metrics.forget(namespace, name)
    assert sample("sdb_identity_token_checks_total", outcome="accepted") is None
    assert sample("sdb_identity_token_cache_hits_total") is None


async def test_without_a_reviewer_a_token_of_an_unknown_issuer_is_refused() -> None:
    authenticator = Authenticator(issuers=[ISSUER_KEYS], clock=lambda: NOW)
    result = await authenticator.authenticate(KEY, IDENTITIES, _sa_token(), "worker")
    assert isinstance(result, Refused)
    assert result.reason is Reason.UNTRUSTED_ISSUER


def test_identities_round_trip_through_the_codec() -> None:
    raw = {
        "identities": [
            {"serviceAccount": {"namespace": "shop", "name": "api"}, "role": "orders_api"},
            {"issuer": ISSUER, "subject": "job", "role": "batch", "audience": "billing"},
        ]
    }
    obj = {
        "apiVersion": types.API_VERSION,
        "kind": types.KIND,
        "metadata": {"name": "orders", "namespace": "shop"},
    }
    db = codec.decode({**obj, "spec": {"access": raw}})
    assert db.spec.access.identities == (
        types.IdentitySpec(role="orders_api", service_account=types.ServiceAccountRef("shop", "api")),
        types.IdentitySpec(role="batch", issuer=ISSUER, subject="job", audience="billing"),
    )
    assert codec.encode(db)["spec"]["access"]["identities"] == raw["identities"]
    assert codec.decode(codec.encode(db)).spec == db.spec
