"""The operator on a cluster, assembled: informers, the Kubernetes runtime and store, metrics, leadership.

`sdb up --runtime kubernetes` runs it. Informers run on every replica (a standby's caches are warm),
and a replica asks for the Lease only once they have synced; only the Lease holder reconciles.
Losing the Lease stops the process, so the pod restarts clean.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog

from controller.api import types
from controller.app import process
from controller.metrics import prometheus
from controller.metrics.exposition import OperatorMetrics
from controller.metrics.postgres import PostgresSource, UsageOf
from controller.metrics.source import MetricsSource
from controller.policy.inputs import Tuning
from controller.postgres.sessions import OperatorSessions
from controller.reconciler.loop import Reconciler
from controller.runtime.kubernetes import builders, permissions, pooler, projection
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes.certificates import Certificates
from controller.runtime.kubernetes.informer import Informer
from controller.runtime.kubernetes.leader import LeaderElector, Timing
from controller.runtime.kubernetes.runtime import (
    Informers,
    KubernetesRuntime,
    Locate,
    LocatePooler,
    pod_address,
    pooler_service,
)
from controller.runtime.kubernetes.store import KubeStore

log = structlog.get_logger("operator.kubernetes")
MANAGED = f"app.kubernetes.io/managed-by={builders.MANAGED_BY}"
METRICS_PORT = 9465
HEALTH_PORT = 8081
WORKERS = 16
"""Passes at once: most of a pass waits on the API server, so more workers than CPUs."""
RESTING = frozenset({types.Phase.PAUSING, types.Phase.PAUSED, types.Phase.PARKING, types.Phase.PARKED})


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
    cert_manager_issuer: builders.IssuerRef | None = None
    pooler_image: str = pooler.IMAGE
    """The PgBouncer image of pooled endpoints."""
    activator_ports: tuple[int, int] = builders.ACTIVATOR_PORTS
    gateway_endpoint: str = ""
    """The activator gateway's `/sql` URL, for status (the chart's Service and port)."""
    """The range the activator listens on (its --port-range)."""
    """Who issues the servers' certificates: cert-manager with this issuer, or (None) the operator."""


