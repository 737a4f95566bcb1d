"""Declared roles in a cluster, against the API double: each password comes from the user's own
kubernetes.io/basic-auth Secret and reaches Postgres as a SCRAM verifier of it."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from kubeapi import KubeApiDouble
from support.cluster import activator_slice, create, eventually, operator, phase, sdb
from support.postgres import Server

from controller.policy.inputs import Tuning
from controller.postgres import declared

pytestmark = pytest.mark.kubernetes

RESYNC = Tuning(tick=timedelta(milliseconds=200), catalog_resync=timedelta(seconds=1))
PASSWORD = "k8s-secret-horse-42"
ROLES = ("k8s_dana", "k8s_erin", "k8s_fred")


def secret(name: str, kind: str, **values: str) -> dict[str, Any]:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": kind,
        "metadata": {"name": name, "namespace": "shop"},
        "data": data,
    }


@pytest.fixture
def clean(pods: Server) -> Iterator[None]:
    """The server stands in for every test's pods: the roles made here go when the test ends."""
    yield
    with pods.connect() as conn:
        for name in ROLES:
            conn.execute(f"drop role if exists {name}")


def stored(pods: Server, role: str) -> str | None:
    with pods.connect() as conn:
        row = conn.execute("select rolpassword from pg_authid where rolname = %s", [role]).fetchone()
    return None if row is None else row[0]


def reported(kube: KubeApiDouble) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in (sdb(kube).get("status") or {}).get("roles") or []}


async def test_a_password_comes_from_a_basic_auth_secret(
    kube: KubeApiDouble, pods: Server, clean: None
) -> None:
    kube.create(activator_slice())
    kube.create(secret("dana", "kubernetes.io/basic-auth", username="k8s_dana", password=PASSWORD))
    kube.create(secret("erin", "Opaque", username="k8s_erin", password=PASSWORD))
    async with operator(kube, pods, tuning=RESYNC):
        create(
            kube,
            autoPause={"enabled": False},
            roles=[
                {"name": "k8s_dana", "login": True, "passwordSecret": {"name": "dana"}},
                {"name": "k8s_erin", "login": True, "passwordSecret": {"name": "erin"}},
                {"name": "k8s_fred", "login": True, "passwordSecret": {"name": "nowhere"}},
            ],
        )
        await eventually(lambda: phase(kube) == "Active", what="Active")
        await eventually(lambda: len(reported(kube)) == 3, what="the roles to be reported")
        assert reported(kube)["k8s_dana"] == {"name": "k8s_dana", "state": "Applied"}
        assert reported(kube)["k8s_erin"] == {
            "name": "k8s_erin",
            "state": "Failed",
            "error": "the password Secret erin is not of type kubernetes.io/basic-auth",
        }
        assert reported(kube)["k8s_fred"]["error"] == "the password Secret nowhere was not found"
        assert declared.password_matches(stored(pods, "k8s_dana"), PASSWORD)
        # the Opaque Secret's password was never used: erin has none, and fred too
        assert stored(pods, "k8s_erin") is None
        assert stored(pods, "k8s_fred") is None
        # a new password in the Secret is the role's on a later pass
        kube.apply(secret("dana", "kubernetes.io/basic-auth", username="k8s_dana", password=PASSWORD + "!"))
        await eventually(
            lambda: declared.password_matches(stored(pods, "k8s_dana"), PASSWORD + "!"),
            what="the new password",
        )
    assert PASSWORD not in str(sdb(kube))
