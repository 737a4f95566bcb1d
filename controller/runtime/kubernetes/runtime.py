"""The Kubernetes runtime: a StatefulSet per database, resized in place, paused by scaling to zero and
parked by deleting its compute objects; the client Service's EndpointSlice points at the pod while
the database is active and at the activator while it rests.

Reads come from informer caches; each step writes each object at most once, and not at all when
what is observed already matches (server-side apply with the operator's field manager). A step that
follows a write waits for the watch to bring that write back (`Informer.expect`), so it never
decides from what it has just changed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import structlog

from controller.api import types, units
from controller.policy import sizing
from controller.policy.inputs import Compute, ComputeState, ResizeState, Route
from controller.postgres import declared, encryption, identities, pooler, roles, settings
from controller.postgres.sessions import Address, OperatorSessions
from controller.runtime.base import PermanentError, StepError, TransientError, settings_step
from controller.runtime.kubernetes import builders, projection
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes import pooler as pooled
from controller.runtime.kubernetes.builders import Endpoint, Names
from controller.runtime.kubernetes.certificates import Certificates
from controller.runtime.kubernetes.informer import Informer

log = structlog.get_logger("runtime.kubernetes")

READ_OWN_WRITE_SECONDS = 2.0
"""How long a step waits for the watch to bring the runtime's own last write before it goes on."""

Locate = Callable[[Mapping[str, Any]], tuple[str, int] | None]
"""Where the operator reaches a pod's Postgres: (host, port), or None while it has no address."""
LocatePooler = Callable[[types.ServerlessDatabase], tuple[str, int]]
"""Where the operator reaches a database's pooler's admin console: (host, port)."""
POOLER_CONSOLE_SSLMODE = "require"


def pooler_service(db: types.ServerlessDatabase) -> tuple[str, int]:
    return (f"{Names.of(db.metadata.name).pooler}.{db.metadata.namespace}.svc", pooled.PORT)


def pod_address(pod: Mapping[str, Any]) -> tuple[str, int] | None:
    ip = (pod.get("status") or {}).get("podIP")
    return (str(ip), builders.POSTGRES_PORT) if ip else None


@dataclass
class Informers:
    """The caches the runtime reads from, kept by list-then-watch."""

    databases: Informer
    statefulsets: Informer
    deployments: Informer
    """The poolers' Deployments."""
    pods: Informer
    endpointslices: Informer
    activator: Informer
    """The activator Service's EndpointSlices: where resting databases' connections go."""
    wakes: Informer
    """WakeRequests: clients waiting for resting databases."""

    def all(self) -> list[Informer]:
        return [
            self.databases,
            self.wakes,
            self.statefulsets,
            self.deployments,
            self.pods,
            self.endpointslices,
            self.activator,
        ]


