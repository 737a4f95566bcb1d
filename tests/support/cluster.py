"""Running the Kubernetes runtime against the API double: the fixture's cluster, an operator, helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from kubeapi import KubeApiDouble
from kubernetes import client

from controller.activator.proxy import Upstream
from controller.api import types
from controller.app.activator import ClusterBackend
from controller.app.cluster import ClusterOperator, Options
from controller.gateway import request
from controller.metrics.source import MetricsSource
from controller.policy.inputs import Observation, Tuning
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes import permissions
from controller.runtime.kubernetes.leader import Timing
from controller.runtime.kubernetes.runtime import LocatePooler, pooler_service
from controller.runtime.local.runtime import HOST
from support.fakes import FakeMetrics
from support.postgres import Server

ROOT = Path(__file__).resolve().parents[2]
CRDS = sorted((ROOT / "charts/serverless-db-operator/crds").glob("*.yaml"))
SYSTEM = "sdb-system"


def _free_window(size: int = 100) -> tuple[int, int]:
    """A window of the activator's range with nothing listening at its start: other test runs on the
    same machine use the range too, and a client must reach this run's activator, not theirs."""
    for low in random.sample(range(20_000, 30_000, size), k=100):
        with socket.socket() as probe:
            try:
                probe.bind((HOST, low))
            except OSError:
                continue
        return (low, low + size - 1)
    raise RuntimeError("no free window in the activator's port range")


ACTIVATOR_PORTS = _free_window()
"""This run's activator ports, for the operator and the activator alike."""
FAST = Tuning(tick=timedelta(milliseconds=200))


@contextlib.contextmanager
def cluster(version: str = "v1.33.1") -> Iterator[KubeApiDouble]:
    """An API double with the project's CRD and the namespaces the tests use."""
    with KubeApiDouble(version=version) as double:
        for crd in CRDS:
            double.install_crd(crd)
        for namespace in (SYSTEM, "shop", "other", "friends"):
            double.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        yield double
        assert double.internal_errors == []