class ClusterOperator:
    def __init__(
        self,
        kube: kc.Kube,
        options: Options,
        *,
        locate: Locate = pod_address,
        locate_pooler: LocatePooler = pooler_service,
        usage: UsageOf | None = None,
        metrics: MetricsSource | None = None,
        recheck: MetricsSource | None = None,
        exposition: OperatorMetrics | None = None,
    ) -> None:
        """`locate` says where the operator reaches a pod's Postgres; `usage` reads a database's CPU
        and memory where the operator can do so itself (without Prometheus there is none)."""
        self.kube = kube
        self.options = options
        self.exposition = exposition or OperatorMetrics()
        scope = options.watch_namespace
        self.store: KubeStore

        def owned(informer_kind: kc.Kind, project: projection.Projection) -> Informer:
            return Informer(
                kube,
                informer_kind,
                namespace=scope,
                label_selector=MANAGED,
                on_change=self._owned_changed,
                watch_timeout=options.watch_timeout,
                project=project,
            )

        self.informers = Informers(
            databases=Informer(
                kube,
                kc.DATABASES,
                namespace=scope,
                on_change=self._database_changed,
                watch_timeout=options.watch_timeout,
                project=projection.database,
            ),
            statefulsets=owned(kc.STATEFULSETS, projection.statefulset),
            deployments=owned(kc.DEPLOYMENTS, projection.deployment),
            pods=owned(kc.PODS, projection.pod),
            endpointslices=owned(kc.ENDPOINTSLICES, projection.owned),
            wakes=Informer(
                kube,
                kc.WAKE_REQUESTS,
                namespace=scope,
                on_change=self._wake_requested,
                watch_timeout=options.watch_timeout,
                project=projection.wake_request,
            ),
            activator=Informer(
                kube,
                kc.ENDPOINTSLICES,
                namespace=options.pod_namespace,
                label_selector=f"kubernetes.io/service-name={options.activator_service}",
                on_change=self._activator_changed,
                watch_timeout=options.watch_timeout,
                project=projection.owned,
            ),
        )
        self.sessions = OperatorSessions()
        self.runtime = KubernetesRuntime(
            kube,
            self.informers,
            sessions=self.sessions,
            locate=locate,
            locate_pooler=locate_pooler,
            port_range=options.activator_ports,
            system_namespace=options.pod_namespace,
            gateway_endpoint=options.gateway_endpoint,
            certificates=Certificates(
                kube, system_namespace=options.pod_namespace, issuer=options.cert_manager_issuer
            ),
            pooler_image=options.pooler_image,
        )
        self.store = KubeStore(
            kube, self.informers.databases, wakes=self.informers.wakes, instance=options.identity
        )
        # The pause's recheck asks Postgres directly: a Prometheus sample can be a scrape old.
        direct = recheck or PostgresSource(self.runtime.address, sessions=self.sessions, usage=usage)
        self.metrics = metrics or (self._prometheus() or direct)
        self.reconciler = Reconciler(
            store=self.store,
            runtime=self.runtime,
            metrics=self.metrics,
            exposition=self.exposition,
            tuning=options.tuning,
            recheck=direct,
            workers=WORKERS,
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
        self._listed = False
        """Whether the reconciler has listed the databases: what changed before, that list holds."""

    def _prometheus(self) -> MetricsSource | None:
        if not self.options.prometheus_url:
            return None
        source: MetricsSource = prometheus.PrometheusSource(self.options.prometheus_url)
        return source

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
        self.runtime.database_changed(key, obj, deleted)
        if deleted or self._seen.get(key) != seen:
            self._seen[key] = seen
            self._notify(key)

    def _wake_requested(self, key: str, obj: dict[str, Any], deleted: bool) -> None:
        database = (obj.get("spec") or {}).get("database")
        if not deleted and isinstance(database, str):
            self._notify(f"{types.split_key(key)[0]}/{database}")

    def _owned_changed(self, key: str, obj: dict[str, Any], deleted: bool) -> None:
        database = self.runtime.key_for(obj)
        if database is not None:
            self._notify(database)

    def _activator_changed(self, key: str, obj: dict[str, Any], deleted: bool) -> None:
        """The activator's pods moved: every resting database's endpoints must follow them."""
        for raw in self.informers.databases.values():
            phase = (raw.get("status") or {}).get("phase")
            if phase in {p.value for p in RESTING}:
                self._notify(kc.key_of(raw))

    def _notify(self, key: str) -> None:
        # Before the start's list, a change is a pass that list brings anyway. Filling the caches
        # tells of every object once: ten thousand databases are some sixty thousand objects, each
        # of which would be decoded and queued as a change ahead of the first look's real work.
        if self._listed:
            self.store.notify(key)

    # -- running ---------------------------------------------------------------------------------

    def ready(self) -> bool:
        return all(i.synced.is_set() for i in self.informers.all())

    async def _campaign(self) -> None:
        """Ask for the Lease once the caches are warm, so a new leader acts at once (a wake first)."""
        for informer in self.informers.all():
            await informer.synced.wait()
        if self.options.leader_elect:
            self._tasks.append(asyncio.create_task(self.elector.run(), name="leader"))
        else:
            self.elector.leading.set()
        await self.elector.leading.wait()

    async def run(self, stop: asyncio.Event) -> bool:
        """Run until `stop` is set (True) or leadership is lost (False)."""
        # Every API call runs in a thread: enough of them that each worker can wait on two at once
        # (the asyncio default, CPUs + 4, would leave workers queueing for threads on a small node).
        threads = concurrent.futures.ThreadPoolExecutor(2 * self.reconciler.workers, thread_name_prefix="api")
        asyncio.get_running_loop().set_default_executor(threads)
        for informer in self.informers.all():
            self._tasks.append(asyncio.create_task(informer.run(), name=f"informer-{informer.kind.plural}"))
        leading = asyncio.create_task(self._campaign())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([leading, stopping], return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                return True
            await self.runtime.open()
            gateway = self.runtime.certificates.keep_gateway(self.options.activator_service)
            self._tasks.append(asyncio.create_task(gateway, name="gateway-certificate"))
            self._listed = True  # the list below reads the caches after every change told so far
            for request in self.informers.wakes.values():  # asked for while no operator ran
                self._wake_requested(kc.key_of(request), request, False)
            await self.reconciler.start()
            self._tasks.append(
                asyncio.create_task(
                    process.watch_poolers(self.store, self.runtime, self.exposition),
                    name="poolers",
                )
            )
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
        tuning=Tuning(
            tick=timedelta(seconds=args.tick), catalog_resync=timedelta(seconds=args.catalog_resync)
        ),
        cert_manager_issuer=args.cert_manager_issuer,
        pooler_image=args.pooler_image or pooler.IMAGE,
        gateway_endpoint=args.gateway_endpoint,
    )

    async def main() -> bool:
        limit = kc.rate_limit(args.kube_qps, args.kube_burst)
        operator = ClusterOperator(kc.Kube(process.api_client(), permissions.OPERATOR, limit=limit), options)
        process.serve_metrics(operator.exposition, args, default=METRICS_PORT)
        with process.probes(args, default=HEALTH_PORT, ready=operator.ready):
            return await process.until_signalled(operator.run)

    return 0 if asyncio.run(main()) else 1
