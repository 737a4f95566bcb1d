"""The local runtime: a real Postgres server per database, on this host.

Per database, under `<state>/databases/<namespace>/<name>/` (the operator's own directory, mode 0711):
  pgdata/           the data directory (the volume): the server's alone, mode 0700, kept by pause, park,
                    restart and, by default, delete
  postgresql.conf,  the server's whole configuration, written before every start and read-only to it
  pg_hba.conf
  server.json       the operator's record of the server (its port, how far initdb got)
  password          the operator's superuser password; app-password the application role's;
  superuser-password  the clients' superuser's, when spec.superuserAccess (all 0600, never logged)
  runtime.json      the endpoint port, the pooled endpoint's port, the capacity last applied
  pooler/           the database's PgBouncer, with spec.pooling (`pooler`); pooler-password is the
                    operator's login to its admin console
  server.crt, .key  the server's certificate from the operator's CA (<state>/ca/), the key 0640 to
                    the server's group
  pg_ident.conf     which roles the identity endpoint's client certificate may become
  postgres.log      the server's log, 0600
A role's password Secret (spec.roles[].passwordSecret) is a directory, <state>/secrets/<namespace>/<name>/,
holding the files `password` and, optionally, `username`: the layout of a Secret mounted in a pod.
The CA's certificate is published as <state>/ca.crt, for clients (`sdb dsn NAME --verify`); the
gateway's certificate is <state>/gateway.crt (its key gateway.key, 0600). With identities on, each
database also has an identity endpoint (127.0.0.1:<identity port>), where a token is the password;
its client certificate is <state>/ca/identity-client.crt.
The endpoint (127.0.0.1:<endpoint port>) never changes: the activator always listens there, and an
in-kernel redirect sends new connections straight to Postgres while the database is active. As root,
each database's server runs as an account of its own (`accounts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import ssl
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import structlog

from controller import pki
from controller.activator.proxy import Activator, Upstream
from controller.api import types, units
from controller.identity.endpoint import IdentityEndpoint
from controller.policy import sizing
from controller.policy.inputs import Compute, ComputeState, Route
from controller.postgres import declared, encryption, identities, pooler, roles, settings
from controller.postgres.sessions import Address, OperatorSessions
from controller.postgres.usage import Usage
from controller.runtime.base import PermanentError, StepError, TransientError, settings_step
from controller.runtime.local import accounts, files, server
from controller.runtime.local.cgroups import Cgroups
from controller.runtime.local.pooler import Pooler
from controller.runtime.local.redirect import KernelRedirect

log = structlog.get_logger("runtime.local")
HOST = "127.0.0.1"


def operator_id(state_dir: Path) -> str:
    """Names this operator's host-wide objects (nftables table, cgroup subtree) after its state directory."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]


def cgroup_group(state_dir: Path) -> str:
    return f"sdb-{operator_id(state_dir)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Credentials:
    """A database's passwords, as files only the operator (and the user who runs it) can read."""

    directory: Path

    @property
    def operator(self) -> Path:
        return self.directory / "password"

    @property
    def app(self) -> Path:
        return self.directory / "app-password"

    @property
    def superuser(self) -> Path:
        return self.directory / "superuser-password"

    @property
    def pooler(self) -> Path:
        return self.directory / "pooler-password"

    def read(self, path: Path) -> str:
        return path.read_text().strip()

    def ensure(self, path: Path) -> str:
        """The password in `path`, made once (a fresh random one) and never rewritten."""
        if not path.exists():
            files.write_private(path, secrets.token_urlsafe(24) + "\n")
        return self.read(path)


@dataclass
class _Database:
    """What the runtime knows of one database's files and routes."""

    key: str
    directory: Path
    cluster: server.Cluster

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.directory)

    @property
    def pooler(self) -> Pooler:
        return Pooler(directory=self.directory / "pooler", user=self.cluster.user)

    @property
    def state_file(self) -> Path:
        return self.directory / "runtime.json"

    @property
    def cgroup(self) -> str:
        namespace, name = types.split_key(self.key)
        return f"{namespace}.{name}"

    def read_state(self) -> dict[str, Any]:
        try:
            loaded = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def write_state(self, **changes: Any) -> None:
        files.write_private(self.state_file, json.dumps({**self.read_state(), **changes}))


