"""Identity authentication on real Postgres: psql with a token as its password (PGPASSWORD), over
TLS it verifies (sslmode=verify-full), against the identity endpoint of an active and a paused
database; tokens minted by a test RS256 key whose JWKS `sdb up --oidc-jwks` was given."""

from __future__ import annotations

import concurrent.futures
import functools
import os
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support.identity import ISSUER, SigningKey, write_jwks
from support.operator import Operator, database, running_operator, wait_for
from support.requirements import require_postgres

from controller.activator import protocol
from controller.api import types
from controller.identity.tokens import Reason, default_audience
from controller.runtime.local import runtime

pytestmark = pytest.mark.postgres

SIGNER = SigningKey()
AUDIENCE = default_audience("default/ident")
WHO = "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()"


@pytest.fixture
def operator(state_dir: Path) -> Iterator[Operator]:
    """`sdb up` trusting the test issuer, with a database that binds the issuer's `alice` to `reader`."""
    require_postgres()
    jwks = write_jwks(state_dir.parent / "jwks.json", SIGNER)
    options = ("--oidc-issuer", ISSUER, "--oidc-jwks", str(jwks))
    with running_operator(state_dir, tick=0.2, options=options) as running:
        running.apply(spec(autoPause={"idleAfter": "1s"}))
        running.wait_phase("ident", types.Phase.ACTIVE)
        _, superuser, _ = running.sdb("dsn", "ident", "--superuser", "--show-password")
        made = psql(
            superuser.strip(),
            "CREATE ROLE reader LOGIN; GRANT CONNECT ON DATABASE app TO reader",
        )
        assert made.returncode == 0, made.stderr
        yield running


def spec(**more: object) -> dict[str, object]:
    identities = [{"issuer": ISSUER, "subject": "alice", "role": "reader"}]
    return database("ident", superuserAccess=True, access={"identities": identities}, **more)


