"""The operator on a cluster, assembled: informers, the Kubernetes runtime and store, metrics, leadership.

`sdb up --runtime kubernetes` runs it. Informers run on every replica (a standby's caches are warm);
only the Lease holder reconciles. Losing the Lease stops the process, so the pod restarts clean.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import structlog
from kubernetes import client, config

from controller import health
from controller.activator.cluster import ClusterBackend
from controller.api import types
from controller.metrics import prometheus
from controller.metrics.exposition import OperatorMetrics
from controller.metrics.postgres import Address, PostgresSource
from controller.metrics.source import MetricsSource
from controller.policy.inputs import Tuning
from controller.reconciler.loop import Reconciler
from controller.runtime import sql
from controller.runtime.kubernetes import builders, permissions
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes.informer import Informer
from controller.runtime.kubernetes.leader import LeaderElector, Timing
from controller.runtime.kubernetes.runtime import Informers, KubernetesRuntime, Settings
from controller.runtime.kubernetes.store import KubeStore

log = structlog.get_logger("operator.kubernetes")
MANAGED = f"app.kubernetes.io/managed-by={builders.MANAGED_BY}"
_T = TypeVar("_T")
RESTING = frozenset({types.Phase.PAUSING, types.Phase.PAUSED, types.Phase.PARKING, types.Phase.PARKED})


class PsycopgAccess:
    """ALTER SYSTEM on a pod's Postgres, over the network (the operator's tagged session)."""

    async def alter_system(
        self, host: str, password: str, settings: Mapping[str, str], *, reload: bool
    ) -> None:
        await asyncio.to_thread(
            sql.alter_system, host, builders.POSTGRES_PORT, password, settings, reload=reload
        )


@dataclass
class Options:
    pod_namespace: str
    activator_service: str
    watch_namespace: str | None = None
    leader_elect: bool = True
    lease_name: str = "serverless-db-operator"
    identity: str = ""
    prometheus_url: str = ""
    tuning: Tuning = field(default_factory=Tuning)
    timing: Timing = field(default_factory=Timing)
    watch_timeout: int = 240


def api_client() -> client.ApiClient:
    """In-cluster configuration when in a pod, else the current kubeconfig context."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class ClusterOperator:
    def __init__(
        self,
        kube: kc.Kube,
        options: Options,
        *,
        sql_access: Any = None,
        metrics: MetricsSource | None = None,
        recheck: MetricsSource | None = None,
        exposition: OperatorMetrics | None = None,
    ) -> None:
        self.kube = kube
        self.options = options
        self.exposition = exposition or OperatorMetrics()
        scope = options.watch_namespace
        self.store: KubeStore

        def owned(informer_kind: kc.Kind) -> Informer:
            return Informer(
                kube,
                informer_kind,
                namespace=scope,
                label_selector=MANAGED,
                on_change=self._owned_changed,
                watch_timeout=options.watch_timeout,
            )

        self.informers = Informers(
            databases=Informer(
                kube,
                kc.DATABASES,
                namespace=scope,
                on_change=self._database_changed,
                watch_timeout=options.watch_timeout,
            ),
            statefulsets=owned(kc.STATEFULSETS),
            pods=owned(kc.PODS),
            endpointslices=owned(kc.ENDPOINTSLICES),
            claims=owned(kc.CLAIMS),
            activator=Informer(
                kube,
                kc.ENDPOINTSLICES,
                namespace=options.pod_namespace,
                label_selector=f"kubernetes.io/service-name={options.activator_service}",
                on_change=self._activator_changed,
                watch_timeout=options.watch_timeout,
            ),
        )
        self.runtime = KubernetesRuntime(
            kube,
            self.informers,
            sql_access or PsycopgAccess(),
            settings=Settings(exporter_queries=_exporter_queries),
        )
        self.store = KubeStore(kube, self.informers.databases, instance=options.identity)
        # The pause's recheck asks Postgres directly: a Prometheus sample can be a scrape old.
        direct = recheck or PostgresSource(self._address)
        self.metrics = metrics or (self._prometheus() or direct)
        self.reconciler = Reconciler(
            store=self.store,
            runtime=self.runtime,
            metrics=self.metrics,
            exposition=self.exposition,
            tuning=options.tuning,
            recheck=direct,
        )
        self.elector = LeaderElector(
            kube,
            name=options.lease_name,
            namespace=options.pod_namespace,
            identity=options.identity or f"{socket.gethostname()}-{os.getpid()}",
            timing=options.timing,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._seen: dict[str, tuple[Any, ...]] = {}

    def _prometheus(self) -> MetricsSource | None:
        if not self.options.prometheus_url:
            return None
        source: MetricsSource = prometheus.PrometheusSource(self.options.prometheus_url)
        return source

    def _address(self, db: types.ServerlessDatabase) -> Address | None:
        pod = self.informers.pods.get(db.metadata.namespace, builders.Names.of(db.metadata.name).pod)
        ip = ((pod or {}).get("status") or {}).get("podIP")
        password = self.runtime.password_for(db.key)
        return Address(ip, builders.POSTGRES_PORT, password) if ip and password else None

    # -- triggers --------------------------------------------------------------------------------

    def _database_changed(self, key: str, obj: dict[str, Any], deleted: bool) -> None:
        """A change of spec, metadata or deletion; not the operator's own status writes."""
        meta = obj.get("metadata") or {}
        seen = (
            meta.get("generation"),
            meta.get("annotations"),
            meta.get("finalizers"),
            meta.get("deletionTimestamp"),
        )
        if deleted or self._seen.get(key) != seen:
            self._seen[key] = seen
            self.store.notify(key)

    def _owned_changed(self, key: str, obj: dict[str, Any], deleted: bool) -> None:
        database = self.runtime.key_for(obj)
        if database is not None:
            self.store.notify(database)

    def _activator_changed(self, key: str, obj: dict[str, Any], deleted: bool) -> None:
        """The activator's pods moved: every resting database's endpoints must follow them."""
        for raw in self.informers.databases.values():
            phase = (raw.get("status") or {}).get("phase")
            if phase in {p.value for p in RESTING}:
                self.store.notify(kc.key_of(raw))

    # -- running ---------------------------------------------------------------------------------

    def ready(self) -> bool:
        return all(i.synced.is_set() for i in self.informers.all())

    async def run(self, stop: asyncio.Event) -> bool:
        """Run until `stop` is set (True) or leadership is lost (False)."""
        for informer in self.informers.all():
            self._tasks.append(asyncio.create_task(informer.run(), name=f"informer-{informer.kind.plural}"))
        if self.options.leader_elect:
            self._tasks.append(asyncio.create_task(self.elector.run(), name="leader"))
        else:
            self.elector.leading.set()
        leading = asyncio.create_task(self.elector.leading.wait())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([leading, stopping], return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                return True
            for informer in self.informers.all():
                await informer.synced.wait()
            await self.runtime.open()
            await self.reconciler.start()
            log.info("reconciling", identity=self.elector.identity)
            lost = asyncio.create_task(self.elector.lost.wait())
            await asyncio.wait([lost, stopping], return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            return stop.is_set()
        finally:
            leading.cancel()
            stopping.cancel()
            await self.reconciler.stop()
            await self.elector.release()
            for informer in self.informers.all():
                informer.stop()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.metrics.close()
            await self.reconciler.recheck.close()


def _exporter_queries(ignored: tuple[str, ...]) -> str:
    return prometheus.exporter_queries(ignored)


def run(args: argparse.Namespace) -> int:
    """`sdb up --runtime kubernetes`."""
    pod_namespace = args.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"
    options = Options(
        pod_namespace=pod_namespace,
        activator_service=args.activator_service,
        watch_namespace=args.watch_namespace or None,
        leader_elect=args.leader_elect,
        lease_name=args.lease_name,
        identity=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        prometheus_url=args.prometheus_url or "",
        tuning=Tuning(tick=timedelta(seconds=args.tick)),
    )

    async def main() -> bool:
        operator = ClusterOperator(kc.Kube(api_client(), permissions.OPERATOR), options)
        return await _until_signalled(
            operator.run, args, exposition=operator.exposition, ready=operator.ready
        )

    return 0 if asyncio.run(main()) else 1


async def _until_signalled(
    work: Callable[[asyncio.Event], Awaitable[_T]],
    args: argparse.Namespace,
    *,
    exposition: OperatorMetrics,
    ready: Callable[[], bool],
) -> _T:
    """Run `work` with /metrics and the probes served, until SIGINT or SIGTERM sets its stop event."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    if args.metrics_port >= 0:
        exposition.serve(args.metrics_port, args.metrics_address)
    probes = health.serve(args.health_port, ready=ready) if args.health_port >= 0 else None
    try:
        return await work(stop)
    finally:
        if probes is not None:
            probes.shutdown()


def run_activator(args: argparse.Namespace, port_range: tuple[int, int]) -> int:
    """`sdb activator`: hold connections to resting databases and wake them through the API."""

    async def main() -> None:
        kube = kc.Kube(api_client(), permissions.ACTIVATOR)
        backend = ClusterBackend(
            kube,
            namespace=args.watch_namespace or None,
            port_range=port_range,
            wake_timeout=args.wake_timeout,
        )
        exposition = OperatorMetrics()
        backend.activator.observer = exposition
        await _until_signalled(backend.run, args, exposition=exposition, ready=backend.ready)

    asyncio.run(main())
    return 0