class LocalRuntime:
    name = "local"

    def __init__(
        self,
        state_dir: Path,
        activator: Activator,
        *,
        sessions: OperatorSessions | None = None,
        kernel_redirect: bool = True,
        identity: IdentityEndpoint | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.activator = activator
        self.identity = identity
        self.sessions = sessions or OperatorSessions()
        self.verified = declared.Verified()
        """Passwords already checked against the stored secrets (a resync pass checks every role)."""
        self.cgroups = Cgroups(cgroup_group(state_dir))
        self.redirect = KernelRedirect(operator_id(state_dir), enabled=kernel_redirect)
        self._databases: dict[str, _Database] = {}
        self._routes: dict[str, Route] = {}
        self._installs: dict[str, server.Install] = {}
        self._poolers: dict[str, Pooler] = {}
        self._pool_sizes: dict[str, int] = {}
        """The pool size last set on each running pooler's console."""
        self.authority: pki.KeyPair | None = None

    # -- life of the runtime ---------------------------------------------------------------------

    async def open(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.authority = await asyncio.to_thread(load_authority, self.state_dir)
        if self.identity is not None:
            self.identity.client_tls = await asyncio.to_thread(identity_client_tls, self.state_dir)
        for directory in await asyncio.to_thread(accounts.grant_traverse, self.state_dir):
            log.info("granted the servers' group traversal of a directory", directory=str(directory))
        await asyncio.to_thread(self.cgroups.detect)
        await asyncio.to_thread(self.redirect.open)
        log.info(
            "local runtime ready",
            state_dir=str(self.state_dir),
            limits=self.cgroups.message,
            endpoints=self.redirect.message,
            servers="one account per database" if accounts.isolating() else "this process's account",
        )

    async def close(self) -> None:
        """Stop every pooler and server cleanly and drop the redirect table; data stays for the next start."""
        for key, running in list(self._poolers.items()):
            log.info("stopping the pooler", database=key)
            await running.stop()
        for database in list(self._databases.values()):
            if database.cluster.postmaster() is not None:
                log.info("stopping Postgres", database=database.key)
                with contextlib.suppress(TransientError):
                    await database.cluster.stop()
        await asyncio.to_thread(self.redirect.close)
        await asyncio.to_thread(self.cgroups.remove_all)

    def _database(self, db: types.ServerlessDatabase) -> _Database:
        known = self._databases.get(db.key)
        if known is not None:
            return known
        directory = database_directory(self.state_dir, db.key)
        database = _Database(
            key=db.key,
            directory=directory,
            cluster=server.Cluster(
                install=self._install(db, directory / "pgdata"),
                user=accounts.for_database(self.state_dir, db.key),
                pgdata=directory / "pgdata",
                log=directory / "postgres.log",
            ),
        )
        self._databases[db.key] = database
        return database

    def _install(self, db: types.ServerlessDatabase, pgdata: Path) -> server.Install:
        # An existing data directory decides the version: its files need the binaries that made them.
        version = (files.read_untrusted(pgdata / "PG_VERSION") or "").strip() or db.spec.postgres.version
        if version not in self._installs:
            self._installs[version] = server.Install.find(version)
        return self._installs[version]

    # -- observation -----------------------------------------------------------------------------

    async def observe(self, db: types.ServerlessDatabase) -> ComputeState:
        database = self._database(db)
        cluster = database.cluster
        state = database.read_state()
        endpoint_port = state.get("endpointPort")
        if cluster.initialized and endpoint_port and self.activator.listening(db.key) is None:
            await self._listen(database, int(endpoint_port))
        if cluster.initialized and self.identity is not None and self.identity.listening(db.key) is None:
            await self._listen_identity(db, database)
        if not cluster.initialized:
            compute = Compute.ABSENT
        elif cluster.ready():
            compute = Compute.RUNNING
        elif cluster.postmaster() is not None:
            compute = Compute.STARTING
        else:
            compute = Compute.STOPPED if state.get("provisioned", False) else Compute.ABSENT
        storage = cluster.initialized and endpoint_port is not None
        pooler_message = await self._serve_pooled(db, database) if storage else ""
        pooler_port = database.read_state().get("poolerPort") if db.spec.pooling.enabled else None
        return ComputeState(
            # Storage is whole with its endpoint: a database whose record went missing gets one again.
            storage=storage,
            compute=compute,
            route=self._routes.get(db.key, Route.ACTIVATOR),
            capacity=state.get("capacity") if compute is Compute.RUNNING else None,
            incarnation=cluster.incarnation() if compute is Compute.RUNNING else "",
            limits_enforced=self.cgroups.enforced,
            limits_message=self.cgroups.message,
            endpoint=f"{HOST}:{endpoint_port}" if endpoint_port else "",
            pooler_message=pooler_message,
            pooled_endpoint=f"{HOST}:{pooler_port}" if isinstance(pooler_port, int) else "",
        )

    # -- the pooled endpoint ---------------------------------------------------------------------

    async def _serve_pooled(self, db: types.ServerlessDatabase, database: _Database) -> str:
        """Keep the database's pooler as its spec says, at the pool size of its current capacity;
        returns why it does not serve when it should ("" when it does, or is not asked for)."""
        try:
            await self._pool(db, database)
        except (StepError, OSError, psycopg.Error) as error:
            message = error.message if isinstance(error, StepError) else str(error)
            log.warning("the pooled endpoint does not serve", database=db.key, error=message)
            return f"the pooled endpoint does not serve: {message}"
        return ""

    async def _pool(self, db: types.ServerlessDatabase, database: _Database) -> None:
        running = self._poolers.get(db.key) or database.pooler
        if not db.spec.pooling.enabled:
            if running.pid() is not None or running.directory.exists():
                log.info("stopping the pooler: spec.pooling.enabled is false", database=db.key)
                await running.stop()
                await asyncio.to_thread(running.remove)
            self._poolers.pop(db.key, None)
            self._pool_sizes.pop(db.key, None)
            return
        self._poolers[db.key] = running
        state = database.read_state()
        port = state.get("poolerPort")
        if not isinstance(port, int):
            port = free_port()
            database.write_state(poolerPort=port)
        # A paused database's pool is sized for its floor; a wake brings it to the size it runs at.
        capacity = float(state.get("capacity") or db.spec.capacity.min)
        ini, users = await asyncio.to_thread(self._pooler_files, db, database, port)
        changed = await asyncio.to_thread(running.write, ini, users)
        console = self._console(database, port)
        if running.pid() is None:
            if (why := running.exited()) is not None:
                log.warning("the pooler exited; starting it again", database=db.key, error=why)
            await running.start(port=port)
            self._pool_sizes[db.key] = sizing.pool_size(db.spec, capacity)
            log.info("pooler started", database=db.key, port=port, pool=self._pool_sizes[db.key])
            return
        if changed:
            await pooler.reload(console)
        pool = sizing.pool_size(db.spec, capacity)
        if self._pool_sizes.get(db.key) != pool:
            await pooler.resize(console, pool)
            log.info("pool resized", database=db.key, pool=pool, capacity=capacity)
            self._pool_sizes[db.key] = pool

    def _pooler_files(self, db: types.ServerlessDatabase, database: _Database, port: int) -> tuple[str, str]:
        credentials = database.credentials
        endpoint_port = database.read_state()["endpointPort"]
        certificate, key = self._server_certificate(db, database)
        layout = pooler.Layout(
            listen_address=HOST,
            listen_port=port,
            server_host=HOST,
            server_port=int(endpoint_port),
            auth_file=str(database.pooler.users),
            tls=pooler.Tls(str(certificate), str(key), str(self.state_dir / CA_CERTIFICATE)),
        )
        capacity = float(database.read_state().get("capacity") or db.spec.capacity.min)
        verifiers = {roles.APP_ROLE: roles.role_verifier(credentials.ensure(credentials.app))}
        if db.spec.superuser_access:
            verifiers[roles.SUPERUSER_ROLE] = roles.role_verifier(credentials.ensure(credentials.superuser))
        secrets_ = pooler.Secrets(verifiers, credentials.ensure(credentials.pooler))
        return pooler.render(db.spec, capacity, layout), pooler.auth_file(secrets_)

    def _console(self, database: _Database, port: int) -> pooler.Console:
        credentials = database.credentials
        return pooler.Console(HOST, port, credentials.ensure(credentials.pooler))

    def pooled(self) -> Collection[str]:
        return self._poolers.keys()

    def pooler_console(self, db: types.ServerlessDatabase) -> pooler.Console | None:
        """Where the operator reads the pooler's statistics, while it runs."""
        database = self._database(db)
        running = self._poolers.get(db.key)
        port = database.read_state().get("poolerPort")
        if running is None or not isinstance(port, int) or running.pid() is None:
            return None
        return self._console(database, port)

    async def _listen(self, database: _Database, port: int) -> None:
        try:
            await self.activator.listen(database.key, HOST, port)
        except OSError as error:
            # The port was taken while the operator was away: the endpoint has to move.
            new_port = await self.activator.listen(database.key, HOST, 0)
            database.write_state(endpointPort=new_port)
            log.warning(
                "endpoint port was taken; endpoint moved",
                database=database.key,
                old_port=port,
                new_port=new_port,
                error=str(error),
            )

    async def _listen_identity(self, db: types.ServerlessDatabase, database: _Database) -> None:
        """The database's identity endpoint, on the port it had (a new one if that is taken)."""
        assert self.identity is not None
        certificate, key = await asyncio.to_thread(self._server_certificate, db, database)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(certificate, key)
        port = database.read_state().get("identityPort")
        try:
            listening = await self.identity.listen(db.key, HOST, int(port or 0), tls)
        except OSError:
            listening = await self.identity.listen(db.key, HOST, 0, tls)
        if listening != port:
            database.write_state(identityPort=listening)

    # -- storage ---------------------------------------------------------------------------------

    async def create_storage(self, db: types.ServerlessDatabase) -> None:
        database = self._database(db)
        database.directory.mkdir(parents=True, exist_ok=True)
        database.directory.chmod(0o711)
        await database.cluster.initdb(database.credentials.ensure(database.credentials.operator))
        state = database.read_state()
        if "endpointPort" not in state:
            database.write_state(endpointPort=await self.activator.listen(db.key, HOST, 0))
        else:
            await self._listen(database, int(state["endpointPort"]))
        if self.identity is not None:
            await self._listen_identity(db, database)

    # -- compute ---------------------------------------------------------------------------------

    async def provision(self, db: types.ServerlessDatabase) -> None:
        database = self._database(db)
        self.cgroups.ensure(database.cgroup, owner=None)
        database.write_state(provisioned=True)

    async def start(self, db: types.ServerlessDatabase, capacity: float) -> None:
        database = self._database(db)
        cluster = database.cluster
        if (
            cluster.data_version
            and db.spec.postgres.version
            and cluster.data_version != db.spec.postgres.version
        ):
            raise PermanentError(
                types.Reason.START_FAILED,
                f"the data directory is Postgres {cluster.data_version}; spec.postgres.version "
                f"{db.spec.postgres.version} needs an upgrade, which this runtime does not do",
            )
        procs: list[Path] = []
        if cluster.postmaster() is None:
            await asyncio.to_thread(cluster.adopt)
            fixed = sizing.restart_settings(db.spec)
            cluster.write_settings(
                server.Settings(
                    port=free_port(),
                    shared_buffers=fixed["shared_buffers"],
                    max_connections=int(fixed["max_connections"]),
                    max_worker_processes=int(fixed["max_worker_processes"]),
                    parameters=db.spec.postgres.parameters,
                    tls=await asyncio.to_thread(self._server_certificate, db, database),
                    client_ca=self.state_dir / CA_CERTIFICATE,
                ),
                hba=server.with_identities(server.HBA) if self.identity is not None else server.HBA,
                ident=self._ident(db),
            )
            user = cluster.user
            procs = self.cgroups.ensure(
                database.cgroup, owner=(user.uid, user.gid) if user.switches else None
            )
            # Startup boost: start at the ceiling's CPU, so a quarter-core floor does not throttle a wake.
            self._set_limits(database, max(capacity, db.spec.capacity.max))
        database.write_state(provisioned=True)
        if self.identity is not None:  # the certificate may just have been issued again
            await self._listen_identity(db, database)
        await cluster.start(cgroup_procs=procs)
        self._set_limits(database, capacity)
        database.write_state(capacity=capacity)
        await self._follow_capacity(db, database)

    def _set_limits(self, database: _Database, capacity: float) -> None:
        try:
            self.cgroups.set_limits(
                database.cgroup,
                cpu_cores=capacity * units.CPU_PER_CU,
                memory_bytes=int(capacity * units.MEMORY_PER_CU),
            )
        except OSError as error:
            raise TransientError(
                types.Reason.RESIZE_FAILED, f"the kernel refused limits of {capacity:g} CU: {error}"
            ) from error

    def _server_certificate(self, db: types.ServerlessDatabase, database: _Database) -> tuple[Path, Path]:
        """The server's certificate for its endpoint's names, issued (again) when missing or ending soon."""
        if self.authority is None:
            raise RuntimeError("LocalRuntime.open() was not called")
        certificate, key = database.directory / "server.crt", database.directory / "server.key"
        names = [HOST, "localhost", f"{db.metadata.name}.{db.metadata.namespace}"]
        issue_certificate(self.authority, certificate, key, names, key_mode=0o640)
        # Postgres takes a root-owned key readable by its group; no other account can read it.
        user = database.cluster.user
        if user.switches:
            os.chown(key, 0, user.gid, follow_symlinks=False)
        return certificate, key

    def gateway_certificate(self, names: list[str]) -> tuple[Path, Path]:
        """The gateway's certificate for the names it is reached by (<state>/gateway.crt, .key 0600)."""
        if self.authority is None:
            raise RuntimeError("LocalRuntime.open() was not called")
        certificate, key = self.state_dir / "gateway.crt", self.state_dir / "gateway.key"
        issue_certificate(self.authority, certificate, key, names, key_mode=0o600)
        return certificate, key

    def address(self, db: types.ServerlessDatabase) -> Address | None:
        """Where the operator reaches the server while it runs, and with which password."""
        return self._address(self._database(db))

    def _address(self, database: _Database) -> Address | None:
        port = database.cluster.running_port()
        credentials = database.credentials
        return Address(HOST, port, credentials.read(credentials.operator)) if port else None

    async def _settings(self, database: _Database, capacity: float) -> None:
        address = self._address(database)
        if address is None:
            raise TransientError(types.Reason.SETTINGS_FAILED, "Postgres is not running")
        async with settings_step():
            await settings.configure(self.sessions, database.key, address, capacity)

    async def configure(
        self, db: types.ServerlessDatabase, capacity: float, *, access: bool
    ) -> declared.Report | None:
        database = self._database(db)
        # A stop leaves the wake's settings in place: a wake at that size finds them and needs no session.
        if database.cluster.persisted_settings() != sizing.reloadable_settings(capacity):
            await self._settings(database, capacity)
        return await self._access(db, database) if access else None

    async def _access(self, db: types.ServerlessDatabase, database: _Database) -> declared.Report:
        address = self._address(database)
        if address is None:
            raise TransientError(types.Reason.SETTINGS_FAILED, "Postgres is not running")
        credentials = database.credentials
        desired = roles.Desired(
            app_password=credentials.ensure(credentials.app),
            superuser_password=credentials.ensure(credentials.superuser)
            if db.spec.superuser_access
            else None,
        )
        if not db.spec.superuser_access:
            credentials.superuser.unlink(missing_ok=True)
        async with settings_step():
            await roles.apply(self.sessions, db.key, address, desired)
            wanted = declared.desired(db.spec, await asyncio.to_thread(self._role_credentials, db))
            report = await declared.apply(
                self.sessions, db.key, address, wanted, salt=secrets.token_bytes(16), verified=self.verified
            )
            # After the declared roles: those that log in get plaintext, or not, as the others do.
            await encryption.apply(self.sessions, db.key, address, required=db.spec.tls.required)
            # Which roles the identity endpoint may become is in pg_ident.conf, which a reload reads.
            if database.cluster.write_ident(self._ident(db)):
                await self.sessions.reload(db.key, address)
            return report

    def _ident(self, db: types.ServerlessDatabase) -> str:
        """pg_ident.conf for the spec: the roles bound to identities, when there is an identity endpoint."""
        roles = [i.role for i in db.spec.access.identities] if self.identity is not None else []
        return identities.ident_rules(IDENTITY_CLIENT_NAME, roles)

    async def _follow_capacity(self, db: types.ServerlessDatabase, database: _Database) -> None:
        """The pool follows the size at once, not at the next pass (which reports it if it cannot)."""
        if db.spec.pooling.enabled:
            await self._serve_pooled(db, database)

    def _role_credentials(self, db: types.ServerlessDatabase) -> dict[str, declared.Credential]:
        """The password Secrets the spec names, as files: <state>/secrets/<namespace>/<name>/password
        (and username), the layout of a Secret mounted in a pod."""
        namespace = db.metadata.namespace
        return {
            name: read_secret(self.state_dir / SECRETS_DIRECTORY / namespace / name)
            for name in sorted({r.password_secret for r in db.spec.roles if r.password_secret})
        }

    async def resize(self, db: types.ServerlessDatabase, capacity: float) -> None:
        database = self._database(db)

        async def limits(size: float) -> bool:
            self._set_limits(database, size)
            return True  # a cgroup's limits hold from the write on

        async def apply(size: float) -> None:
            await self._settings(database, size)

        await settings.resize(
            previous=database.read_state().get("capacity"), capacity=capacity, limits=limits, settings=apply
        )
        database.write_state(capacity=capacity)
        await self._follow_capacity(db, database)

    async def route(self, db: types.ServerlessDatabase, route: Route) -> None:
        database = self._database(db)
        endpoint_port = database.read_state().get("endpointPort")
        if endpoint_port is None:
            raise TransientError(types.Reason.START_FAILED, "no endpoint port yet")
        try:
            if route is Route.DIRECT:
                postgres_port = database.cluster.running_port()
                if postgres_port is None:
                    raise TransientError(types.Reason.START_FAILED, "Postgres is not running")
                await self.redirect.direct(int(endpoint_port), postgres_port)
            else:
                await self.redirect.to_activator(int(endpoint_port))
        except OSError as error:
            raise TransientError(
                types.Reason.START_FAILED, f"could not switch the endpoint: {error}"
            ) from error
        self._routes[db.key] = route

    async def stop(self, db: types.ServerlessDatabase, *, resume_at: float) -> None:
        """Stop cleanly, leaving the wake's settings in place so it needs no ALTER SYSTEM."""
        database = self._database(db)
        address = self._address(database)
        if address is not None:
            await settings.prepare_wake(self.sessions, db.key, address, resume_at)
        await database.cluster.stop()

    async def release(self, db: types.ServerlessDatabase) -> None:
        database = self._database(db)
        await database.cluster.stop()
        self.cgroups.remove(database.cgroup)
        database.write_state(provisioned=False, capacity=None)

    async def delete(self, db: types.ServerlessDatabase, *, keep_storage: bool) -> None:
        database = self._database(db)
        if database.read_state().get("endpointPort"):
            await self.route(db, Route.ACTIVATOR)
        await self.activator.unlisten(db.key)
        if self.identity is not None:
            await self.identity.unlisten(db.key)
        await database.pooler.stop()
        await asyncio.to_thread(database.pooler.remove)
        self._poolers.pop(db.key, None)
        self._pool_sizes.pop(db.key, None)
        await database.cluster.stop()
        self.cgroups.remove(database.cgroup)
        self._routes.pop(db.key, None)
        self._databases.pop(db.key, None)
        if not keep_storage:
            await asyncio.to_thread(shutil.rmtree, database.directory, True)
            await asyncio.to_thread(accounts.remove, self.state_dir, db.key)

    def running(self, key: str) -> Upstream | None:
        """Postgres's own address while it accepts connections, however the endpoint routes them."""
        database = self._databases.get(key)
        port = database.cluster.running_port() if database is not None and database.cluster.ready() else None
        return Upstream(HOST, port) if port else None

    def routed_direct(self, key: str) -> bool:
        """Whether the endpoint leads straight to Postgres (it is switched away before Postgres stops),
        known without a look at the server's process."""
        return self._routes.get(key) is Route.DIRECT

    def upstream(self, key: str) -> Upstream | None:
        """Where a connection goes now without a wake: Postgres, while the endpoint leads straight to it."""
        return self.running(key) if self._routes.get(key) is Route.DIRECT else None

    def usage(self, db: types.ServerlessDatabase) -> Usage | None:
        """CPU and memory from the database's cgroup, or from its process tree where it has none."""
        database = self._database(db)
        return self.cgroups.usage(database.cgroup) or database.cluster.process_usage()


CA_DIRECTORY = "ca"
CA_CERTIFICATE = "ca.crt"
"""Published at the state directory's top: what clients trust (`sslrootcert`)."""


def load_authority(state_dir: Path) -> pki.KeyPair:
    """The state directory's CA, made on first use; its key never leaves <state>/ca/ (0600)."""
    directory = state_dir / CA_DIRECTORY
    try:
        authority = pki.KeyPair((directory / "ca.crt").read_text(), (directory / "ca.key").read_text())
    except FileNotFoundError:
        authority = pki.new_authority(f"serverless-db {operator_id(state_dir)}", now=units.now_utc())
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        files.write_private(directory / "ca.key", authority.key)
        files.write_private(directory / "ca.crt", authority.certificate, mode=0o644)
    files.write_private(state_dir / CA_CERTIFICATE, authority.certificate, mode=0o644)
    return authority


def issue_certificate(
    authority: pki.KeyPair, certificate: Path, key: Path, names: list[str], *, key_mode: int
) -> None:
    """A server certificate for `names` at these paths, issued (again) when missing, ending soon or not
    for every name; the last name is its common name."""
    now = units.now_utc()
    try:
        current = pki.KeyPair(certificate.read_text(), key.read_text())
    except FileNotFoundError:
        current = None
    if pki.needs_renewal(current, names, now=now):
        issued = pki.issue(authority, common_name=names[-1], names=names, now=now)
        files.write_private(key, issued.key, mode=key_mode)
        files.write_private(certificate, issued.certificate, mode=0o644)


IDENTITY_CLIENT_NAME = "serverless-db-identity-endpoint"
"""The identity endpoint's client certificate's CN: what pg_ident maps to the roles bound to identities."""


def identity_client_tls(state_dir: Path) -> ssl.SSLContext:
    """The identity endpoint's TLS to Postgres: trusts the CA, presents the endpoint's client certificate
    (issued on first use, kept in <state>/ca/, 0600)."""
    authority = load_authority(state_dir)
    directory = state_dir / CA_DIRECTORY
    certificate, key = directory / "identity-client.crt", directory / "identity-client.key"
    now = units.now_utc()
    try:
        current: pki.KeyPair | None = pki.KeyPair(certificate.read_text(), key.read_text())
    except FileNotFoundError:
        current = None
    if current is None or current.not_after() - now < pki.RENEW_BEFORE:
        issued = pki.issue(authority, common_name=IDENTITY_CLIENT_NAME, client=True, now=now)
        files.write_private(key, issued.key)
        files.write_private(certificate, issued.certificate)
    tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(directory / "ca.crt"))
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.load_cert_chain(certificate, key)
    return tls


SECRETS_DIRECTORY = "secrets"
SECRET_READ_LIMIT = 4096


def read_secret(directory: Path) -> declared.Credential:
    """A role's password Secret as files (`password`, and `username` when it names the user)."""
    if not directory.is_dir():
        return declared.Credential(problem=f"the password Secret {directory.name} was not found")
    values: dict[str, str | None] = {}
    for key in ("username", "password"):
        try:
            with open(directory / key, encoding="utf-8") as file:
                text = file.read(SECRET_READ_LIMIT + 1)
        except FileNotFoundError:
            values[key] = None
            continue
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8"
            return declared.Credential(
                problem=f"the password Secret {directory.name} cannot be read: {reason}"
            )
        if len(text) > SECRET_READ_LIMIT:
            return declared.Credential(problem=f"the password Secret {directory.name} is too large")
        values[key] = text.removesuffix("\n")
    return declared.Credential(values["username"], values["password"])


def database_directory(state_dir: Path, key: str) -> Path:
    namespace, name = types.split_key(key)
    return state_dir / "databases" / namespace / name


@dataclass(frozen=True)
class Endpoint:
    """What a client needs to reach a database, for the CLI (no operator needed): port, role, password."""

    port: int
    user: str
    database: str
    password: str
    identity_port: int | None = None
    """The identity endpoint's port, where a token is the password; None without one."""


def read_endpoint(
    state_dir: Path, key: str, *, superuser: bool = False, pooled: bool = False
) -> Endpoint | None:
    """The application role's way in (or the clients' superuser's), from the database's files; with
    `pooled`, through its pooler's port."""
    directory = database_directory(state_dir, key)
    credentials = Credentials(directory)
    try:
        state = json.loads((directory / "runtime.json").read_text())
        password = credentials.read(credentials.superuser if superuser else credentials.app)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    port = state.get("poolerPort" if pooled else "endpointPort")
    if not isinstance(port, int):
        return None
    identity = state.get("identityPort")
    identity_port = identity if isinstance(identity, int) else None
    if superuser:
        return Endpoint(port, roles.SUPERUSER_ROLE, "postgres", password, identity_port)
    return Endpoint(port, roles.APP_ROLE, roles.APP_DATABASE, password, identity_port)


def read_direct_port(state_dir: Path, key: str) -> int | None:
    """Postgres's own port while its server runs, from the operator's record of it (for the CLI)."""
    directory = database_directory(state_dir, key)
    try:
        port = json.loads((directory / "server.json").read_text()).get("port")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    running = files.read_untrusted(directory / "pgdata" / "postmaster.pid") is not None
    return port if isinstance(port, int) and running else None


PASSFILE = "pgpass"


def remember_password(state_dir: Path, *, port: int, endpoint: Endpoint) -> Path:
    """Keep an endpoint's password in the state directory's passfile (libpq's format, mode 0600)."""
    path = state_dir / PASSFILE

    def escaped(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    entry = ":".join(escaped(v) for v in (HOST, str(port), endpoint.database, endpoint.user))
    try:
        kept = [line for line in path.read_text().splitlines() if not line.startswith(entry + ":")]
    except FileNotFoundError:
        kept = []
    files.write_private(path, "\n".join([*kept, f"{entry}:{escaped(endpoint.password)}"]) + "\n")
    return path