class KubernetesRuntime:
    name = "kubernetes"

    def __init__(
        self,
        kube: kc.Kube,
        informers: Informers,
        *,
        sessions: OperatorSessions | None = None,
        port_range: tuple[int, int] = builders.ACTIVATOR_PORTS,
        locate: Locate = pod_address,
        system_namespace: str = "sdb-system",
        certificates: Certificates | None = None,
        pooler_image: str = pooled.IMAGE,
        locate_pooler: LocatePooler = pooler_service,
        gateway_endpoint: str = "",
    ) -> None:
        """`system_namespace`: where the operator and the activator run (their pods may reach Postgres);
        `certificates`: who issues the servers' certificates (default: the operator's own CA);
        `pooler_image`: the PgBouncer image of pooled endpoints."""
        self.kube = kube
        self.certificates = certificates or Certificates(kube, system_namespace=system_namespace)
        self.informers = informers
        self.sessions = sessions or OperatorSessions()
        self.verified = declared.Verified()
        """Passwords already checked against the stored secrets (a resync pass checks every role)."""
        self.port_range = port_range
        self.locate = locate
        self.system_namespace = system_namespace
        self.gateway_endpoint = gateway_endpoint
        """The activator gateway's `/sql` URL, as every database's status tells it (empty: none)."""
        self.in_place_resize = False
        self._passwords: dict[str, str] = {}
        self._claimed: dict[str, int] = {}
        """Per database, the activator port its status records."""
        self._by_port: dict[int, set[str]] = {}
        self._created: dict[str, str] = {}
        self._proposed: dict[str, int] = {}
        """Ports assigned and not yet in status: no other database is given them meanwhile."""
        self.pooler_image = pooler_image
        self.locate_pooler = locate_pooler
        self._pooler_admin: dict[str, str] = {}
        """Per pooled database, the operator's console password (read from its Secret once)."""
        self._pooler_written: dict[str, str] = {}
        """Per pooled database, a digest of the Secret, Service and NetworkPolicy as last written."""
        self._pool_sizes: dict[str, int] = {}
        """The pool size last set on each pooler's console."""
        self._pooler_logins: dict[str, tuple[str | None, str | None]] = {}
        """Per pooled database, the passwords of the roles its clients log in as (never rewritten)."""
        self._caches = {
            kc.STATEFULSETS.kind: informers.statefulsets,
            kc.DEPLOYMENTS.kind: informers.deployments,
            kc.ENDPOINTSLICES.kind: informers.endpointslices,
        }

    async def open(self) -> None:
        await self.certificates.open()
        major, minor = await asyncio.to_thread(self.kube.server_version)
        has_resize = await asyncio.to_thread(self.kube.has_subresource, kc.PODS, "resize")
        self.in_place_resize = (major, minor) >= (1, 33) and has_resize
        log.info("kubernetes runtime ready", server=f"{major}.{minor}", in_place_resize=self.in_place_resize)

    async def close(self) -> None:
        """Databases keep running while the operator is away; nothing to stop."""

    # -- reading ---------------------------------------------------------------------------------

    def _pod(self, db: types.ServerlessDatabase) -> dict[str, Any] | None:
        return self.informers.pods.get(db.metadata.namespace, Names.of(db.metadata.name).pod)

    def _statefulset(self, db: types.ServerlessDatabase) -> dict[str, Any] | None:
        return self.informers.statefulsets.get(db.metadata.namespace, Names.of(db.metadata.name).statefulset)

    def _slice(self, db: types.ServerlessDatabase) -> dict[str, Any] | None:
        return self.informers.endpointslices.get(
            db.metadata.namespace, Names.of(db.metadata.name).endpointslice
        )

    async def _password(self, db: types.ServerlessDatabase) -> str | None:
        """The operator's own credential (read once per database, then from memory)."""
        known = self._passwords.get(db.key)
        if known is None:
            known = await self._secret_password(db, Names.of(db.metadata.name).secret)
            if known is not None:
                self._passwords[db.key] = known
        return known

    async def _secret_password(self, db: types.ServerlessDatabase, name: str) -> str | None:
        found = await asyncio.to_thread(self.kube.get, kc.SECRETS, db.metadata.namespace, name)
        if found is None or not _ours(found, db.metadata.name):
            return None
        return _decoded(found, "password")

    async def _delete_ours(self, db: types.ServerlessDatabase, kind: kc.Kind, name: str) -> None:
        """Delete an object only if it is this database's (by its labels), and only that very object."""
        found = await asyncio.to_thread(self.kube.get, kind, db.metadata.namespace, name)
        if found is None:
            return
        if not _ours(found, db.metadata.name):
            log.warning(
                "not deleting an object that is not this database's",
                database=db.key,
                kind=kind.kind,
                name=name,
            )
            return
        uid = str(found["metadata"].get("uid") or "")
        await asyncio.to_thread(self.kube.delete, kind, db.metadata.namespace, name, uid=uid)

    async def _ensure_secret(self, db: types.ServerlessDatabase, name: str, *, username: str) -> str:
        """A credential's password: the Secret's, or a fresh one in a new Secret (never rewritten).

        A Secret of that name the operator did not make for this database is never read as its own:
        its author would know the password.
        """
        found = await asyncio.to_thread(self.kube.get, kc.SECRETS, db.metadata.namespace, name)
        if found is not None:
            _check_ours(found, builders.secret(db, name, username=username, password=""))
            return _decoded(found, "password")
        password = secrets.token_urlsafe(24)
        try:
            await asyncio.to_thread(
                self.kube.create,
                kc.SECRETS,
                builders.secret(db, name, username=username, password=password),
            )
        except kc.ApiError as error:
            if error.status != 409:
                raise _transient(error) from error
            return await self._ensure_secret(db, name, username=username)  # made meanwhile: read it
        return password

    async def observe(self, db: types.ServerlessDatabase) -> ComputeState:
        names = Names.of(db.metadata.name)
        namespace = db.metadata.namespace
        for informer, name in (
            (self.informers.statefulsets, names.statefulset),
            (self.informers.endpointslices, names.endpointslice),
            (self.informers.pods, names.pod),
            (self.informers.deployments, names.pooler),
        ):
            await informer.settled(f"{namespace}/{name}", timeout=READ_OWN_WRITE_SECONDS)
        sts, pod = self._statefulset(db), self._pod(db)
        compute = _compute(sts, pod)
        # Storage is made once, its EndpointSlice last: that slice says the Secret and Service exist.
        storage = self._slice(db) is not None
        if compute is Compute.RUNNING:
            await self._password(db)  # the operator's own sessions need it from now on
        else:
            self._passwords.pop(db.key, None)  # only a running database's is kept in memory
        resize = _Resize()
        if pod is not None and compute is Compute.RUNNING:
            resize = _resize_of(pod)
        # A resting database's pool is sized for its floor; a wake brings it to the size it runs at.
        pool_capacity = resize.actual or db.spec.capacity.min
        pooler_message = await self._serve_pooled(db, pool_capacity) if storage else ""
        return ComputeState(
            storage=storage,
            compute=compute,
            route=self._route(db, pod),
            capacity=resize.actual,
            incarnation=str(pod["metadata"].get("uid", ""))
            if pod is not None and compute is Compute.RUNNING
            else "",
            resize=resize.state,
            resize_message=resize.message,
            resize_wanted=resize.wanted if resize.state is not ResizeState.NONE else None,
            resize_pending_since=resize.pending_since,
            endpoint=f"{db.metadata.name}.{db.metadata.namespace}.svc:{builders.POSTGRES_PORT}",
            activator_port=self._activator_port(db),
            pooler_message=pooler_message,
            pooled_endpoint=pooled.endpoint(db) if db.spec.pooling.enabled and storage else "",
            http_endpoint=self.gateway_endpoint,
        )

    # -- the pooled endpoint ---------------------------------------------------------------------

    async def _serve_pooled(self, db: types.ServerlessDatabase, capacity: float) -> str:
        """Keep the database's pooler as its spec says, its pool sized for `capacity`; returns why the
        pooled endpoint does not serve when it is asked for ("" when it does, or is not asked for)."""
        try:
            if db.spec.pooling.enabled:
                return await self._pool(db, capacity)
            await self._unpool(db)
        except kc.ApiError as error:
            log.warning("the pooler's objects are not kept", database=db.key, error=str(error))
            return f"the pooled endpoint is not kept: the API server refused: {error}"
        except (psycopg.Error, OSError) as error:
            log.warning("the pooler's console did not answer", database=db.key, error=str(error))
            return f"the pooler's console did not take the pool size: {error}"
        except StepError as error:  # an object of its name that is not the database's
            log.warning("the pooled endpoint is not kept", database=db.key, error=error.message)
            return f"the pooled endpoint is not kept: {error.message}"
        return ""

    async def _pool(self, db: types.ServerlessDatabase, capacity: float) -> str:
        names = Names.of(db.metadata.name)
        namespace = db.metadata.namespace
        admin = await self._pooler_admin_password(db)
        app, superuser = self._pooler_logins.get(db.key) or (None, None)
        if app is None or (db.spec.superuser_access and superuser is None):
            app = await self._secret_password(db, names.app_secret)
            if db.spec.superuser_access:
                superuser = await self._secret_password(db, names.superuser_secret)
            if app is None:
                return f"the pooled endpoint waits for the Secret {names.app_secret}"
            self._pooler_logins[db.key] = (app, superuser)
        if not db.spec.superuser_access:
            superuser = None
        files = pooled.files(
            db, capacity, app_password=app, superuser_password=superuser, admin_password=admin
        )
        secret, policy, service, deployment = pooled.objects(
            db, files, admin_password=admin, system_namespace=self.system_namespace, image=self.pooler_image
        )
        # Not watched: read, and written where they differ, only when what they should hold changes.
        unwatched = [
            (kc.SECRETS, secret),
            (kc.NETWORK_POLICIES, policy),
            (kc.SERVICES, service),
            (kc.NETWORK_POLICIES, builders.network_policy(db, system_namespace=self.system_namespace)),
        ]
        digest = _digest([desired for _, desired in unwatched])
        if self._pooler_written.get(db.key) != digest:
            for kind, desired in unwatched:
                await self._ensure(kind, desired)
            self._pooler_written[db.key] = digest
        observed = self.informers.deployments.get(namespace, names.pooler)
        await self._ensure(kc.DEPLOYMENTS, deployment, observed)
        if not _serving(observed):
            self._pool_sizes.pop(db.key, None)  # a pod that comes up reads the pool size from its file
            return "the pooled endpoint has no ready PgBouncer pod yet"
        pool = sizing.pool_size(db.spec, capacity)
        if self._pool_sizes.get(db.key) != pool:
            host, port = self.locate_pooler(db)
            await pooler.resize(pooler.Console(host, port, admin, sslmode=POOLER_CONSOLE_SSLMODE), pool)
            log.info("pool resized", database=db.key, pool=pool, capacity=capacity)
            self._pool_sizes[db.key] = pool
        return ""

    async def _pooler_admin_password(self, db: types.ServerlessDatabase) -> str:
        """The operator's console login: the one the pooler's Secret holds, else a new one it will."""
        known = self._pooler_admin.get(db.key)
        if known is None:
            name = Names.of(db.metadata.name).pooler
            found = await asyncio.to_thread(self.kube.get, kc.SECRETS, db.metadata.namespace, name)
            stored = (
                _decoded(found, pooled.ADMIN_PASSWORD_KEY) if found and _ours(found, db.metadata.name) else ""
            )
            known = stored or secrets.token_urlsafe(24)
            self._pooler_admin[db.key] = known
        return known

    async def _unpool(self, db: types.ServerlessDatabase) -> None:
        """Pooling turned off: the pooler's objects go (they hold no data), the database's own
        NetworkPolicy no longer lets a pooler in."""
        names = Names.of(db.metadata.name)
        namespace = db.metadata.namespace
        running = self.informers.deployments.get(namespace, names.pooler) is not None
        if not running and db.key not in self._pooler_written:
            return
        log.info("removing the pooled endpoint: spec.pooling.enabled is false", database=db.key)
        for kind in (kc.DEPLOYMENTS, kc.SERVICES, kc.NETWORK_POLICIES, kc.SECRETS):
            await self._delete_ours(db, kind, names.pooler)
        self.informers.deployments.expect(f"{namespace}/{names.pooler}", None)
        await self._ensure_network_policy(db)
        self._forget_pooler(db.key)

    def _forget_pooler(self, key: str) -> None:
        for memo in (self._pooler_admin, self._pooler_written, self._pool_sizes, self._pooler_logins):
            memo.pop(key, None)

    def pooled(self) -> Collection[str]:
        """The databases whose pooler this operator has set up (it holds their console password)."""
        return self._pooler_admin.keys()

    def pooler_console(self, db: types.ServerlessDatabase) -> pooler.Console | None:
        """Where the operator reads the pooler's statistics, while a pod of it is ready."""
        names = Names.of(db.metadata.name)
        deployment = self.informers.deployments.get(db.metadata.namespace, names.pooler)
        admin = self._pooler_admin.get(db.key)
        if not db.spec.pooling.enabled or admin is None or not _serving(deployment):
            return None
        host, port = self.locate_pooler(db)
        return pooler.Console(host, port, admin, sslmode=POOLER_CONSOLE_SSLMODE)

    def _route(self, db: types.ServerlessDatabase, pod: dict[str, Any] | None) -> Route:
        endpoint_slice = self._slice(db)
        if endpoint_slice is None or pod is None:
            return Route.ACTIVATOR
        ip = (pod.get("status") or {}).get("podIP")
        addresses = [a for e in endpoint_slice.get("endpoints") or [] for a in e.get("addresses") or []]
        ports = [p.get("port") for p in endpoint_slice.get("ports") or []]
        direct = ip is not None and addresses == [ip] and ports == [builders.POSTGRES_PORT]
        return Route.DIRECT if direct else Route.ACTIVATOR

    def address(self, db: types.ServerlessDatabase) -> Address | None:
        """Where the operator reaches the database's Postgres, once its pod has an address."""
        pod = self._pod(db)
        located = self.locate(pod) if pod is not None else None
        password = self._passwords.get(db.key)
        return Address(located[0], located[1], password) if located and password else None

    # -- writing ---------------------------------------------------------------------------------

    async def _ensure(
        self, kind: kc.Kind, desired: dict[str, Any], cached: dict[str, Any] | None = None
    ) -> None:
        """One apply when the object differs from what is wanted; none when it matches.

        `cached` is an informer's copy. Without one the object is read from the server once: kinds the
        runtime does not watch (Services, ConfigMaps, NetworkPolicies) are read only when they may need
        a write, and informers see only objects with the operator's labels, so one of another's by the
        same name is found by that read alone, and refused rather than taken over.
        """
        meta = desired["metadata"]
        observed = cached
        if observed is None:
            observed = await asyncio.to_thread(self.kube.get, kind, meta["namespace"], meta["name"])
        if observed is not None:
            if _contains(observed, desired):
                return
            _check_ours(observed, desired)
        written = await asyncio.to_thread(self.kube.apply, kind, desired)
        cache = self._caches.get(kind.kind)
        if cache is not None:  # the next step reads it from the cache: it waits for the watch to bring it
            cache.expect(kc.key_of(written), written["metadata"].get("resourceVersion"))

    def database_changed(self, key: str, obj: Mapping[str, Any], deleted: bool) -> None:
        """Keep the index of the activator ports that statuses claim (told by the database informer)."""
        old = self._claimed.pop(key, None)
        if old is not None:
            self._by_port.get(old, set()).discard(key)
            if not self._by_port.get(old):
                self._by_port.pop(old, None)
        if deleted:
            self._proposed.pop(key, None)
            self._created.pop(key, None)
            return
        port = (obj.get("status") or {}).get("activatorPort")
        self._created[key] = str((obj.get("metadata") or {}).get("creationTimestamp") or "")
        if isinstance(port, int):
            self._claimed[key] = port
            self._by_port.setdefault(port, set()).add(key)
            if self._proposed.get(key) == port:
                del self._proposed[key]  # recorded: status holds it now

    def _activator_port(self, db: types.ServerlessDatabase) -> int:
        """This database's port on the activator: the one its status records, while no older database
        claims it too; else the lowest free one, held here until status records it."""
        low, high = self.port_range
        recorded = db.status.activator_port
        if recorded is not None and low <= recorded <= high:
            claimants = self._by_port.get(recorded) or {db.key}
            if min(claimants | {db.key}, key=lambda k: (self._created.get(k, ""), k)) == db.key:
                return recorded
        proposed = self._proposed.get(db.key)
        if proposed is not None:
            return proposed
        taken = set(self._by_port) | set(self._proposed.values())
        port = next((p for p in range(low, high + 1) if p not in taken), None)
        if port is None:
            raise PermanentError(types.Reason.CREATING, f"no free activator port in {low}-{high}")
        self._proposed[db.key] = port
        return port

    def _activator_endpoints(self, port: int) -> list[Endpoint]:
        return [
            Endpoint(address, port)
            for endpoint_slice in self.informers.activator.values()
            for endpoint in endpoint_slice.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready", True)
            for address in endpoint.get("addresses") or []
        ]

    async def create_storage(self, db: types.ServerlessDatabase) -> None:
        names = Names.of(db.metadata.name)
        self._passwords[db.key] = await self._ensure_secret(db, names.secret, username=roles.OPERATOR_ROLE)
        await self._ensure_secret(db, names.app_secret, username=roles.APP_ROLE)
        await self._ensure_network_policy(db)
        await self._ensure(kc.SERVICES, builders.client_service(db))
        await self.route(db, Route.ACTIVATOR)

    async def _ensure_network_policy(self, db: types.ServerlessDatabase) -> None:
        await self._ensure(
            kc.NETWORK_POLICIES, builders.network_policy(db, system_namespace=self.system_namespace)
        )

    async def _compute_objects(self, db: types.ServerlessDatabase, *, replicas: int, capacity: float) -> None:
        names = Names.of(db.metadata.name)
        await self.certificates.ensure(db)  # the pod mounts it
        await self._ensure(kc.CONFIGMAPS, builders.configmap(db))
        await self._ensure(kc.SERVICES, builders.headless_service(db))
        sts = self._statefulset(db)
        if sts is None:
            # Its claim template would adopt any claim of that name: before the StatefulSet is made
            # (not on every wake of one that exists) the claim must be the database's or none.
            claim = await asyncio.to_thread(self.kube.get, kc.CLAIMS, db.metadata.namespace, names.pvc)
            if claim is not None:
                _check_ours(claim, builders.headless_service(db))
        await self._ensure(
            kc.STATEFULSETS,
            builders.statefulset(db, replicas=replicas, capacity=capacity),
            projection.unpacked(sts) if sts is not None else None,
        )

    async def start(self, db: types.ServerlessDatabase, capacity: float) -> None:
        """Scale to one pod at `capacity`; returns at once, and observe says Starting until it is Ready."""
        try:
            await self._compute_objects(db, replicas=1, capacity=capacity)
        except kc.ApiError as error:
            raise _transient(error, types.Reason.START_FAILED) from error

    async def provision(self, db: types.ServerlessDatabase) -> None:
        try:
            await self._compute_objects(db, replicas=0, capacity=db.spec.capacity.min)
        except kc.ApiError as error:
            raise _transient(error, types.Reason.START_FAILED) from error

    async def route(self, db: types.ServerlessDatabase, route: Route) -> None:
        if route is Route.DIRECT:
            pod = self._pod(db)
            ip = (pod or {}).get("status", {}).get("podIP")
            if not ip:
                raise TransientError(types.Reason.START_FAILED, "the pod has no address yet")
            endpoints = [Endpoint(ip, builders.POSTGRES_PORT)]
        else:
            endpoints = self._activator_endpoints(self._activator_port(db))
        try:
            await self._ensure(kc.ENDPOINTSLICES, builders.endpoint_slice(db, endpoints), self._slice(db))
        except kc.ApiError as error:
            raise _transient(error) from error
        if route is Route.ACTIVATOR and not endpoints:
            raise TransientError(
                types.Reason.WAKE_FAILED,
                "no activator pod is ready: connections to this database fail until one is",
            )

    async def stop(self, db: types.ServerlessDatabase, *, resume_at: float) -> None:
        """Scale to zero; the pod's SIGINT is Postgres's fast shutdown, with its checkpoint."""
        address = self.address(db)
        if address is not None:
            await settings.prepare_wake(self.sessions, db.key, address, resume_at)
        sts = self._statefulset(db)
        if sts is None:
            return
        try:
            written = await asyncio.to_thread(
                self.kube.patch,
                kc.STATEFULSETS,
                db.metadata.namespace,
                Names.of(db.metadata.name).statefulset,
                {"spec": {"replicas": 0}},
            )
        except kc.ApiError as error:
            raise _transient(error, types.Reason.STOP_FAILED) from error
        self.informers.statefulsets.expect(kc.key_of(written), written["metadata"].get("resourceVersion"))

    async def release(self, db: types.ServerlessDatabase) -> None:
        """Park: delete the StatefulSet, ConfigMap and headless Service; keep PVC, Secret, client Service."""
        names = Names.of(db.metadata.name)
        namespace = db.metadata.namespace
        try:
            for kind, name in (
                (kc.STATEFULSETS, names.statefulset),
                (kc.CONFIGMAPS, names.configmap),
                (kc.SERVICES, names.headless),
            ):
                await self._delete_ours(db, kind, name)
        except kc.ApiError as error:
            raise _transient(error, types.Reason.PARKING) from error
        self.informers.statefulsets.expect(f"{namespace}/{names.statefulset}", None)

    async def configure(
        self, db: types.ServerlessDatabase, capacity: float, *, access: bool
    ) -> declared.Report | None:
        address = self.address(db)
        if address is None:
            raise TransientError(types.Reason.SETTINGS_FAILED, "the pod has no address yet")
        async with settings_step():
            await settings.configure(self.sessions, db.key, address, capacity)
        return await self._access(db, address) if access else None

    async def _access(self, db: types.ServerlessDatabase, address: Address) -> declared.Report:
        """Who may connect: the namespaces allowed (the NetworkPolicy), the application role from its
        Secret, a superuser only when allowed."""
        names = Names.of(db.metadata.name)
        try:
            await self._ensure_network_policy(db)
            app = await self._ensure_secret(db, names.app_secret, username=roles.APP_ROLE)
            superuser = None
            if db.spec.superuser_access:
                superuser = await self._ensure_secret(
                    db, names.superuser_secret, username=roles.SUPERUSER_ROLE
                )
            else:
                await self._delete_ours(db, kc.SECRETS, names.superuser_secret)
            credentials = {
                name: await self._role_credential(db, name)
                for name in sorted({r.password_secret for r in db.spec.roles if r.password_secret})
            }
        except kc.ApiError as error:
            raise _transient(error, types.Reason.SETTINGS_FAILED) from error
        async with settings_step():
            await roles.apply(self.sessions, db.key, address, roles.Desired(app, superuser))
            wanted = declared.desired(db.spec, credentials)
            report = await declared.apply(
                self.sessions, db.key, address, wanted, salt=secrets.token_bytes(16), verified=self.verified
            )
            # After the declared roles: those that log in get plaintext, or not, as the others do.
            await encryption.apply(self.sessions, db.key, address, required=db.spec.tls.required)
            # After the declared roles too: a bound role made just now is granted its way in.
            await identities.apply(
                self.sessions,
                db.key,
                address,
                certificate_name=builders.GATEWAY_CLIENT_NAME,
                roles=[i.role for i in db.spec.access.identities],
            )
            return report

    async def _role_credential(self, db: types.ServerlessDatabase, name: str) -> declared.Credential:
        """A declared role's password Secret: the user's own, of type kubernetes.io/basic-auth."""
        found = await asyncio.to_thread(self.kube.get, kc.SECRETS, db.metadata.namespace, name)
        if found is None:
            return declared.Credential(problem=f"the password Secret {name} was not found")
        if found.get("type") != BASIC_AUTH:
            return declared.Credential(problem=f"the password Secret {name} is not of type {BASIC_AUTH}")
        try:
            username = _decoded(found, "username") or None
            return declared.Credential(username, _decoded(found, "password"))
        except (ValueError, UnicodeDecodeError):
            return declared.Credential(problem=f"the password Secret {name} is not valid base64 UTF-8")

    async def resize(self, db: types.ServerlessDatabase, capacity: float) -> None:
        pod = self._pod(db)
        if pod is None:
            raise TransientError(types.Reason.RESIZE_FAILED, "no pod to resize")
        if not self.in_place_resize and not db.spec.scaling.allow_restart:
            raise PermanentError(
                types.Reason.RESIZE_NEEDS_RESTART,
                "this cluster cannot resize pods in place (Kubernetes 1.33+ with pods/resize) and "
                "spec.scaling.allowRestart is false: the size stays",
            )

        async def limits(size: float) -> bool:
            if self.in_place_resize:
                await self._resize_pod(db, pod, size)
            else:  # a rolling restart at the new size
                await self._compute_objects(db, replicas=1, capacity=size)
            return False  # the kubelet resizes (or restarts) the pod in its own time

        async def apply(size: float) -> None:
            await self.configure(db, size, access=False)

        current = builders.capacity_of((_container(pod.get("spec", {}), "postgres") or {}).get("resources"))
        await settings.resize(previous=current, capacity=capacity, limits=limits, settings=apply)

    async def _resize_pod(self, db: types.ServerlessDatabase, pod: dict[str, Any], capacity: float) -> None:
        patch = {"spec": {"containers": [{"name": "postgres", "resources": builders.resources(capacity)}]}}
        try:
            written = await asyncio.to_thread(
                self.kube.patch,
                kc.PODS,
                db.metadata.namespace,
                pod["metadata"]["name"],
                patch,
                subresource="resize",
                content_type=kc.STRATEGIC_PATCH,
            )
        except kc.ApiError as error:
            raise _transient(error, types.Reason.RESIZE_FAILED) from error
        self.informers.pods.expect(kc.key_of(written), written["metadata"].get("resourceVersion"))

    async def delete(self, db: types.ServerlessDatabase, *, keep_storage: bool) -> None:
        names = Names.of(db.metadata.name)
        doomed: list[tuple[kc.Kind, str]] = [
            (kc.STATEFULSETS, names.statefulset),
            (kc.CONFIGMAPS, names.configmap),
            (kc.SERVICES, names.headless),
            (kc.ENDPOINTSLICES, names.endpointslice),
            (kc.SERVICES, names.service),
            (kc.NETWORK_POLICIES, names.networkpolicy),
            (kc.DEPLOYMENTS, names.pooler),
            (kc.SERVICES, names.pooler),
            (kc.NETWORK_POLICIES, names.pooler),
            (kc.SECRETS, names.pooler),
        ]
        if not keep_storage:
            doomed += [
                (kc.CLAIMS, names.pvc),
                (kc.SECRETS, names.secret),
                (kc.SECRETS, names.app_secret),
                (kc.SECRETS, names.superuser_secret),
            ]
        try:
            for kind, name in doomed:
                await self._delete_ours(db, kind, name)
        except kc.ApiError as error:
            raise _transient(error, types.Reason.DELETING) from error
        self._passwords.pop(db.key, None)
        self._forget_pooler(db.key)

    def key_for(self, obj: dict[str, Any]) -> str | None:
        """The database an object belongs to, by the label the builders put on everything."""
        meta = obj.get("metadata") or {}
        name = (meta.get("labels") or {}).get(builders.DATABASE_LABEL)
        return f"{meta.get('namespace')}/{name}" if name else None