def activator_slice(address: str = "127.0.0.1") -> dict[str, Any]:
    """What the activator Service's EndpointSlice looks like with one ready activator pod."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "activator-abcde",
            "namespace": SYSTEM,
            "labels": {"kubernetes.io/service-name": "activator"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "metrics", "port": 9466, "protocol": "TCP"}],
    }


async def eventually(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.05)


@dataclass
class Running:
    operator: ClusterOperator
    metrics: MetricsSource
    stop: asyncio.Event
    task: asyncio.Task[bool]

    @property
    def readings(self) -> dict[str, Observation]:
        """The fake readings a test sets (when the operator runs on a FakeMetrics)."""
        assert isinstance(self.metrics, FakeMetrics)
        return self.metrics.readings


@contextlib.asynccontextmanager
async def operator(
    kube: KubeApiDouble,
    postgres: Server,
    *,
    identity: str = "op-1",
    metrics: MetricsSource | None = None,
    direct_readings: bool = False,
    leader_elect: bool = False,
    tuning: Tuning = FAST,
    locate_pooler: LocatePooler = pooler_service,
    gateway_endpoint: str = "",
) -> AsyncIterator[Running]:
    """The cluster operator on the double, with `postgres` standing in for every database's pod.

    The double's pods run nothing; the operator's own SQL (settings on a start or a resize, the
    wake's settings before a stop, a direct reading) goes to that real server instead. Readings are
    a test's own (FakeMetrics), or with `direct_readings` the operator's Postgres-statistics source
    on that server, with the server's own CPU and memory.
    """
    if not direct_readings:
        metrics = metrics or FakeMetrics(clock=lambda: datetime.now(UTC))
    built = ClusterOperator(
        kc.Kube(kube.api_client(), permissions.OPERATOR),
        Options(
            pod_namespace=SYSTEM,
            activator_service="activator",
            leader_elect=leader_elect,
            identity=identity,
            tuning=tuning,
            timing=Timing(lease_duration=2, renew_deadline=1.5, retry_period=0.2),
            watch_timeout=5,
            activator_ports=ACTIVATOR_PORTS,
            gateway_endpoint=gateway_endpoint,
        ),
        locate=lambda pod: (HOST, postgres.port),
        locate_pooler=locate_pooler,
        usage=lambda db: postgres.cluster.process_usage(),
        metrics=metrics,
        recheck=metrics,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(built.run(stop))
    try:
        yield Running(built, built.metrics, stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def sdb(kube: KubeApiDouble, name: str = "orders") -> dict[str, Any]:
    found = kube.get("serverlessdatabases", name, "shop")
    assert found is not None
    return found


def phase(kube: KubeApiDouble, name: str = "orders") -> str:
    return str((sdb(kube, name).get("status") or {}).get("phase"))


def condition(kube: KubeApiDouble, kind: str, name: str = "orders") -> dict[str, Any]:
    return next(c for c in sdb(kube, name)["status"]["conditions"] if c["type"] == kind)


def create(kube: KubeApiDouble, name: str = "orders", **spec: Any) -> None:
    client.CustomObjectsApi(kube.api_client()).create_namespaced_custom_object(
        types.GROUP,
        types.VERSION,
        "shop",
        types.PLURAL,
        {"apiVersion": types.API_VERSION, "kind": types.KIND, "metadata": {"name": name}, "spec": spec},
    )


def reading(cpu: float = 0.0, sessions: int = 0, *, last_activity: datetime | None = None) -> Observation:
    now = datetime.now(UTC)
    return Observation(
        time=now,
        observing_since=now - timedelta(hours=1),
        client_sessions=sessions,
        cpu_cores=cpu,
        memory_working_set_bytes=0,
        last_activity=last_activity,
    )


async def steady_requests(kube: KubeApiDouble, running: Running, key: str = "shop/orders") -> list[Any]:
    """The API requests the operator makes over several ticks while a database with a client is steady:
    counted from when its status shows the client (the one write the client itself is owed)."""
    running.readings[key] = reading(sessions=1)
    namespace, name = key.split("/")
    await eventually(
        lambda: (
            (kube.get("serverlessdatabases", name, namespace) or {}).get("status", {}).get("connections") == 1
        ),
        what="the client in the status",
    )
    kube.clear_requests()
    await asyncio.sleep(1.5)
    return list(kube.requests)


def slice_addresses(kube: KubeApiDouble, name: str = "orders") -> tuple[list[str], list[int]]:
    found = kube.get("endpointslices", f"{name}-sdb", "shop") or {}
    addresses = [a for e in found.get("endpoints") or [] for a in e.get("addresses") or []]
    return addresses, [p["port"] for p in found.get("ports") or []]


async def echo_server() -> tuple[asyncio.Server, Upstream]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(b"pod:" + data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, Upstream("127.0.0.1", server.sockets[0].getsockname()[1])


async def client_pod(
    kube: KubeApiDouble, namespace: str, name: str = "client", *, labels: dict[str, str] | None = None
) -> str:
    """A running pod in `namespace`, and its address: where a client inside the cluster dials from."""
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"containers": [{"name": "app", "image": "psql"}]},
        }
    )
    await eventually(lambda: kube.pod_ready(name, namespace), what=f"{namespace}/{name} to run")
    return str(kube.get("pods", name, namespace)["status"]["podIP"])  # type: ignore[index]


@contextlib.asynccontextmanager
async def activator_backend(kube: KubeApiDouble) -> AsyncIterator[ClusterBackend]:
    """The cluster activator's view of the databases (as `sdb activator` keeps it), without its ports."""
    backend = ClusterBackend(
        kc.Kube(kube.api_client(), permissions.ACTIVATOR), listen_host="127.0.0.1", port_range=ACTIVATOR_PORTS
    )
    task = asyncio.create_task(backend.databases.run())
    await backend.databases.synced.wait()
    try:
        yield backend
    finally:
        backend.databases.stop()
        task.cancel()


async def post_sql(
    port: int,
    client: str,
    query: str,
    *,
    connection: str,
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    """`POST /sql` to a gateway on loopback as the driver sends it, from a client pod's address."""
    connector = aiohttp.TCPConnector(local_addr=(client, 0), ssl=tls or False)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(
            f"{'https' if tls else 'http'}://127.0.0.1:{port}/sql",
            data=json.dumps({"query": query, "params": []}),
            headers={request.CONNECTION_STRING: connection, request.ARRAY_MODE: "true", **(headers or {})},
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


def service_account_token(kube: KubeApiDouble, account: str, *audiences: str, seconds: int = 600) -> str:
    """A projected token of a ServiceAccount in `shop`, as the kubelet gets one for a pod: a TokenRequest."""
    body = {"spec": {"audiences": list(audiences), "expirationSeconds": seconds}}
    post = urllib.request.Request(
        f"{kube.url}/api/v1/namespaces/shop/serviceaccounts/{account}/token",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(post, timeout=10) as response:
        return str(json.load(response)["status"]["token"])
