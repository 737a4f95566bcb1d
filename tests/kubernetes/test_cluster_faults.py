"""The Kubernetes runtime when things go wrong: conflicts, expired watches, restarts, two replicas,
a node too small for a resize.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubeapi import KubeApiDouble
from support.cluster import (
    SYSTEM,
    activator_slice,
    cluster,
    condition,
    create,
    eventually,
    operator,
    phase,
    reading,
    sdb,
)
from support.postgres import Server

from controller.api import codec, types
from controller.runtime.kubernetes import builders, permissions
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes.informer import Informer
from controller.runtime.kubernetes.store import KubeStore

pytestmark = pytest.mark.kubernetes


@contextlib.asynccontextmanager
async def database_store(kube: KubeApiDouble) -> AsyncIterator[tuple[KubeStore, types.ServerlessDatabase]]:
    """A store over a watched cache, and the database `orders` as it first reads it."""
    create(kube)
    api = kc.Kube(kube.api_client(), permissions.OPERATOR)
    informer = Informer(api, kc.DATABASES, watch_timeout=5)
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    store = KubeStore(api, informer)
    db = await store.get("shop/orders")
    assert db is not None
    try:
        yield store, db
    finally:
        informer.stop()
        task.cancel()


async def test_status_writes_retry_a_conflict_from_a_fresh_read(kube: KubeApiDouble) -> None:
    async with database_store(kube) as (store, db):
        # Someone else changes the object after we read it: our resourceVersion is stale now.
        kube.apply(
            {
                "apiVersion": types.API_VERSION,
                "kind": types.KIND,
                "metadata": {"name": "orders", "namespace": "shop", "labels": {"team": "checkout"}},
            },
            manager="someone-else",
        )
        status = types.DatabaseStatus(phase=types.Phase.ACTIVE, connections=2, observed_generation=1)
        await store.write_status(db, status)
        puts = kube.requests_matching(resource="serverlessdatabases", subresource="status", writes_only=True)
        assert [r.status for r in puts] == [409, 200]
        assert sdb(kube)["status"]["connections"] == 2
        assert sdb(kube)["metadata"]["labels"] == {"team": "checkout"}  # the other writer's change survives
        # Finalizers, too, are written against the version read, and retried on a conflict.
        kube.fail_requests(409, verb="patch", resource="serverlessdatabases", times=1)
        await store.set_finalizer(db, True)
        assert types.FINALIZER in sdb(kube)["metadata"]["finalizers"]


async def test_a_reply_that_comes_after_the_watch_never_takes_the_cache_back(kube: KubeApiDouble) -> None:
    """The status write is served, then the object is deleted, and only then does the write's reply
    arrive: the cache keeps the deletion the watch brought, and the next read sees it."""
    async with database_store(kube) as (store, first):
        await store.set_finalizer(first, True)
        db = await store.get("shop/orders")
        assert db is not None
        held = kube.hold_reply(verb="update", resource="serverlessdatabases", subresource="status")
        writing = asyncio.create_task(store.write_status(db, types.DatabaseStatus(phase=types.Phase.ACTIVE)))
        assert await asyncio.to_thread(held.served.wait, 10)
        kube.delete("serverlessdatabases", "orders", "shop")  # the finalizer keeps it, marked for deletion
        await eventually(
            lambda: (store.databases.get("shop", "orders") or {})["metadata"].get("deletionTimestamp"),
            what="the watch to bring the deletion",
        )
        held.release.set()
        await writing
        again = await store.get("shop/orders")
        assert again is not None
        assert again.metadata.deletion_timestamp is not None
        assert again.status.phase is types.Phase.ACTIVE  # and the status written is there too


async def test_a_write_waits_for_the_watch_to_bring_it_back(kube: KubeApiDouble) -> None:
    """A pass reads its own last write: from the cache once the watch brought it, whichever came first."""
    async with database_store(kube) as (store, db):
        await store.write_status(db, types.DatabaseStatus(phase=types.Phase.ACTIVE, connections=7))
        again = await store.get("shop/orders")  # no sleep: the read itself waits for the watch
        assert again is not None
        assert again.status.connections == 7
        # The watch stalls: the read gives up waiting and asks the server, and the cache is left alone.
        for verb in ("watch", "list"):
            kube.fail_requests(503, verb=verb, resource="serverlessdatabases", times=None)
        kube.drop_watches()
        await store.write_status(again, types.DatabaseStatus(phase=types.Phase.ACTIVE, connections=8))
        stalled = await store.get("shop/orders")
        assert stalled is not None
        assert stalled.status.connections == 8
        assert (store.databases.get("shop", "orders") or {})["status"]["connections"] == 7
        kube.clear_faults()


async def test_an_expired_watch_lists_again_and_misses_nothing(kube: KubeApiDouble) -> None:
    api = kc.Kube(kube.api_client(), permissions.OPERATOR)
    seen: list[str] = []
    informer = Informer(
        api, kc.DATABASES, watch_timeout=2, on_change=lambda key, obj, deleted: seen.append(key)
    )
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    create(kube, "first")
    await eventually(lambda: "shop/first" in informer.cache, what="first")
    # The watch ends and cannot start again for a while; meanwhile an object is made and the server
    # forgets the history: resuming from the informer's last resourceVersion then gets 410.
    kube.fail_requests(503, verb="watch", resource="serverlessdatabases", times=None)
    kube.drop_watches()
    create(kube, "second")
    kube.compact_history()
    kube.clear_faults()
    await eventually(lambda: "shop/second" in informer.cache, what="second after relisting")
    assert informer.relists >= 2
    assert "shop/second" in seen
    informer.stop()
    task.cancel()


async def test_an_operator_restarted_mid_pause_converges_without_duplicates(
    kube: KubeApiDouble, pods: Server
) -> None:
    kube.create(activator_slice())
    create(kube, autoPause={"idleAfter": "1s"})
    async with operator(kube, pods) as first:
        await eventually(lambda: phase(kube) == "Active", what="Active")
        # The scale to zero fails (as if the process died after routing to the activator).
        kube.fail_requests(503, verb="patch", resource="statefulsets", times=None)
        first.readings["shop/orders"] = reading(last_activity=datetime.now(UTC) - timedelta(minutes=1))
        await eventually(lambda: sdb(kube)["status"].get("failures", 0) > 0, what="the stop to fail")
        assert phase(kube) == "Pausing"
    kube.clear_faults()
    async with operator(kube, pods, identity="op-2") as second:
        second.readings["shop/orders"] = reading(last_activity=datetime.now(UTC) - timedelta(minutes=1))
        await eventually(lambda: phase(kube) == "Paused", what="Paused after the restart")
    for resource in (
        "statefulsets",
        "services",
        "endpointslices",
        "secrets",
        "configmaps",
        "persistentvolumeclaims",
    ):
        names = [o["metadata"]["name"] for o in kube.list(resource, "shop")]
        assert len(names) == len(set(names)), (resource, names)
    assert len(kube.list("statefulsets", "shop")) == 1
    assert sorted(s["metadata"]["name"] for s in kube.list("secrets", "shop")) == [
        "orders-app",
        "orders-credentials",
        "orders-tls",
    ]
    assert len(kube.list("persistentvolumeclaims", "shop")) == 1
    assert kube.get("statefulsets", "orders", "shop")["spec"]["replicas"] == 0  # type: ignore[index]


async def test_two_replicas_only_the_leader_writes(kube: KubeApiDouble, pods: Server) -> None:
    kube.create(activator_slice())
    writes: dict[str, list[str]] = {"op-a": [], "op-b": []}

    def counting(identity: str, api: kc.Kube) -> None:
        inner = api.request

        def request(verb: str, kind: kc.Kind, **kwargs: Any) -> Any:
            if verb in ("create", "patch", "update", "delete") and kind is not kc.LEASES:
                writes[identity].append(f"{verb} {kind.plural}")
            return inner(verb, kind, **kwargs)

        api.request = request  # type: ignore[method-assign]

    async with operator(kube, pods, identity="op-a", leader_elect=True) as a:
        counting("op-a", a.operator.kube)
        await eventually(a.operator.elector.leading.is_set, what="op-a to lead")
        async with operator(kube, pods, identity="op-b", leader_elect=True) as b:
            counting("op-b", b.operator.kube)
            create(kube)
            await eventually(lambda: phase(kube) == "Active", what="Active")
            await asyncio.sleep(1.0)
            assert not b.operator.elector.leading.is_set()
            assert writes["op-a"]
            assert writes["op-b"] == []
            lease = kube.get("leases", "serverless-db-operator", SYSTEM)
            assert lease is not None
            assert lease["spec"]["holderIdentity"] == "op-a"
            # The leader stops cleanly and releases the Lease: the standby takes over and acts.
            a.stop.set()
            await asyncio.wait_for(a.task, 10)
            await eventually(b.operator.elector.leading.is_set, timeout=10, what="op-b to lead")
            kube.apply(
                {
                    "apiVersion": types.API_VERSION,
                    "kind": types.KIND,
                    "metadata": {"name": "orders", "namespace": "shop"},
                    "spec": {"capacity": {"min": 1, "max": 4}},
                },
                manager="kubectl",
            )
            await eventually(lambda: sdb(kube)["status"]["capacity"]["current"] == 1.0, what="op-b to resize")
            assert writes["op-b"]


def settled_at_the_limit(kube: KubeApiDouble) -> bool:
    """The node has refused all it will: the pod's container runs at the limit status records, as its
    spec asks, and nothing is pending.

    (Status alone is not enough: it can show a request at the limit before the node has answered it,
    and a refusal then lowers the limit again.)
    """
    pod = kube.get("pods", "orders-0", "shop") or {}
    pending = any(c["type"] == "PodResizePending" for c in pod.get("status", {}).get("conditions") or [])
    asked = builders.capacity_of(container(pod.get("spec") or {}).get("resources"))
    running = builders.capacity_of(container(pod.get("status") or {}, "containerStatuses").get("resources"))
    status = sdb(kube)["status"]
    limit = (status.get("compute") or {}).get("limit")
    return not pending and limit is not None and status["capacity"]["current"] == asked == running == limit


def container(part: dict[str, Any], key: str = "containers") -> dict[str, Any]:
    return next((c for c in part.get(key) or [] if c.get("name") == "postgres"), {})


async def test_a_resize_the_node_cannot_fit_keeps_the_old_size_and_says_so(
    kube: KubeApiDouble, pods: Server
) -> None:
    kube.create(activator_slice())
    kube.set_node_capacity(cpu="2", memory="16Gi")
    async with operator(kube, pods) as running:
        create(kube, capacity={"min": 1, "max": 4})
        await eventually(lambda: phase(kube) == "Active", what="Active")
        running.readings["shop/orders"] = reading(cpu=3.0, sessions=1)  # 3 / 0.9 -> 3.5 CU > the node
        await eventually(
            lambda: condition(kube, "Scaling")["reason"] == "ResizeInfeasible", what="Infeasible"
        )
        scaling = condition(kube, "Scaling")
        assert scaling["status"] == "False"
        assert "cannot fit" in scaling["message"]
        await asyncio.sleep(1.0)
        status = sdb(kube)["status"]
        assert status["capacity"]["current"] < 3.5
        pod = kube.get("pods", "orders-0", "shop")
        assert pod is not None
        assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"])
        reasons = [e["reason"] for e in kube.list("events", "shop")]
        assert "ResizeInfeasible" in reasons or "ScaledUp" in reasons
        db = codec.decode(sdb(kube))
        assert db.status.phase is types.Phase.ACTIVE
        await eventually(lambda: settled_at_the_limit(kube), timeout=20, what="the largest size that fits")
    # What the node refused is in status: a restarted operator does not ask for it again.
    limit = sdb(kube)["status"]["compute"]["limit"]
    assert 1 <= limit < 3.5
    kube.clear_requests()
    async with operator(kube, pods, identity="op-2") as restarted:
        restarted.readings["shop/orders"] = reading(cpu=3.0, sessions=1)
        await eventually(lambda: restarted.operator.reconciler.reconciles >= 10, what="ten passes")
    assert kube.requests_matching(resource="pods", subresource="resize", writes_only=True) == []
    assert sdb(kube)["status"]["capacity"]["current"] <= limit


@pytest.mark.parametrize("allow_restart", [False, True])
async def test_without_in_place_resize_the_size_stays_unless_a_restart_is_allowed(
    allow_restart: bool, pods: Server
) -> None:
    with cluster(version="v1.32.4") as old:  # before 1.33: no pods/resize
        old.create(activator_slice())
        async with operator(old, pods) as running:
            assert not running.operator.runtime.in_place_resize
            create(old, capacity={"min": 0.5, "max": 4}, scaling={"allowRestart": allow_restart})
            await eventually(lambda: phase(old) == "Active", what="Active")
            running.readings["shop/orders"] = reading(cpu=1.7, sessions=1)  # 1.7 / 0.9 -> 2 CU
            if allow_restart:
                # a rolling restart at the new size: the template changes, the pod is replaced
                await eventually(
                    lambda: sdb(old)["status"]["capacity"]["current"] == 2.0,
                    timeout=20,
                    what="2 CU after a restart",
                )
                template = old.get("statefulsets", "orders", "shop")["spec"]["template"]  # type: ignore[index]
                assert template["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "2"
            else:
                await eventually(
                    lambda: condition(old, "Scaling")["reason"] == "ResizeNeedsRestart",
                    what="ResizeNeedsRestart",
                )
                assert "allowRestart is false" in condition(old, "Scaling")["message"]
                assert sdb(old)["status"]["capacity"]["current"] == 0.5
                assert phase(old) == "Active"
                await eventually(
                    lambda: "ResizeNeedsRestart" in [e["reason"] for e in old.list("events", "shop")],
                    what="a ResizeNeedsRestart event",
                )
