"""A real Postgres server for a test: initdb in a fresh temporary directory, a free port, a clean stop.

It runs through the local runtime's own `Cluster`, so as root the server runs as the `postgres` user.
The directory is made with `tempfile.mkdtemp()` in /tmp, not under pytest's tmp_path: pytest resets
its own tree to mode 0700 when a session starts, which would cut a running server off its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import psycopg.sql
import pytest

from controller.postgres import identities
from controller.runtime.local import accounts, server
from controller.runtime.local.runtime import HOST, free_port
from support.requirements import require_postgres

TEST_SERVERS = "tests/servers"
"""The account (when root) the tests' own servers run as: one for them all, made once."""
TRUST_LOOPBACK = "host all all 127.0.0.1/32 trust\n"
PASSWORD_LOOPBACK = "host all all 127.0.0.1/32 scram-sha-256\n"
"""A test's server has no certificate: its clients use plaintext, by password."""
IDENTITY_HBA = "\n".join(identities.hba_rules()) + "\n"
CLIENT_APPLICATION = "psql"
"""The application_name of a test's client sessions: neither the operator's own nor an ignored one."""


@dataclass(frozen=True)
class Server:
    """A running server: where it listens, its superuser password, and its data directory."""

    port: int
    password: str
    cluster: server.Cluster

    def dsn(self, *, application_name: str = CLIENT_APPLICATION) -> str:
        return (
            f"host={HOST} port={self.port} user={server.SERVER_USER} password={self.password} "
            f"dbname=postgres application_name={application_name}"
        )

    def connect(
        self, *, application_name: str = CLIENT_APPLICATION, autocommit: bool = True
    ) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.dsn(application_name=application_name), autocommit=autocommit)

    def setting(self, name: str) -> str:
        """A setting as a new session sees it (SHOW)."""
        with self.connect() as conn:
            row = conn.execute(psycopg.sql.SQL("SHOW {}").format(psycopg.sql.Identifier(name))).fetchone()
        assert row is not None
        return str(row[0])

    @property
    def postmaster(self) -> psutil.Process:
        """The server's parent process; its children are the backends and auxiliary processes."""
        pid = self.cluster.postmaster()
        assert pid is not None, f"the server on port {self.port} is not running"
        return psutil.Process(pid)


@dataclass(frozen=True)
class Tls:
    """A server's certificate and key, and the CA whose client certificates it takes (PEM texts)."""

    certificate: str
    key: str
    ca: str


@contextlib.contextmanager
def running_server(
    *, parameters: dict[str, str] | None = None, any_password: bool = False, tls: Tls | None = None
) -> Iterator[Server]:
    """A fresh server for the length of the block, stopped (fast shutdown) and deleted afterwards.

    With `any_password`, loopback clients are trusted whatever password they give: the server then
    stands in for the pods of many databases, each with a password generated for its own Secret.
    With `tls` as well, it serves TLS and its pg_hba starts as a pod's does: members of the identity
    role log in only with a client certificate of that CA that pg_ident maps to them.
    """
    install = require_postgres()
    user = accounts.for_database(Path("/"), TEST_SERVERS)
    root = Path(tempfile.mkdtemp(prefix="sdb-pg-"))
    accounts.grant_traverse(root)
    cluster = server.Cluster(install=install, user=user, pgdata=root / "pgdata", log=root / "postgres.log")
    password = secrets.token_urlsafe(16)
    port = free_port()
    try:
        settings = dict(parameters or {})
        if tls is not None:
            settings.update(_tls_files(root, user, tls))
        asyncio.run(_start(cluster, password, port, settings, any_password=any_password, tls=tls is not None))
        yield Server(port=port, password=password, cluster=cluster)
    finally:
        asyncio.run(cluster.stop())
        shutil.rmtree(root, ignore_errors=True)


def _tls_files(root: Path, user: accounts.ServerUser, tls: Tls) -> dict[str, str]:
    directory = root / "tls"
    directory.mkdir()
    names = {"ssl_cert_file": "tls.crt", "ssl_key_file": "tls.key", "ssl_ca_file": "ca.crt"}
    texts = {"tls.crt": tls.certificate, "tls.key": tls.key, "ca.crt": tls.ca}
    for name, text in texts.items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o600)
        os.chown(directory / name, user.uid, user.gid)
    os.chown(directory, user.uid, user.gid)
    return {"ssl": "on", **{setting: str(directory / name) for setting, name in names.items()}}


async def _start(
    cluster: server.Cluster,
    password: str,
    port: int,
    parameters: dict[str, str],
    *,
    any_password: bool,
    tls: bool = False,
) -> None:
    await cluster.initdb(password)
    if any_password:  # as a pod's: the operator's session rewrites it (controller.postgres.identities)
        parameters = {"ident_file": str(cluster.pgdata / "pg_ident.conf"), **parameters}
    cluster.write_settings(
        server.Settings(
            port=port,
            shared_buffers="32MB",
            max_connections=50,
            max_worker_processes=8,
            parameters=parameters,
        ),
        hba=(IDENTITY_HBA if tls else "") + (TRUST_LOOPBACK if any_password else PASSWORD_LOOPBACK),
    )
    await cluster.start()


QUIET = {"autovacuum": "off"}
"""Settings for a server whose statistics only clients move: autovacuum workers' transactions count too."""


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[Server]:
    """One real Postgres server shared by a test module (without autovacuum)."""
    with running_server(parameters=QUIET) as server:
        yield server
