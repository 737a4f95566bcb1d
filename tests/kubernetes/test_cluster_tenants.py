"""The tenant boundary in a cluster, against the API double: what a spec author and a namespace's other
objects cannot make the operator or the activator do."""

from __future__ import annotations

from typing import Any

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
    sdb,
)
from support.postgres import Server

from controller.api import types
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes import permissions

pytestmark = pytest.mark.kubernetes


def foreign(kind: str, name: str, **body: Any) -> dict[str, Any]:
    """An object a tenant made by hand, under a name the operator would give its own."""
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "shop"}, **body}


async def test_a_spec_author_cannot_claim_another_databases_activator_port(
    kube: KubeApiDouble, pods: Server
) -> None:
    kube.create(activator_slice())
    async with operator(kube, pods):
        create(kube, "victim")
        await eventually(lambda: sdb(kube, "victim").get("status", {}).get("activatorPort"), what="a port")
        port = sdb(kube, "victim")["status"]["activatorPort"]
        # The attacker names the victim's port wherever a spec author can write: it is not read there.
        create(kube, "attacker")
        kube.apply(
            {
                "apiVersion": types.API_VERSION,
                "kind": types.KIND,
                "metadata": {
                    "name": "attacker",
                    "namespace": "shop",
                    "annotations": {"dbscale.io/activator-port": str(port)},
                },
            },
            manager="attacker",
        )
        await eventually(lambda: sdb(kube, "attacker").get("status", {}).get("activatorPort"), what="a port")
        assert sdb(kube, "attacker")["status"]["activatorPort"] != port
        assert sdb(kube, "victim")["status"]["activatorPort"] == port


def test_the_activator_may_ask_for_a_wake_and_change_nothing() -> None:
    allowed = {(r.group, r.resource): r.verbs for r in permissions.ACTIVATOR}
    assert allowed[("dbscale.io", "serverlessdatabases")] == frozenset({"get", "list", "watch"})
    assert allowed[("dbscale.io", "wakerequests")] == frozenset({"create"})
    assert all(verbs <= {"get", "list", "watch", "create"} for verbs in allowed.values())
    kube = kc.Kube(client.ApiClient(), permissions.ACTIVATOR)  # refused before any request is made
    with pytest.raises(PermissionError, match=r"patch dbscale\.io/serverlessdatabases"):
        kube.patch(kc.DATABASES, "shop", "victim", {"spec": {"state": "Paused"}})


@pytest.mark.parametrize(
    ("made_by_hand", "field"),
    [
        pytest.param(foreign("Service", "orders", spec={"ports": [{"port": 5432}]}), "Service", id="service"),
        pytest.param(
            foreign("Secret", "orders-credentials", stringData={"username": "postgres", "password": "known"}),
            "Secret",
            id="secret",
        ),
        pytest.param(
            foreign(
                "PersistentVolumeClaim",
                "data-orders-0",
                spec={"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            ),
            "PersistentVolumeClaim",
            id="claim",
        ),
    ],
)
async def test_an_object_of_the_same_name_is_never_taken_over(
    kube: KubeApiDouble, pods: Server, made_by_hand: dict[str, Any], field: str
) -> None:
    kube.create(activator_slice())
    kube.create(made_by_hand)
    resource, name = made_by_hand["kind"].lower() + "s", made_by_hand["metadata"]["name"]
    if resource == "persistentvolumeclaims":  # the cluster binds it first: that change is not ours
        kube.wait_for(
            lambda: (kube.get(resource, name, "shop") or {}).get("status", {}).get("phase") == "Bound"
        )
    before = kube.get(resource, name, "shop")
    async with operator(kube, pods):
        create(kube)
        await eventually(
            lambda: (
                sdb(kube).get("status", {}).get("conditions")
                and condition(kube, "Ready")["reason"] == "ResourceConflict"
            ),
            what="a ResourceConflict",
        )
        assert field in condition(kube, "Ready")["message"]
        assert phase(kube) != "Active"
    after = kube.get(resource, name, "shop")
    assert after == before  # untouched: no apply, no adoption


async def test_the_activator_admits_only_the_namespaces_the_database_allows(kube: KubeApiDouble) -> None:
    create(kube, "private")
    create(kube, "shared", access={"allowedNamespaces": ["friends"]})
    client_pods = {n: await client_pod(kube, n) for n in ("shop", "other", "friends")}
    async with activator_backend(kube) as backend:
        admitted = {
            (key, namespace): await backend.admits(key, (address, 40000))
            for key in ("shop/private", "shop/shared")
            for namespace, address in client_pods.items()
        }
        assert await backend.admits("shop/private", ("10.255.255.254", 40000)) is False  # no pod at all
    assert admitted == {
        ("shop/private", "shop"): True,  # its own namespace, by default
        ("shop/private", "other"): False,
        ("shop/private", "friends"): False,
        ("shop/shared", "shop"): False,  # named namespaces replace the default
        ("shop/shared", "other"): False,
        ("shop/shared", "friends"): True,
    }
