"""The Kubernetes runtime end to end against the API double, through the real `kubernetes` client:
create, scale in place, pause through the activator, wake on connect, park, delete.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from kubeapi import KubeApiDouble
from kubernetes import client
from support.cluster import (
    ACTIVATOR_PORTS,
    activator_slice,
    client_pod,
    create,
    echo_server,
    eventually,
    operator,
    phase,
    reading,
    sdb,
    slice_addresses,
    steady_requests,
)
from support.postgres import Server

from controller.activator import protocol
from controller.api import types
from controller.app.activator import ClusterBackend
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes import permissions

pytestmark = pytest.mark.kubernetes


async def test_the_whole_life_of_a_database(kube: KubeApiDouble, pods: Server) -> None:
    kube.create(activator_slice())
    pod_server, pod_target = await echo_server()
    backend = ClusterBackend(
        kc.Kube(kube.api_client(), permissions.ACTIVATOR),
        address=lambda db: pod_target,
        listen_host="127.0.0.1",
        port_range=ACTIVATOR_PORTS,
    )
    activator_stop = asyncio.Event()
    activator_task = asyncio.create_task(backend.run(activator_stop))
    neighbour = await client_pod(kube, "shop")
    async with operator(kube, pods) as running:
        # -- create: every object exists and the status reaches Active ----------------------------
        create(
            kube,
            capacity={"min": 0.5, "max": 4},
            autoPause={"idleAfter": "2s"},
            autoPark={"idleAfter": "2s"},
            storage={"size": "5Gi"},
        )
        await eventually(lambda: phase(kube) == "Active", what="Active")
        for resource, name in (
            ("statefulsets", "orders"),
            ("services", "orders"),
            ("services", "orders-headless"),
            ("endpointslices", "orders-sdb"),
            ("secrets", "orders-credentials"),
            ("secrets", "orders-tls"),
            ("configmaps", "orders-config"),
            ("configmaps", "serverless-db-ca"),
            ("persistentvolumeclaims", "data-orders-0"),
        ):
            assert kube.get(resource, name, "shop") is not None, (resource, name)
        pod = kube.get("pods", "orders-0", "shop")
        assert pod is not None
        assert slice_addresses(kube) == ([pod["status"]["podIP"]], [5432])
        status = sdb(kube)["status"]
        assert status["endpoint"] == "orders.shop.svc:5432"
        assert status["capacity"]["current"] == 0.5
        assert status["observedGeneration"] == sdb(kube)["metadata"]["generation"]
        assert types.FINALIZER in sdb(kube)["metadata"]["finalizers"]

        # -- load: the pod is resized in place, without a restart ---------------------------------
        running.readings["shop/orders"] = reading(cpu=1.7, sessions=3)  # 1.7 / 0.9 -> 2.0 CU
        await eventually(lambda: sdb(kube)["status"]["capacity"]["current"] == 2.0, what="2 CU")
        pod = kube.get("pods", "orders-0", "shop")
        assert pod is not None
        postgres = next(c for c in pod["spec"]["containers"] if c["name"] == "postgres")
        assert postgres["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
        assert kube.requests_matching(resource="pods", subresource="resize", writes_only=True)
        assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"])
        # The settings of 2 CU follow once the kubelet has resized the pod (on the server standing in for it).
        await eventually(lambda: pods.setting("work_mem") == "32MB", what="the settings of 2 CU")
        assert (
            kube.get("statefulsets", "orders", "shop")["spec"]["template"]["spec"]["containers"][0][  # type: ignore[index]
                "resources"
            ]["limits"]["cpu"]
            == "500m"
        )  # the template is not touched: no rolling restart

        # -- idle: paused behind the activator, at zero replicas, the volume kept ----------------
        running.readings["shop/orders"] = reading(last_activity=datetime.now(UTC) - timedelta(minutes=1))
        await eventually(lambda: phase(kube) == "Paused", what="Paused")
        port = int(sdb(kube)["status"]["activatorPort"])
        assert slice_addresses(kube) == (["127.0.0.1"], [port])
        assert kube.get("statefulsets", "orders", "shop")["spec"]["replicas"] == 0  # type: ignore[index]
        await eventually(lambda: kube.get("pods", "orders-0", "shop") is None, what="the pod to go")
        assert kube.get("persistentvolumeclaims", "data-orders-0", "shop") is not None
        del running.readings["shop/orders"]

        # -- a client from a namespace the database does not allow is refused, and wakes nothing --
        startup = protocol.startup_message({"user": "app"})
        stranger = await client_pod(kube, "other")
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(stranger, 0))
        writer.write(startup)
        refusal = await asyncio.wait_for(reader.read(), 15)
        writer.close()
        assert refusal[:1] == b"E", refusal
        assert b"\x00C28000\x00" in refusal, refusal
        assert kube.list("wakerequests", "shop") == []
        assert phase(kube) == "Paused"

        # -- a connection from its own namespace wakes it (a client's startup; junk would not) ----
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(neighbour, 0))
        writer.write(startup)
        assert await asyncio.wait_for(reader.readexactly(4 + len(startup)), 15) == b"pod:" + startup
        writer.close()
        assert phase(kube) == "Active"
        pod = kube.get("pods", "orders-0", "shop")
        assert pod is not None
        assert slice_addresses(kube) == ([pod["status"]["podIP"]], [5432])

        # -- long idle: parked, only storage and credentials remain ------------------------------
        running.readings["shop/orders"] = reading(last_activity=datetime.now(UTC) - timedelta(minutes=1))
        await eventually(lambda: phase(kube) == "Parked", timeout=20, what="Parked")
        for resource, name in (
            ("statefulsets", "orders"),
            ("configmaps", "orders-config"),
            ("services", "orders-headless"),
        ):
            assert kube.get(resource, name, "shop") is None, (resource, name)
        for resource, name in (
            ("persistentvolumeclaims", "data-orders-0"),
            ("secrets", "orders-credentials"),
            ("services", "orders"),
            ("endpointslices", "orders-sdb"),
        ):
            assert kube.get(resource, name, "shop") is not None, (resource, name)
        assert slice_addresses(kube) == (["127.0.0.1"], [port])

        # -- delete: the PVC stays by default; with retainOnDelete false it goes ---------------
        create(kube, "scratch", storage={"retainOnDelete": False})
        await eventually(lambda: phase(kube, "scratch") == "Active", what="scratch Active")
        custom = client.CustomObjectsApi(kube.api_client())
        for name in ("orders", "scratch"):
            custom.delete_namespaced_custom_object(types.GROUP, types.VERSION, "shop", types.PLURAL, name)
        await eventually(
            lambda: kube.get("serverlessdatabases", "orders", "shop") is None, what="orders gone"
        )
        await eventually(
            lambda: kube.get("serverlessdatabases", "scratch", "shop") is None, what="scratch gone"
        )
        assert kube.get("persistentvolumeclaims", "data-orders-0", "shop") is not None
        assert kube.get("secrets", "orders-credentials", "shop") is not None
        await eventually(
            lambda: kube.get("persistentvolumeclaims", "data-scratch-0", "shop") is None, what="PVC"
        )
        assert kube.get("secrets", "scratch-credentials", "shop") is None
        reasons = [e["reason"] for e in kube.list("events", "shop")]
        for reason in (
            "Started",
            "ScaledUp",
            "Pausing",
            "Paused",
            "Resuming",
            "Parking",
            "Parked",
            "StorageRetained",
            "StorageDeleted",
        ):
            assert reason in reasons, reason
    activator_stop.set()
    await activator_task
    pod_server.close()


async def test_every_write_is_needed_and_single(kube: KubeApiDouble, pods: Server) -> None:
    kube.create(activator_slice())
    async with operator(kube, pods) as running:
        create(kube)
        await eventually(lambda: phase(kube) == "Active", what="Active")
        requests = await steady_requests(kube, running)
        writes = [r for r in requests if r.is_write and r.resource != "events"]
        assert writes == [], [(r.verb, r.resource, r.name) for r in writes]
