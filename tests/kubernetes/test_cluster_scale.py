"""What a fleet costs the cluster operator: resting databases cost no passes and no API calls, the
caches hold projections, and the client keeps to its rate and to the server's Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from kubeapi import KubeApiDouble
from support.cluster import activator_slice, create, eventually, operator, phase, reading, sdb
from support.fakes import FakeMetrics
from support.postgres import Server

from controller.api import codec, types
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes import permissions, projection
from controller.runtime.kubernetes.informer import Informer
from controller.runtime.kubernetes.store import KubeStore

pytestmark = pytest.mark.kubernetes


async def test_resting_databases_get_no_pass_and_no_api_call_over_many_ticks(
    kube: KubeApiDouble, pods: Server
) -> None:
    kube.create(activator_slice())
    async with operator(kube, pods) as running:
        create(kube, "resting", state="Paused")
        create(kube, "gone", state="Parked")
        await eventually(lambda: phase(kube, "resting") == "Paused", what="Paused")
        await eventually(lambda: phase(kube, "gone") == "Parked", what="Parked")
        reconciler = running.operator.reconciler
        await asyncio.sleep(0.5)  # the last status write's own echo has come and gone
        kube.clear_requests()
        passes = reconciler.reconciles
        await asyncio.sleep(10 * running.operator.options.tuning.tick.total_seconds())
        assert reconciler.reconciles == passes
        calls = [r for r in kube.requests if r.resource != "leases.coordination.k8s.io" and r.verb != "watch"]
        assert calls == [], [(r.verb, r.resource, r.name) for r in calls]


class SteppedClock:
    """The operator's clock, moved only by the test: minutes of a steady load pass in a few ticks, and
    a reading (stamped when handed out) is never older than one step when its pass decides. (looptime
    cannot drive this operator: its client's calls and watches run in threads.)"""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


async def test_a_running_database_with_a_steady_load_makes_no_api_write_over_many_ticks(
    kube: KubeApiDouble, pods: Server
) -> None:
    """Nothing a user reads changes, so nothing is written: not its usage (status plus the time since
    gives it), not its learned load, not its last activity (its session stays open)."""
    kube.create(activator_slice())
    clock = SteppedClock()
    step = timedelta(seconds=10)
    async with operator(kube, pods, metrics=FakeMetrics(clock)) as running:
        reconciler = running.operator.reconciler
        reconciler.clock = clock

        async def a_pass_later() -> None:
            """Move the clock a step, and wait for a pass that began after it."""
            clock.advance(step)
            done = reconciler.reconciles
            await eventually(lambda: reconciler.reconciles >= done + 2, what="a pass after the step")

        create(kube, autoPause={"enabled": False})
        await eventually(lambda: phase(kube) == "Active", what="Active")
        running.readings["shop/orders"] = reading(cpu=0.2, sessions=1)
        await eventually(lambda: sdb(kube)["status"].get("connections") == 1, what="the session in status")
        for _ in range(6):  # what the first readings taught (its load, its activity) is written
            kube.clear_requests()
            await a_pass_later()
            if not [r for r in kube.requests if r.is_write and r.resource != "leases.coordination.k8s.io"]:
                break
        kube.clear_requests()
        since = clock()
        for _ in range(20):
            await a_pass_later()
        assert clock() - since > timedelta(minutes=3)  # six 30 s usage flushes' worth, had there been any
        writes = [r for r in kube.requests if r.is_write and r.resource != "leases.coordination.k8s.io"]
        assert writes == [], [(r.verb, r.resource, r.name) for r in writes]
    usage = codec.decode(sdb(kube)).status.usage
    assert usage is not None
    assert usage.accounted_until < since  # what a reader carries to now (metering.live)


async def test_a_restart_looks_at_each_database_once_at_resync_priority(
    kube: KubeApiDouble, pods: Server
) -> None:
    """Filling the caches tells of every object (each database's own and its compute objects): the
    start's list already holds all of it, so none of it comes again as a change."""
    kube.create(activator_slice())
    states = {f"rest{index:02d}": "Paused" if index % 2 else "Parked" for index in range(12)}
    names = list(states)
    async with operator(kube, pods):
        for name, state in states.items():
            create(kube, name, state=state)
        await eventually(lambda: all(phase(kube, n) == s for n, s in states.items()), what="all at rest")
    async with operator(kube, pods, identity="op-2") as running:
        reconciler = running.operator.reconciler
        await asyncio.wait_for(reconciler.synced.wait(), 10)
        await asyncio.sleep(1.0)  # anything queued behind the first looks has had its worker too
        waits = running.operator.exposition.queue_wait
        assert reconciler.reconciles == len(names)
        counts = {
            label: sum(
                s.value
                for family in waits.collect()
                for s in family.samples
                if s.name.endswith("_count") and s.labels["priority"] == label
            )
            for label in ("Wake", "Change", "Tick", "Resync")
        }
        assert counts == {"Wake": 0, "Change": 0, "Tick": 0, "Resync": len(names)}


@contextlib.asynccontextmanager
async def watched_store(kube: KubeApiDouble) -> AsyncIterator[tuple[KubeStore, Informer]]:
    """The operator's store over a synced database cache."""
    api = kc.Kube(kube.api_client(), permissions.OPERATOR)
    informer = Informer(api, kc.DATABASES, watch_timeout=5)
    task = asyncio.create_task(informer.run())
    try:
        await informer.synced.wait()
        yield KubeStore(api, informer), informer
    finally:
        informer.stop()
        task.cancel()


async def test_a_database_told_of_again_before_it_was_handed_on_is_handed_on_once(
    kube: KubeApiDouble,
) -> None:
    create(kube, "orders")
    create(kube, "users")
    async with watched_store(kube) as (store, _):
        for key in ("shop/orders", "shop/users", "shop/orders", "shop/orders"):  # a pod, its set, ...
            store.notify(key)
        feed = aiter(store.changes())
        handed = [(await anext(feed))[0] for _ in range(2)]
        assert handed == ["shop/orders", "shop/users"]
        with pytest.raises(TimeoutError):  # nothing more: the repeats were one look
            await asyncio.wait_for(anext(feed), 0.5)
        store.notify("shop/orders")  # told again after it was handed on: a new change
        key, db = await asyncio.wait_for(anext(aiter(store.changes())), 1)
        assert key == "shop/orders"
        assert db is not None
        assert db.metadata.name == "orders"


async def test_a_running_database_is_decoded_once_per_version_a_resting_one_each_read(
    kube: KubeApiDouble,
) -> None:
    create(kube, "orders")
    create(kube, "archive")
    for name, phase_ in (("orders", "Active"), ("archive", "Parked")):
        kube.patch_status("serverlessdatabases", name, {"phase": phase_}, "shop")
    async with watched_store(kube) as (store, informer):
        first, again = await store.get("shop/orders"), await store.get("shop/orders")
        assert first is not None
        assert again is first  # each tick of a running database reads it: one decode serves them
        resting = await store.get("shop/archive")
        assert resting is not None
        assert await store.get("shop/archive") is not resting
        edit = {"metadata": {"name": "orders", "namespace": "shop"}, "spec": {"capacity": {"max": 2}}}
        kube.apply({"apiVersion": types.API_VERSION, "kind": types.KIND, **edit})
        await eventually(
            lambda: (informer.get("shop", "orders") or {})["spec"]["capacity"]["max"] == 2, what="the edit"
        )
        changed = await store.get("shop/orders")
        assert changed is not None
        assert changed is not first
        assert changed.spec.capacity.max == 2


async def test_the_caches_hold_projections_without_managed_fields(kube: KubeApiDouble, pods: Server) -> None:
    kube.create(activator_slice())
    async with operator(kube, pods) as running:
        create(kube)
        await eventually(lambda: phase(kube) == "Active", what="Active")
        informers = running.operator.informers
        for informer in informers.all():
            for obj in informer.values():
                assert "managedFields" not in obj["metadata"], informer.kind.kind
        cached = informers.statefulsets.get("shop", "orders")
        assert cached is not None
        assert "status" not in cached
        # What a pass reads is there as it is; what only a start compares is packed, and whole.
        stored = kube.get("statefulsets", "orders", "shop")
        assert stored is not None
        assert cached["spec"] == {"replicas": 1}
        assert projection.unpacked(cached) == projection.owned(stored)
        assert len(cached[projection.PACKED]) < len(json.dumps(stored["spec"])) / 2
        pod = informers.pods.get("shop", "orders-0")
        assert pod is not None
        assert set(pod) == {"metadata", "spec", "status"}
        assert [set(c) for c in pod["spec"]["containers"]] == [{"name", "resources"}] * 2


def test_a_429_is_waited_out_as_long_as_the_server_says(kube: KubeApiDouble) -> None:
    slept: list[float] = []
    api = kc.Kube(kube.api_client(), permissions.OPERATOR, sleep=slept.append)
    kube.fail_requests(429, verb="get", resource="secrets", times=2, retry_after=3)
    assert api.get(kc.SECRETS, "shop", "nothing") is None
    assert slept == [3.0, 3.0]
    assert [r.status for r in kube.requests_matching(resource="secrets")] == [429, 429, 404]


def test_a_429_without_retry_after_fails_at_once(kube: KubeApiDouble) -> None:
    slept: list[float] = []
    api = kc.Kube(kube.api_client(), permissions.OPERATOR, sleep=slept.append)
    kube.fail_requests(429, verb="get", resource="secrets", times=1)
    with pytest.raises(kc.ApiError) as raised:
        api.get(kc.SECRETS, "shop", "nothing")
    assert raised.value.status == 429
    assert slept == []


def test_requests_keep_to_the_client_rate_after_a_burst() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limit = kc.RateLimit(10, 3, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limit.take()
    assert slept == pytest.approx([0.1, 0.1])  # three at once, then one every 1/10 s
    now[0] += 1.0  # a quiet second refills the bucket, up to the burst
    for _ in range(3):
        limit.take()
    assert len(slept) == 2
    assert kc.rate_limit(0, 10) is None
