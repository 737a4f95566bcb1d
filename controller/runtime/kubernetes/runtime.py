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
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from controller.api import types, units
from controller.policy.inputs import Compute, ComputeState, ResizeState, Route
from controller.postgres import settings
from controller.postgres.sessions import Address, OperatorSessions
from controller.runtime.base import PermanentError, TransientError, settings_step
from controller.runtime.kubernetes import builders
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes.builders import Endpoint, Names
from controller.runtime.kubernetes.informer import Informer

log = structlog.get_logger("runtime.kubernetes")

READ_OWN_WRITE_SECONDS = 2.0
"""How long a step waits for the watch to bring the runtime's own last write before it goes on."""

Locate = Callable[[Mapping[str, Any]], tuple[str, int] | None]
"""Where the operator reaches a pod's Postgres: (host, port), or None while it has no address."""


def pod_address(pod: Mapping[str, Any]) -> tuple[str, int] | None:
    ip = (pod.get("status") or {}).get("podIP")
    return (str(ip), builders.POSTGRES_PORT) if ip else None


@dataclass
class Informers:
    """The caches the runtime reads from, kept by list-then-watch."""

    databases: Informer
    statefulsets: Informer
    pods: Informer
    endpointslices: Informer
    claims: Informer
    activator: Informer
    """The activator Service's EndpointSlices: where resting databases' connections go."""

    def all(self) -> list[Informer]:
        return [
            self.databases,
            self.statefulsets,
            self.pods,
            self.endpointslices,
            self.claims,
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
    ) -> None:
        self.kube = kube
        self.informers = informers
        self.sessions = sessions or OperatorSessions()
        self.port_range = port_range
        self.locate = locate
        self.in_place_resize = False
        self._passwords: dict[str, str] = {}
        self._caches = {
            kc.STATEFULSETS.kind: informers.statefulsets,
            kc.ENDPOINTSLICES.kind: informers.endpointslices,
        }

    async def open(self) -> None:
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
        known = self._passwords.get(db.key)
        if known is not None:
            return known
        found = await asyncio.to_thread(
            self.kube.get, kc.SECRETS, db.metadata.namespace, Names.of(db.metadata.name).secret
        )
        if found is None:
            return None
        password = _decoded(found, "password")
        self._passwords[db.key] = password
        return password

    async def observe(self, db: types.ServerlessDatabase) -> ComputeState:
        names = Names.of(db.metadata.name)
        namespace = db.metadata.namespace
        for informer, name in (
            (self.informers.statefulsets, names.statefulset),
            (self.informers.endpointslices, names.endpointslice),
            (self.informers.pods, names.pod),
        ):
            await informer.settled(f"{namespace}/{name}", timeout=READ_OWN_WRITE_SECONDS)
        storage = await self._password(db) is not None
        sts, pod = self._statefulset(db), self._pod(db)
        compute = _compute(sts, pod)
        resize = _Resize()
        if pod is not None and compute is Compute.RUNNING:
            resize = _resize_of(pod)
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
        )

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

    async def _ensure(self, kind: kc.Kind, desired: dict[str, Any], observed: dict[str, Any] | None) -> None:
        """One apply when what is observed differs from what is wanted; none when it matches."""
        if observed is not None and _contains(observed, desired):
            return
        written = await asyncio.to_thread(self.kube.apply, kind, desired)
        cache = self._caches.get(kind.kind)
        if cache is not None:  # the next step reads it from the cache: it waits for the watch to bring it
            cache.expect(kc.key_of(written), written["metadata"].get("resourceVersion"))

    async def _activator_port(self, db: types.ServerlessDatabase) -> int:
        """This database's port on the activator, assigned once and kept in an annotation."""
        assigned = db.metadata.annotations.get(builders.ACTIVATOR_PORT_ANNOTATION)
        if assigned:
            return int(assigned)
        taken = {
            int(port)
            for other in self.informers.databases.values()
            if (port := (other["metadata"].get("annotations") or {}).get(builders.ACTIVATOR_PORT_ANNOTATION))
        }
        low, high = self.port_range
        port = next((p for p in range(low, high + 1) if p not in taken), None)
        if port is None:
            raise PermanentError(types.Reason.CREATING, f"no free activator port in {low}-{high}")
        patch = {"metadata": {"annotations": {builders.ACTIVATOR_PORT_ANNOTATION: str(port)}}}
        written = await asyncio.to_thread(
            self.kube.patch, kc.DATABASES, db.metadata.namespace, db.metadata.name, patch
        )
        self.informers.databases.expect(db.key, written["metadata"].get("resourceVersion"))
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
        await self._activator_port(db)
        if await self._password(db) is None:
            password = secrets.token_urlsafe(24)
            try:
                await asyncio.to_thread(self.kube.create, kc.SECRETS, builders.secret(db, password))
            except kc.ApiError as error:
                if error.status != 409:  # made by an earlier attempt: never rewritten
                    raise _transient(error) from error
            self._passwords.pop(db.key, None)
        await self._ensure(
            kc.SERVICES,
            builders.client_service(db),
            await asyncio.to_thread(self._read, kc.SERVICES, db, names.service),
        )
        await self.route(db, Route.ACTIVATOR)

    def _read(self, kind: kc.Kind, db: types.ServerlessDatabase, name: str) -> dict[str, Any] | None:
        """Objects the runtime does not watch (Services, ConfigMaps) are read on demand: rare, and cheap."""
        return self.kube.get(kind, db.metadata.namespace, name)

    async def _compute_objects(self, db: types.ServerlessDatabase, *, replicas: int, capacity: float) -> None:
        names = Names.of(db.metadata.name)
        for kind, desired, name in (
            (kc.CONFIGMAPS, builders.configmap(db), names.configmap),
            (kc.SERVICES, builders.headless_service(db), names.headless),
        ):
            await self._ensure(kind, desired, await asyncio.to_thread(self._read, kind, db, name))
        await self._ensure(
            kc.STATEFULSETS,
            builders.statefulset(db, replicas=replicas, capacity=capacity),
            self._statefulset(db),
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
            endpoints = self._activator_endpoints(await self._activator_port(db))
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
                await asyncio.to_thread(self.kube.delete, kind, namespace, name)
        except kc.ApiError as error:
            raise _transient(error, types.Reason.PARKING) from error
        self.informers.statefulsets.expect(f"{namespace}/{names.statefulset}", None)

    async def configure(self, db: types.ServerlessDatabase, capacity: float) -> None:
        address = self.address(db)
        if address is None:
            raise TransientError(types.Reason.SETTINGS_FAILED, "the pod has no address yet")
        async with settings_step():
            await settings.configure(self.sessions, db.key, address, capacity)

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
            await self.configure(db, size)

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
        namespace = db.metadata.namespace
        doomed: list[tuple[kc.Kind, str]] = [
            (kc.STATEFULSETS, names.statefulset),
            (kc.CONFIGMAPS, names.configmap),
            (kc.SERVICES, names.headless),
            (kc.ENDPOINTSLICES, names.endpointslice),
            (kc.SERVICES, names.service),
        ]
        if not keep_storage:
            doomed += [(kc.CLAIMS, names.pvc), (kc.SECRETS, names.secret)]
        try:
            for kind, name in doomed:
                await asyncio.to_thread(self.kube.delete, kind, namespace, name)
        except kc.ApiError as error:
            raise _transient(error, types.Reason.DELETING) from error
        self._passwords.pop(db.key, None)

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


def _decoded(secret: dict[str, Any], key: str) -> str:
    data = secret.get("data") or {}
    if key in data:
        return base64.b64decode(data[key]).decode()
    return str((secret.get("stringData") or {}).get(key, ""))


def _transient(error: kc.ApiError, reason: types.Reason = types.Reason.CREATING) -> TransientError:
    return TransientError(reason, f"the API server refused: {error}")
