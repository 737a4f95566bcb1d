"""The activator's gateway in a cluster, against the API double: `POST /sql` for a database by its
Service name reaches a running database's pod straight away (no WakeRequest), wakes a paused one
once and holds the request meanwhile, and refuses a client from a namespace the database does not
allow, waking nothing. The gateway and the activator's watch are the real ones; the pod's Postgres
is the real server standing in for every pod (it serves no TLS: the CA check is `postgres_tls`'s,
tested with the activator's flags)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubeapi import KubeApiDouble
from support.cluster import (
    ACTIVATOR_PORTS,
    activator_slice,
    client_pod,
    create,
    eventually,
    operator,
    phase,
    post_sql,
    reading,
    sdb,
)
from support.postgres import Server

from controller.activator.proxy import Upstream
from controller.app.activator import ClusterBackend, GatewayBackend
from controller.gateway.reach import PostgresTls
from controller.gateway.server import Gateway, listen
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes import permissions
from controller.runtime.local.server import SERVER_USER

pytestmark = pytest.mark.kubernetes
ENDPOINT = "https://activator.sdb-system.svc/sql"


async def sql(gateway: Gateway, client: str, query: str) -> tuple[int, Any]:
    assert gateway.port is not None
    connection = f"postgresql://{SERVER_USER}:any@orders.shop.svc/postgres"
    return await post_sql(gateway.port, client, query, connection=connection)


def wake_requests(kube: KubeApiDouble) -> int:
    return len(kube.requests_matching(verb="create", resource="wakerequests"))


async def test_sql_over_http_reaches_a_running_database_and_wakes_a_paused_one(
    kube: KubeApiDouble, pods: Server
) -> None:
    kube.create(activator_slice())
    cluster = ClusterBackend(
        kc.Kube(kube.api_client(), permissions.ACTIVATOR),
        address=lambda db: Upstream("127.0.0.1", pods.port),
        listen_host="127.0.0.1",
        port_range=ACTIVATOR_PORTS,
    )
    gateway = Gateway(GatewayBackend(cluster), postgres_tls=PostgresTls())
    await gateway.start(listen("127.0.0.1", 0, tls=False))
    stop = asyncio.Event()
    watching = asyncio.create_task(cluster.run(stop))
    neighbour = await client_pod(kube, "shop")
    stranger = await client_pod(kube, "other")
    try:
        async with operator(kube, pods, gateway_endpoint=ENDPOINT) as running:
            create(kube, autoPause={"idleAfter": "2s"})
            await eventually(lambda: phase(kube) == "Active", what="Active")
            assert sdb(kube)["status"]["httpEndpoint"] == ENDPOINT  # what a driver's fetchEndpoint is
            await eventually(lambda: cluster.awake("shop/orders"), what="the activator to see it Active")

            status, body = await sql(gateway, neighbour, "SELECT 1")
            assert (status, body["rows"]) == (200, [[1]])
            assert wake_requests(kube) == 0  # running: straight to its pod

            status, body = await sql(gateway, stranger, "SELECT 1")
            assert (status, body["code"]) == (400, "3D000")

            running.readings["shop/orders"] = reading(last_activity=datetime.now(UTC) - timedelta(minutes=1))
            await eventually(lambda: phase(kube) == "Paused", what="Paused")
            del running.readings["shop/orders"]
            await eventually(lambda: not cluster.awake("shop/orders"), what="the activator to see it rest")

            status, body = await sql(gateway, stranger, "SELECT 1")
            assert (status, body["code"]) == (400, "3D000")
            assert wake_requests(kube) == 0  # a refused client wakes nothing

            status, body = await sql(gateway, neighbour, "SELECT 2")
            assert (status, body["rows"]) == (200, [[2]])  # held while it woke
            assert wake_requests(kube) == 1
            assert phase(kube) == "Active"
    finally:
        await gateway.close()
        stop.set()
        await watching