def _compute(sts: dict[str, Any] | None, pod: dict[str, Any] | None) -> Compute:
    if sts is None:
        return (
            Compute.STARTING if pod is not None else Compute.ABSENT
        )  # a pod outliving its StatefulSet is going
    replicas = int((sts.get("spec") or {}).get("replicas") or 0)
    if pod is None:
        return Compute.STARTING if replicas > 0 else Compute.STOPPED
    if replicas == 0 or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return Compute.STOPPING
    conditions = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
    return Compute.RUNNING if conditions.get("Ready") == "True" else Compute.STARTING


@dataclass(frozen=True)
class _Resize:
    """Where a pod's resize stands, as the kubelet reports it."""

    actual: float | None = None
    """The capacity the container has now."""
    wanted: float | None = None
    """The capacity its spec asks for."""
    state: ResizeState = ResizeState.NONE
    message: str = ""
    pending_since: datetime | None = None


def _resize_of(pod: Mapping[str, Any]) -> _Resize:
    container = _container(pod.get("spec") or {}, "postgres") or {}
    wanted = builders.capacity_of(container.get("resources"))
    status = pod.get("status") or {}
    actual_status = _container(status, "postgres", key="containerStatuses") or {}
    actual = builders.capacity_of(actual_status.get("resources")) or wanted
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    pending = conditions.get("PodResizePending") or {}
    legacy = status.get("resize")  # before 1.33: a field, not conditions
    reason = pending.get("reason") or legacy or ""
    message = pending.get("message") or ""
    if reason in ("Infeasible", "Deferred"):
        since = pending.get("lastTransitionTime")
        state = ResizeState.INFEASIBLE if reason == "Infeasible" else ResizeState.DEFERRED
        return _Resize(actual, wanted, state, message, units.parse_time(since) if since else None)
    if "PodResizeInProgress" in conditions or legacy == "InProgress" or (wanted and actual != wanted):
        return _Resize(actual, wanted, ResizeState.IN_PROGRESS, f"moving to {wanted} CU")
    return _Resize(actual, wanted)


