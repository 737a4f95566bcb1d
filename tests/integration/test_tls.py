"""TLS on every local endpoint, with real clients checking the certificate against the operator's CA."""

from __future__ import annotations

import stat
import subprocess

import psycopg
import pytest
from support.operator import Operator, database, wait_for

from controller import pki
from controller.api import types, units
from controller.runtime.local import runtime

pytestmark = pytest.mark.postgres


def psql(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["psql", dsn, "-Atc", sql], capture_output=True, text=True, check=False)


ENCRYPTED = "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()"


def verified_dsn(operator: Operator, name: str) -> str:
    _, dsn, _ = operator.sdb("dsn", name, "--verify")
    return dsn.strip()


def test_psql_verifies_the_server_against_the_published_ca(operator: Operator) -> None:
    operator.apply(database("secure"))
    operator.wait_phase("secure", types.Phase.ACTIVE)
    dsn = verified_dsn(operator, "secure")
    assert "sslmode=verify-full" in dsn
    assert f"sslrootcert={operator.state_dir / runtime.CA_CERTIFICATE}" in dsn
    result = psql(dsn, ENCRYPTED)
    assert result.returncode == 0, result.stderr
    encrypted, version = result.stdout.strip().split("|")
    assert encrypted == "t"
    assert version in {"TLSv1.2", "TLSv1.3"}
    # The CA's key stays with the operator; what clients trust is only its certificate.
    ca_key = operator.state_dir / runtime.CA_DIRECTORY / "ca.key"
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in (operator.state_dir / runtime.CA_CERTIFICATE).read_text()


def test_a_certificate_from_another_authority_is_refused_by_a_verifying_client(
    operator: Operator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    operator.apply(database("pinned"))
    operator.wait_phase("pinned", types.Phase.ACTIVE)
    stranger = tmp_path_factory.mktemp("stranger") / "ca.crt"
    stranger.write_text(pki.new_authority("someone else", now=units.now_utc()).certificate)
    dsn = verified_dsn(operator, "pinned").replace(
        str(operator.state_dir / runtime.CA_CERTIFICATE), str(stranger)
    )
    result = psql(dsn, "select 1")
    assert result.returncode != 0
    assert "certificate verify failed" in result.stderr


def test_psycopg_over_tls_and_plaintext_refused_when_the_spec_requires_tls(operator: Operator) -> None:
    operator.apply(database("strict"))
    operator.wait_phase("strict", types.Phase.ACTIVE)
    with psycopg.connect(operator.dsn("strict"), sslmode="disable", autocommit=True) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (False,)

    operator.apply(database("strict", tls={"required": True}))

    def plaintext_refused() -> str:
        try:
            psycopg.connect(operator.dsn("strict"), sslmode="disable").close()
        except psycopg.OperationalError as error:
            return str(error)
        return ""

    message = wait_for(plaintext_refused, timeout=30, what="plaintext to be refused")
    assert 'no pg_hba.conf entry for host "127.0.0.1", user "app", database "app", no encryption' in message
    with psycopg.connect(verified_dsn(operator, "strict"), autocommit=True) as conn:
        assert conn.execute(ENCRYPTED).fetchone()[0] is True  # type: ignore[index]
    # The key was never written where a log or status could carry it.
    key = (operator.pgdata("strict").parent / "server.key").read_text()
    body = "".join(key.splitlines()[1:-1])
    for log in [operator.log, *operator.state_dir.rglob("*.log")]:
        assert body not in log.read_text(errors="replace")
    assert body not in repr(operator.get("strict").status)


def test_a_paused_database_wakes_for_a_verifying_tls_client_encrypted_to_postgres_itself(
    operator: Operator,
) -> None:
    operator.apply(database("sleepy", autoPause={"idleAfter": "1s"}))
    operator.wait_phase("sleepy", types.Phase.ACTIVE)
    operator.wait_phase("sleepy", types.Phase.PAUSED)
    dsn = verified_dsn(operator, "sleepy")
    # psql: its session's encryption is Postgres's own (pg_stat_ssl is the server's view of it).
    result = psql(dsn, ENCRYPTED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().split("|")[0] == "t"
    operator.wait_phase("sleepy", types.Phase.PAUSED)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute(ENCRYPTED).fetchone()[0] is True  # type: ignore[index]


def test_a_tls_client_whose_wake_fails_is_refused_and_a_plaintext_retry_reads_why(operator: Operator) -> None:
    broken = database(
        "broken", autoPause={"idleAfter": "1s"}, postgres={"parameters": {"lock_timeout": "nonsense"}}
    )
    operator.apply(database("broken", autoPause={"idleAfter": "1s"}))
    operator.wait_phase("broken", types.Phase.ACTIVE)
    operator.wait_phase("broken", types.Phase.PAUSED)
    operator.apply(broken)  # a setting Postgres cannot start with: the next wake fails
    # Mid-handshake there is no Postgres error to send: a TLS alert ends it ...
    required = psql(verified_dsn(operator, "broken"), "select 1")
    assert required.returncode != 0
    assert "alert internal error" in required.stderr, required.stderr
    # ... and libpq's default (sslmode=prefer) tries again in plaintext, where the reason is told.
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(operator.dsn("broken"), sslmode="prefer").close()
    assert "could not be woken" in str(refused.value)
    assert "nonsense" in str(refused.value)
