"""Identity tokens at the gateway, with the real `@neondatabase/serverless` driver: its `authToken`
over HTTPS (an `Authorization: Bearer` header) and a token as a `Pool`'s password over `wss://`,
against a real `sdb up` that trusts a test issuer (tokens minted by a test RS256 key, its JWKS
given to `--oidc-jwks`), for a database that is always on and one that has paused."""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import node
from support.identity import ISSUER, SigningKey, write_jwks
from support.operator import Operator, database, wait_for
from support.requirements import require_postgres

from controller.api import types
from controller.identity.tokens import Reason, default_audience, refusal_message
from controller.runtime.local import accounts
from controller.runtime.local.runtime import free_port

pytestmark = pytest.mark.postgres

SIGNER = SigningKey()
ROLE = "reader"


def identities() -> list[dict[str, str]]:
    return [{"issuer": ISSUER, "subject": "alice", "role": ROLE}]


@pytest.fixture(scope="module")
def operator() -> Iterator[Operator]:
    require_postgres()
    node.require_driver()
    root = Path(tempfile.mkdtemp(prefix="sdb-gateway-identity-"))
    jwks = write_jwks(root / "jwks.json", SIGNER)
    running = Operator(
        root / "state",
        tick=0.2,
        metrics_port=free_port(),
        options=("--oidc-issuer", ISSUER, "--oidc-jwks", str(jwks)),
    )
    running.start()
    try:
        access = {"identities": identities()}
        running.apply(database("awake", superuserAccess=True, access=access, autoPause={"enabled": False}))
        # A woken database pauses again when no session shows within idleAfter of its wake.
        running.apply(database("resting", superuserAccess=True, access=access, autoPause={"idleAfter": "3s"}))
        for name in ("awake", "resting"):
            running.wait_phase(name, types.Phase.ACTIVE)
            _, superuser, _ = running.sdb("dsn", name, "--superuser", "--show-password")
            with psycopg.connect(superuser.strip(), autocommit=True) as conn:  # the bound role, no password
                conn.execute(f"CREATE ROLE {ROLE} LOGIN")
                conn.execute(f"GRANT CONNECT ON DATABASE app TO {ROLE}")
        yield running
    finally:
        running.stop()
        shutil.rmtree(root, ignore_errors=True)
        accounts.remove_all(root / "state")


def settings(operator: Operator, name: str) -> dict[str, str]:
    """The driver's settings as `sdb dsn --http` and `--ws` print them, with the bound role and no
    password in the connection string."""
    found: dict[str, str] = {}
    for flag in ("--http", "--ws"):
        _, out, _ = operator.sdb("dsn", name, flag)
        found.update(line.split(": ", 1) for line in out.splitlines() if ": " in line)  # type: ignore[misc]
    found["connectionString"] = f"postgresql://{ROLE}@{name}.default/app"
    return found


def token_for(name: str, **more: Any) -> str:
    return SIGNER.mint("alice", default_audience(f"default/{name}"), **more)


@pytest.mark.parametrize("name", ["awake", "resting"])
def test_a_token_logs_in_as_its_role_over_http_and_websocket(operator: Operator, name: str) -> None:
    if name == "resting":
        operator.wait_phase("resting", types.Phase.PAUSED, timeout=60)
    wakes = operator.metric("sdb_wakes_total", database=name)
    driver = settings(operator, name)
    token = token_for(name)
    assert node.run("tokenQuery", driver, token=token) == {"role": ROLE, "n": 42, "again": ROLE}
    assert node.run("tokenPool", driver, token=token) == {"role": ROLE}
    assert operator.metric("sdb_wakes_total", database=name) == wakes + (name == "resting")
    accepted = operator.metric("sdb_identity_token_checks_total", database=name, outcome="accepted")
    assert accepted >= 2
    everything = operator.log.read_text() + (operator.pgdata(name).parent / "postgres.log").read_text()
    assert token not in everything


REFUSALS = [
    ("expired", lambda: token_for("awake", lifetime=-120), "28P01", Reason.EXPIRED),
    (
        "wrong audience",
        lambda: SIGNER.mint("alice", default_audience("default/other")),
        "28P01",
        Reason.WRONG_AUDIENCE,
    ),
    (
        "bad signature",
        lambda: SigningKey(kid=SIGNER.kid).mint("alice", default_audience("default/awake")),
        "28P01",
        Reason.BAD_SIGNATURE,
    ),
    (
        "not bound",
        lambda: SIGNER.mint("mallory", default_audience("default/awake")),
        "28000",
        Reason.NOT_BOUND,
    ),
]


def logged(operator: Operator, reason: Reason, after: int) -> str:
    lines = operator.log.read_text().splitlines()[after:]
    return next((line for line in lines if f'"reason": "{reason.name.lower()}"' in line), "")


@pytest.mark.parametrize(("case", "mint", "code", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_refused_token_says_why_with_its_sqlstate_and_is_logged_without_it(
    operator: Operator, case: str, mint: Any, code: str, reason: Reason
) -> None:
    driver = settings(operator, "awake")
    token = mint()
    before = len(operator.log.read_text().splitlines())
    outcome = reason.name.lower()
    refused = operator.metric("sdb_identity_token_checks_total", database="awake", outcome=outcome)
    message = refusal_message(reason, ROLE)
    assert node.run("tokenRefused", driver, token=token) == {
        "thrown": True,
        "neon": True,
        "code": code,
        "message": message,
    }
    assert node.run("tokenPool", driver, token=token) == {"code": code, "message": message}
    line = wait_for(
        functools.partial(logged, operator, reason, before), timeout=10, what=f"a log line for {case}"
    )
    assert '"database": "default/awake"' in line, line
    assert "#alice" in line or "#mallory" in line, line
    checks = operator.metric("sdb_identity_token_checks_total", database="awake", outcome=outcome)
    assert checks == refused + 2  # one at each door
    everything = operator.log.read_text() + (operator.pgdata("awake").parent / "postgres.log").read_text()
    assert token not in everything