def _ours(obj: Mapping[str, Any], database: str) -> bool:
    """Whether an object carries this database's labels, as everything the operator makes does."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(
        labels.get(builders.DATABASE_LABEL) == database
        and labels.get("app.kubernetes.io/managed-by") == builders.MANAGED_BY
    )


def _check_ours(found: Mapping[str, Any], desired: Mapping[str, Any]) -> None:
    database = desired["metadata"]["labels"][builders.DATABASE_LABEL]
    if not _ours(found, database):
        meta = found.get("metadata") or {}
        raise PermanentError(
            types.Reason.RESOURCE_CONFLICT,
            f"{found.get('kind', 'an object')} {meta.get('namespace')}/{meta.get('name')} exists and is not "
            f"this database's (no {builders.DATABASE_LABEL}={database} label): it is left as it is; "
            "rename the database or remove that object",
        )


def _container(spec: Mapping[str, Any], name: str, *, key: str = "containers") -> dict[str, Any] | None:
    return next((c for c in spec.get(key) or [] if c.get("name") == name), None)


def _contains(observed: Any, desired: Any) -> bool:
    """Whether every field of `desired` is in `observed` with the same value (the server adds defaults)."""
    if isinstance(desired, dict):
        return isinstance(observed, dict) and all(
            k in observed and _contains(observed[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(_contains(o, d) for o, d in zip(observed, desired, strict=True))
        )
    return bool(observed == desired or str(observed) == str(desired))


BASIC_AUTH = "kubernetes.io/basic-auth"


def _serving(deployment: Mapping[str, Any] | None) -> bool:
    """Whether a pooler's Deployment has a ready pod."""
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0) >= 1


def _digest(objects: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()


def _decoded(secret: dict[str, Any], key: str) -> str:
    data = secret.get("data") or {}
    if key in data:
        return base64.b64decode(data[key]).decode()
    return str((secret.get("stringData") or {}).get(key, ""))


def _transient(error: kc.ApiError, reason: types.Reason = types.Reason.CREATING) -> TransientError:
    return TransientError(reason, f"the API server refused: {error}")