def psql(dsn: str, sql: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(
        ["psql", dsn, "-Atc", sql], capture_output=True, text=True, check=False, env=env, timeout=60
    )


def identity_dsn(operator: Operator, role: str = "reader") -> str:
    _, dsn, _ = operator.sdb("dsn", "ident", "--identity", role)
    return dsn.strip()


def test_a_valid_token_logs_in_as_its_role_over_verified_tls_active_and_paused(operator: Operator) -> None:
    dsn = identity_dsn(operator)
    assert "sslmode=verify-full" in dsn
    assert f"sslrootcert={operator.state_dir / runtime.CA_CERTIFICATE}" in dsn
    token = SIGNER.mint("alice", AUDIENCE)
    active = psql(dsn, WHO, token)
    assert active.returncode == 0, active.stderr
    assert active.stdout.strip() == "reader|t"
    # Postgres took the endpoint's certificate for it, not a password.
    dn = psql(dsn, "select client_dn from pg_stat_ssl where pid = pg_backend_pid()", token)
    assert dn.stdout.strip() == f"/CN={runtime.IDENTITY_CLIENT_NAME}"

    operator.wait_phase("ident", types.Phase.PAUSED, timeout=60)
    paused = psql(dsn, WHO, SIGNER.mint("alice", AUDIENCE))
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == "reader|t"
    assert operator.get("ident").status.phase is types.Phase.ACTIVE


REFUSALS = [
    ("expired", SIGNER.mint("alice", AUDIENCE, lifetime=-120), "reader", "28P01", Reason.EXPIRED),
    (
        "wrong audience",
        SIGNER.mint("alice", "dbscale.io/default/other"),
        "reader",
        "28P01",
        Reason.WRONG_AUDIENCE,
    ),
    (
        "bad signature",
        SigningKey(kid=SIGNER.kid).mint("alice", AUDIENCE),
        "reader",
        "28P01",
        Reason.BAD_SIGNATURE,
    ),
    ("not bound", SIGNER.mint("mallory", AUDIENCE), "reader", "28000", Reason.NOT_BOUND),
    ("another role", SIGNER.mint("alice", AUDIENCE), "app", "28000", Reason.NOT_BOUND_TO_ROLE),
    ("not a token", "hunter2", "reader", "28P01", Reason.MALFORMED),
]


def wire_refusal(operator: Operator, token: str, role: str) -> dict[str, str]:
    """The ErrorResponse's fields, read off the wire as a client gets them after its password."""
    endpoint = runtime.read_endpoint(operator.state_dir, "default/ident")
    assert endpoint is not None
    assert endpoint.identity_port is not None
    verify = ssl.create_default_context(cafile=str(operator.state_dir / runtime.CA_CERTIFICATE))
    with socket.create_connection((runtime.HOST, endpoint.identity_port), timeout=30) as raw:
        raw.sendall(protocol.ssl_request())
        assert raw.recv(1) == b"S"
        with verify.wrap_socket(raw, server_hostname=runtime.HOST) as tls:
            tls.sendall(protocol.startup_message({"user": role, "database": "app"}))
            assert tls.recv(9) == struct.pack("!cii", b"R", 8, 3)  # AuthenticationCleartextPassword
            tls.sendall(b"p" + struct.pack("!i", len(token) + 5) + token.encode() + b"\0")
            reply = b""
            while chunk := tls.recv(4096):
                reply += chunk
    assert reply[:1] == b"E", reply
    fields = reply[5:].rstrip(b"\0").split(b"\0")
    return {f[:1].decode(): f[1:].decode() for f in fields}


def logged(operator: Operator, reason: Reason) -> str:
    """The operator's first log line about a refusal for this reason."""
    lines = operator.log.read_text().splitlines()
    return next((line for line in lines if f'"reason": "{reason.name.lower()}"' in line), "")


def test_each_refusal_says_why_with_its_sqlstate_and_logs_who_but_never_the_token(operator: Operator) -> None:
    dsn = identity_dsn(operator)
    for case, token, role, code, reason in REFUSALS:
        result = psql(dsn.replace("reader@", f"{role}@"), "select 1", token)
        assert result.returncode != 0, case
        message = f'token authentication failed for user "{role}": {reason.value}'
        assert message in result.stderr, (case, result.stderr)
        error = wire_refusal(operator, token, role)
        assert (error["S"], error["C"], error["M"]) == ("FATAL", code, message), case
        line = wait_for(
            functools.partial(logged, operator, reason), timeout=10, what=f"a log line for {case}"
        )
        assert '"database": "default/ident"' in line, line
        if reason is not Reason.MALFORMED:
            assert "#alice" in line or "#mallory" in line, line
    everything = operator.log.read_text() + (operator.pgdata("ident").parent / "postgres.log").read_text()
    for case, token, *_ in REFUSALS:
        assert token not in everything, case


def test_plaintext_is_refused_before_any_password_is_asked_for(operator: Operator) -> None:
    dsn = identity_dsn(operator).split("?")[0] + "?sslmode=disable"
    token = SIGNER.mint("alice", AUDIENCE)
    result = psql(dsn, "select 1", token)
    assert result.returncode != 0
    assert "identity authentication needs TLS" in result.stderr
    logged = '"reason": "plaintext"'
    wait_for(lambda: logged in operator.log.read_text(), timeout=10, what="the refusal logged")
    assert token not in operator.log.read_text()


@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
def test_a_cancel_request_reaches_postgres_for_a_token_session(operator: Operator, how: str) -> None:
    """libpq's CancelRequest to the endpoint's port, as psql's Ctrl-C sends it (`cancel`: in the clear)
    and as libpq 17's PQcancelCreate does (`cancel_safe`: inside TLS, as the session was)."""
    token = SIGNER.mint("alice", AUDIENCE)
    _, superuser, _ = operator.sdb("dsn", "ident", "--superuser", "--show-password")
    with (
        psycopg.connect(identity_dsn(operator), password=token, autocommit=True) as session,
        psycopg.connect(superuser.strip(), autocommit=True) as watcher,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        pid = session.info.backend_pid
        sleeping = pool.submit(session.execute, "select pg_sleep(60)")

        def running() -> bool:
            state = watcher.execute("select state from pg_stat_activity where pid = %s", [pid]).fetchone()
            return state is not None and state[0] == "active"

        wait_for(running, timeout=30, what="the query running")
        getattr(session, how)()
        with pytest.raises(psycopg.errors.QueryCanceled):
            sleeping.result(timeout=30)
        assert session.execute("select current_user").fetchone() == ("reader",)  # the session goes on
