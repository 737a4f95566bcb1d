"""The pooled endpoint in a cluster, against the API double: the operator's `<name>-pooler` objects,
a real PgBouncer running the files it wrote (support.pooler_pod), the pool following a resize on
that PgBouncer's console with a client connected, pooling turned off, and the database deleted.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from kubeapi import KubeApiDouble
from kubernetes import client
from support.cluster import (
    activator_backend,
    activator_slice,
    client_pod,
    condition,
    create,
    eventually,
    operator,
    phase,
    reading,
    sdb,
    steady_requests,
)
from support.pooler_pod import HOST, PoolerPod
from support.postgres import Server
from support.requirements import require_pgbouncer

from controller.api import codec, types
from controller.policy import sizing
from controller.postgres import pooler
from controller.runtime.kubernetes import builders, permissions
from controller.runtime.kubernetes import pooler as pooled

pytestmark = pytest.mark.kubernetes

POOLER_KINDS = ("deployments", "services", "networkpolicies", "secrets")


@pytest.fixture
async def pod(pods: Server) -> AsyncIterator[PoolerPod]:
    require_pgbouncer()
    stand_in = PoolerPod(user=pods.cluster.user, server_port=pods.port)
    yield stand_in
    await stand_in.stop()


def secret_text(kube: KubeApiDouble, name: str, key: str) -> str:
    found = kube.get("secrets", name, "shop")
    assert found is not None, name
    return base64.b64decode(found["data"][key]).decode()


def console(pod: PoolerPod, kube: KubeApiDouble) -> pooler.Console:
    return pooler.Console(HOST, pod.port, secret_text(kube, "orders-pooler", pooled.ADMIN_PASSWORD_KEY))


def shown(pod: PoolerPod, kube: KubeApiDouble, setting: str) -> str:
    with psycopg.connect(
        host=HOST,
        port=pod.port,
        user=pooler.ADMIN_USER,
        password=console(pod, kube).password,
        dbname=pooler.ADMIN_DATABASE,
        sslmode="require",
        autocommit=True,
    ) as conn:
        rows = conn.execute("SHOW CONFIG").fetchall()
    return next(str(row[1]) for row in rows if row[0] == setting)


def pooler_ready(kube: KubeApiDouble) -> bool:
    deployment = kube.get("deployments", "orders-pooler", "shop") or {}
    return int((deployment.get("status") or {}).get("readyReplicas") or 0) >= 1


def not_degraded(kube: KubeApiDouble) -> bool:
    return phase(kube) == "Active" and condition(kube, "Degraded")["status"] == "False"


async def serving(kube: KubeApiDouble, pod: PoolerPod) -> None:
    """Once the double's pooler pod is Ready, run its files in the stand-in, and wait for the
    operator to find the pooler serving."""
    await eventually(lambda: pooler_ready(kube), what="the pooler's pod Ready")
    config, tls = kube.get("secrets", "orders-pooler", "shop"), kube.get("secrets", "orders-tls", "shop")
    assert config is not None
    assert tls is not None
    await pod.start(config, tls)
    await eventually(lambda: not_degraded(kube), what="the pooler serving")


async def test_the_pooler_is_made_serves_and_its_pool_follows_a_resize(
    kube: KubeApiDouble, pods: Server, pod: PoolerPod
) -> None:
    kube.create(activator_slice())
    async with operator(kube, pods, locate_pooler=lambda db: (HOST, pod.port)) as running:
        create(kube, capacity={"min": 0.5, "max": 4}, pooling={"enabled": True, "mode": "transaction"})
        await eventually(lambda: phase(kube) == "Active", what="Active")
        await eventually(lambda: kube.get("deployments", "orders-pooler", "shop"), what="the pooler")
        uid = sdb(kube)["metadata"]["uid"]
        for resource in POOLER_KINDS:
            obj = kube.get(resource, "orders-pooler", "shop")
            assert obj is not None, resource
            (owner,) = obj["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["uid"], owner["controller"]) == (types.KIND, uid, True), resource
        assert sdb(kube)["status"]["pooledEndpoint"] == "orders-pooler.shop.svc:5432"
        service = kube.get("services", "orders-pooler", "shop")
        assert service is not None
        deployment = kube.get("deployments", "orders-pooler", "shop")
        assert deployment is not None
        template = deployment["spec"]["template"]
        assert service["spec"]["selector"] == template["metadata"]["labels"]
        assert template["spec"]["containers"][0]["image"] == pooled.IMAGE
        # The database's own NetworkPolicy lets its pooler in.
        policy = kube.get("networkpolicies", "orders", "shop")
        assert policy is not None
        peers = [p for rule in policy["spec"]["ingress"] for p in rule.get("from", [])]
        assert {"podSelector": {"matchLabels": template["metadata"]["labels"]}} in peers

        # -- the pod's files, in a real PgBouncer: a client logs in with the application's password --
        await serving(kube, pod)
        spec = codec.decode(sdb(kube)).spec
        assert shown(pod, kube, "default_pool_size") == str(sizing.pool_size(spec, 0.5))
        app_password = secret_text(kube, "orders-app", "password")
        conn = await psycopg.AsyncConnection.connect(
            host="orders-pooler.shop.svc",  # the certificate is checked for the pooled endpoint's name
            hostaddr=HOST,
            port=pod.port,
            user="app",
            dbname="app",
            password=app_password,
            sslmode="verify-full",
            sslrootcert=str(pod.root / "tls" / "ca.crt"),
            autocommit=True,
            prepare_threshold=None,  # Debian's 1.18 stands in; the image's 1.25 keeps them
        )
        assert await (await conn.execute("select current_user")).fetchone() == ("app",)

        # -- a resize: the pool follows on the console, the client stays, the pod is not rolled ----
        before = kube.get("deployments", "orders-pooler", "shop")
        assert before is not None
        running.readings["shop/orders"] = reading(cpu=1.7, sessions=3)  # 1.7 / 0.9 -> 2.0 CU
        await eventually(lambda: sdb(kube)["status"]["capacity"]["current"] == 2.0, what="2 CU")
        wanted = str(sizing.pool_size(spec, 2.0))
        await eventually(lambda: shown(pod, kube, "default_pool_size") == wanted, what="the pool of 2 CU")
        assert shown(pod, kube, "max_db_connections") == wanted
        assert f"default_pool_size = {wanted}" in secret_text(kube, "orders-pooler", "pgbouncer.ini")
        assert await (await conn.execute("select 2")).fetchone() == (2,)
        # PgBouncer's statistics reach the operator's /metrics, read on the console as locally.
        registry = running.operator.exposition.registry
        labels = {"namespace": "shop", "database": "orders"}
        await eventually(
            lambda: (registry.get_sample_value("sdb_pooler_queries_total", labels) or 0) >= 2,
            timeout=15,
            what="the pooled queries on /metrics",
        )
        assert (registry.get_sample_value("sdb_pooler_query_seconds_total", labels) or 0) > 0
        after = kube.get("deployments", "orders-pooler", "shop")
        assert after is not None
        assert after["spec"]["template"] == before["spec"]["template"]
        await conn.close()

        # -- the operator's calls on Deployments are exactly the ones its table grants --------------
        verbs = {r.verb for r in kube.requests_matching(resource="deployments")}
        granted = next(r.verbs for r in permissions.OPERATOR if r.resource == "deployments")
        assert verbs <= granted
        assert granted == {"get", "list", "watch", "patch", "delete"}


async def test_a_steady_pooled_database_costs_no_write(
    kube: KubeApiDouble, pods: Server, pod: PoolerPod
) -> None:
    kube.create(activator_slice())
    async with operator(kube, pods, locate_pooler=lambda db: (HOST, pod.port)) as running:
        create(kube, pooling={"enabled": True})
        await serving(kube, pod)
        requests = await steady_requests(kube, running)
        writes = [r for r in requests if r.is_write and r.resource != "events"]
        assert writes == [], [(r.verb, r.resource, r.name) for r in writes]
        reads = [r for r in requests if r.verb == "get" and r.name and r.name.endswith("-pooler")]
        assert reads == [], [(r.resource, r.name) for r in reads]  # memory, not the API, knows them


def _patch_spec(kube: KubeApiDouble, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube.api_client()).patch_namespaced_custom_object(
        types.GROUP, types.VERSION, "shop", types.PLURAL, "orders", {"spec": spec}
    )


async def test_pooling_turned_off_removes_the_pooler_and_nothing_else(
    kube: KubeApiDouble, pods: Server
) -> None:
    kube.create(activator_slice())
    async with operator(kube, pods):
        create(kube, pooling={"enabled": True})
        await eventually(
            lambda: all(kube.get(r, "orders-pooler", "shop") for r in POOLER_KINDS), what="pooler"
        )
        await eventually(lambda: phase(kube) == "Active", what="Active")
        _patch_spec(kube, {"pooling": {"enabled": False}})
        await eventually(
            lambda: not any(kube.get(r, "orders-pooler", "shop") for r in POOLER_KINDS), what="pooler gone"
        )
        await eventually(lambda: "pooledEndpoint" not in sdb(kube)["status"], what="no pooled endpoint")
        for resource, name in (
            ("persistentvolumeclaims", "data-orders-0"),
            ("secrets", "orders-credentials"),
            ("secrets", "orders-app"),
            ("statefulsets", "orders"),
            ("services", "orders"),
        ):
            assert kube.get(resource, name, "shop") is not None, (resource, name)
        policy = kube.get("networkpolicies", "orders", "shop")
        assert policy is not None
        await eventually(
            lambda: (
                not any(
                    "podSelector" in p
                    for rule in kube.get("networkpolicies", "orders", "shop")["spec"]["ingress"]  # type: ignore[index]
                    for p in rule.get("from", [])
                )
            ),
            what="the database's NetworkPolicy without its pooler",
        )
        assert phase(kube) == "Active"
        assert condition(kube, "Degraded")["status"] == "False"


async def test_a_deleted_database_takes_its_pooler_with_it(kube: KubeApiDouble, pods: Server) -> None:
    kube.create(activator_slice())
    async with operator(kube, pods):
        create(kube, pooling={"enabled": True})
        await eventually(
            lambda: all(kube.get(r, "orders-pooler", "shop") for r in POOLER_KINDS), what="pooler"
        )
        await eventually(
            lambda: kube.list("pods", "shop", label_selector="app.kubernetes.io/name=pgbouncer"), what="pod"
        )
        client.CustomObjectsApi(kube.api_client()).delete_namespaced_custom_object(
            types.GROUP, types.VERSION, "shop", types.PLURAL, "orders"
        )
        await eventually(lambda: kube.get("serverlessdatabases", "orders", "shop") is None, what="deleted")
        await eventually(
            lambda: not any(kube.get(r, "orders-pooler", "shop") for r in POOLER_KINDS), what="pooler gone"
        )
        await eventually(
            lambda: not kube.list("pods", "shop", label_selector="app.kubernetes.io/name=pgbouncer"),
            what="the pooler's pod gone",
        )
        assert kube.get("persistentvolumeclaims", "data-orders-0", "shop") is not None  # retained by default


async def test_the_activator_lets_a_database_be_woken_by_its_own_pooler_only(kube: KubeApiDouble) -> None:
    """A database whose clients come from other namespaces still wakes for its pooler, which checks
    their namespaces itself; another database's pooler, or any other pod there, is refused."""
    create(kube, "shared", access={"allowedNamespaces": ["friends"]}, pooling={"enabled": True})
    create(kube, "private", pooling={"enabled": True})
    shared = codec.decode(sdb(kube, "shared"))
    private = codec.decode(sdb(kube, "private"))
    own = await client_pod(kube, "shop", "shared-pooler-1", labels=builders.pooler_labels(shared))
    others = await client_pod(kube, "shop", "private-pooler-1", labels=builders.pooler_labels(private))
    plain = await client_pod(kube, "shop")
    async with activator_backend(kube) as backend:
        admitted = {
            who: await backend.admits("shop/shared", (address, 40000))
            for who, address in (
                ("its pooler", own),
                ("another's pooler", others),
                ("a pod of its namespace", plain),
            )
        }
    assert admitted == {"its pooler": True, "another's pooler": False, "a pod of its namespace": False}


async def test_a_service_of_the_pooler_s_name_that_is_not_the_database_s_is_left_alone(
    kube: KubeApiDouble, pods: Server
) -> None:
    kube.create(activator_slice())
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "orders-pooler", "namespace": "shop"},
        "spec": {"ports": [{"port": 5432}]},
    }
    kube.create(foreign)
    before = kube.get("services", "orders-pooler", "shop")
    async with operator(kube, pods):
        create(kube, pooling={"enabled": True})
        await eventually(lambda: phase(kube) == "Active", what="Active")  # the database itself is served
        degraded = await eventually(
            lambda: (c := condition(kube, "Degraded"))["status"] == "True" and c, what="Degraded"
        )
        assert degraded["reason"] == "PoolerFailed"
        assert "Service shop/orders-pooler exists and is not this database's" in degraded["message"]
    assert kube.get("services", "orders-pooler", "shop") == before  # not taken over
