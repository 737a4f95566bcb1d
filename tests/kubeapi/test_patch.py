# The generated client types every model field as Optional, returns `object` from CustomObjectsApi and
# declares model types for bodies it also accepts as plain dicts (as the API does). These tests read
# fields the double has just filled in and send dict bodies on purpose, so those checks are off here.
# mypy: disable-error-code="union-attr, index, arg-type, type-var, operator"
"""Patch formats and server-side apply in the Kubernetes API double, through the real client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubeapi import KubeApiDouble, quantity
from kubeapi.crds import serverless_database_crd
from kubeapi.patch import json_patch, merge_patch

pytestmark = pytest.mark.kubernetes

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


@pytest.fixture
def kube() -> Iterator[KubeApiDouble]:
    with KubeApiDouble(controllers=False, kubelet=False) as double:
        yield double
        assert double.internal_errors == []


@pytest.fixture
def core(kube: KubeApiDouble) -> client.CoreV1Api:
    return client.CoreV1Api(kube.api_client())


@pytest.fixture
def apps(kube: KubeApiDouble) -> client.AppsV1Api:
    return client.AppsV1Api(kube.api_client())


def _pod_body(name: str = "p") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "db"}},
        "spec": {
            "containers": [
                {
                    "name": "db",
                    "image": "postgres:17",
                    "ports": [{"containerPort": 5432, "name": "pg"}],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                },
                {"name": "exporter", "image": "exporter:1"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


def _sts_body(name: str = "db", replicas: int = 1, image: str = "postgres:17") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "db", "image": image}]},
            },
        },
    }


def test_json_merge_patch_replaces_lists(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", _pod_body())
    patched = core.patch_namespaced_pod(
        "p", "default", {"metadata": {"labels": {"app": None, "x": "1"}}}, _content_type=MERGE
    )
    assert patched.metadata.labels == {"x": "1"}  # null deletes a key
    with pytest.raises(ApiException) as err:
        # A merge patch replaces the whole containers list: the exporter would be dropped, which a
        # pod cannot do, so the server refuses (proof that the list was not merged).
        core.patch_namespaced_pod(
            "p",
            "default",
            {"spec": {"containers": [{"name": "db", "image": "postgres:18"}]}},
            _content_type=MERGE,
        )
    assert err.value.status == 422


def test_json_patch(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", _pod_body())
    patched = core.patch_namespaced_pod(
        "p",
        "default",
        [
            {"op": "test", "path": "/metadata/labels/app", "value": "db"},
            {"op": "add", "path": "/metadata/labels/tier", "value": "gold"},
            {"op": "replace", "path": "/spec/containers/1/image", "value": "exporter:2"},
            {"op": "add", "path": "/metadata/annotations", "value": {"a/b": "c"}},
            {"op": "copy", "from": "/metadata/labels/tier", "path": "/metadata/annotations/tier"},
        ],
    )
    assert patched.metadata.labels == {"app": "db", "tier": "gold"}
    assert patched.spec.containers[1].image == "exporter:2"
    assert patched.metadata.annotations == {"a/b": "c", "tier": "gold"}
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod(
            "p", "default", [{"op": "test", "path": "/metadata/labels/app", "value": "web"}]
        )
    assert err.value.status == 422


def test_strategic_merge_by_merge_keys(apps: client.AppsV1Api, core: client.CoreV1Api) -> None:
    body = _sts_body()
    body["spec"]["template"]["spec"] = _pod_body()["spec"]
    apps.create_namespaced_stateful_set("default", body)
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "db",
                            "image": "postgres:18",
                            "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}],
                            "ports": [{"containerPort": 5432, "name": "postgres"}],
                        }
                    ],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                }
            }
        }
    }
    patched = apps.patch_namespaced_stateful_set("db", "default", patch)
    db, exporter = patched.spec.template.spec.containers
    assert (db.name, db.image, exporter.name, exporter.image) == (
        "db",
        "postgres:18",
        "exporter",
        "exporter:1",
    )
    assert [(e.name, e.value) for e in db.env] == [("A", "1"), ("B", "two"), ("C", "3")]
    assert [(p.container_port, p.name) for p in db.ports] == [(5432, "postgres")]
    assert db.volume_mounts[0].mount_path == "/data"  # untouched fields stay
    assert [v.name for v in patched.spec.template.spec.volumes] == ["data", "scratch"]

    # Pod conditions merge by type on the status subresource.
    core.create_namespaced_pod("default", _pod_body())
    core.patch_namespaced_pod_status(
        "p",
        "default",
        {"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "False"}]}},
    )
    status = core.patch_namespaced_pod_status(
        "p", "default", {"status": {"conditions": [{"type": "B", "status": "True"}]}}
    )
    assert [(c.type, c.status) for c in status.status.conditions] == [("A", "True"), ("B", "True")]
    # A pod's image may change; the container list is merged, not replaced.
    pod = core.patch_namespaced_pod(
        "p", "default", {"spec": {"containers": [{"name": "db", "image": "postgres:18"}]}}
    )
    assert [(c.name, c.image) for c in pod.spec.containers] == [
        ("db", "postgres:18"),
        ("exporter", "exporter:1"),
    ]


def test_strategic_merge_directives(apps: client.AppsV1Api) -> None:
    body = _sts_body()
    body["metadata"]["finalizers"] = ["a/x", "b/y"]
    body["spec"]["template"]["spec"] = _pod_body()["spec"]
    apps.create_namespaced_stateful_set("default", body)
    patched = apps.patch_namespaced_stateful_set(
        "db",
        "default",
        {
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["a/x"], "finalizers": ["c/z"]},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "db", "env": [{"name": "A", "$patch": "delete"}]},
                            {"name": "exporter", "$patch": "delete"},
                        ]
                    }
                }
            },
        },
    )
    assert patched.metadata.finalizers == ["b/y", "c/z"]
    assert [c.name for c in patched.spec.template.spec.containers] == ["db"]
    assert [e.name for e in patched.spec.template.spec.containers[0].env] == ["B"]
    replaced = apps.patch_namespaced_stateful_set(
        "db",
        "default",
        {
            "spec": {
                "template": {
                    "spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x:1"}]}
                }
            }
        },
    )
    assert [c.name for c in replaced.spec.template.spec.containers] == ["only"]


def test_custom_resources_refuse_strategic_merge(kube: KubeApiDouble) -> None:
    kube.install_crd(CRD)
    custom = client.CustomObjectsApi(kube.api_client())
    custom.create_namespaced_custom_object(
        "dbscale.io", "v1alpha1", "default", "serverlessdatabases", _sdb("a")
    )
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(
            "dbscale.io",
            "v1alpha1",
            "default",
            "serverlessdatabases",
            "a",
            {"spec": {"minCapacity": 1}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert err.value.status == 415


def test_apply_creates_then_removes_what_it_no_longer_applies(core: client.CoreV1Api) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "a", "labels": {"x": "1", "y": "2"}},
        "data": {"keep": "1", "drop": "2"},
    }
    created = core.patch_namespaced_config_map(
        "a", "default", cm, field_manager="operator", _content_type=APPLY
    )
    assert created.data == {"keep": "1", "drop": "2"}
    managers = {(m.manager, m.operation) for m in created.metadata.managed_fields}
    assert managers == {("operator", "Apply")}
    fields = created.metadata.managed_fields[0].fields_v1
    assert "f:drop" in fields["f:data"]
    assert "f:y" in fields["f:metadata"]["f:labels"]

    cm["data"] = {"keep": "1"}
    cm["metadata"]["labels"] = {"x": "1"}
    applied = core.patch_namespaced_config_map(
        "a", "default", cm, field_manager="operator", _content_type=APPLY
    )
    assert applied.data == {"keep": "1"}
    assert applied.metadata.labels == {"x": "1"}
    # Re-applying the same thing is a no-op.
    again = core.patch_namespaced_config_map(
        "a", "default", cm, field_manager="operator", _content_type=APPLY
    )
    assert again.metadata.resource_version == applied.metadata.resource_version


def test_apply_keeps_fields_another_manager_owns(core: client.CoreV1Api) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "a"},
        "data": {"shared": "1", "mine": "2"},
    }
    core.patch_namespaced_config_map("a", "default", cm, field_manager="one", _content_type=APPLY)
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"shared": "1"}}
    core.patch_namespaced_config_map("a", "default", other, field_manager="two", _content_type=APPLY)
    cm["data"] = {}
    result = core.patch_namespaced_config_map("a", "default", cm, field_manager="one", _content_type=APPLY)
    assert result.data == {"shared": "1"}  # still owned by "two"


def test_apply_conflicts_without_force(apps: client.AppsV1Api) -> None:
    apps.patch_namespaced_stateful_set(
        "db", "default", _sts_body(replicas=1), field_manager="operator", _content_type=APPLY
    )
    # An autoscaler changes replicas through an ordinary update and so becomes its owner.
    apps.patch_namespaced_stateful_set("db", "default", {"spec": {"replicas": 3}}, field_manager="autoscaler")
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_stateful_set(
            "db", "default", _sts_body(replicas=1), field_manager="operator", _content_type=APPLY
        )
    assert err.value.status == 409
    status = json.loads(err.value.body)
    assert status["reason"] == "Conflict"
    assert 'conflict with "autoscaler"' in status["message"]
    assert ".spec.replicas" in status["message"]
    assert status["details"]["causes"][0]["type"] == "FieldManagerConflict"
    # The same value is no conflict (shared ownership); force takes the field over.
    same = apps.patch_namespaced_stateful_set(
        "db", "default", _sts_body(replicas=3), field_manager="operator", _content_type=APPLY
    )
    assert same.spec.replicas == 3
    forced = apps.patch_namespaced_stateful_set(
        "db", "default", _sts_body(replicas=1), field_manager="operator", force=True, _content_type=APPLY
    )
    assert forced.spec.replicas == 1
    owners = {m.manager: m.fields_v1 for m in forced.metadata.managed_fields}
    assert "f:replicas" not in json.dumps(owners.get("autoscaler", {}))


def test_apply_merges_containers_by_name_and_removes_dropped_ones(apps: client.AppsV1Api) -> None:
    body = _sts_body()
    body["spec"]["template"]["spec"]["containers"].append({"name": "exporter", "image": "exporter:1"})
    apps.patch_namespaced_stateful_set("db", "default", body, field_manager="operator", _content_type=APPLY)
    # Another manager adds an env var to one container.
    apps.patch_namespaced_stateful_set(
        "db",
        "default",
        {
            "spec": {
                "template": {"spec": {"containers": [{"name": "db", "env": [{"name": "X", "value": "1"}]}]}}
            }
        },
        field_manager="someone",
    )
    body = _sts_body(image="postgres:18")
    result = apps.patch_namespaced_stateful_set(
        "db", "default", body, field_manager="operator", _content_type=APPLY
    )
    containers = result.spec.template.spec.containers
    assert [c.name for c in containers] == ["db"]
    assert containers[0].image == "postgres:18"
    assert [(e.name, e.value) for e in containers[0].env] == [("X", "1")]


def test_apply_to_status_subresource(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", _pod_body())
    status = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "status": {"conditions": [{"type": "Example", "status": "True"}]},
        "spec": {"nodeName": "x"},
    }
    result = core.patch_namespaced_pod_status(
        "p", "default", status, field_manager="probe", _content_type=APPLY
    )
    assert [c.type for c in result.status.conditions] == ["Example"]
    assert result.spec.node_name is None
    entry = next(m for m in result.metadata.managed_fields if m.manager == "probe")
    assert entry.subresource == "status"


def test_apply_requires_field_manager(core: client.CoreV1Api) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("a", "default", body, _content_type=APPLY)  # no field_manager
    assert err.value.status == 400
    assert "fieldManager" in json.loads(err.value.body)["message"]


def test_merge_patch_on_custom_resource_and_conflict_on_stale_version(kube: KubeApiDouble) -> None:
    kube.install_crd(CRD)
    custom = client.CustomObjectsApi(kube.api_client())
    created = custom.create_namespaced_custom_object(
        "dbscale.io", "v1alpha1", "default", "serverlessdatabases", _sdb("a")
    )
    rv = created["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object(
        "dbscale.io", "v1alpha1", "default", "serverlessdatabases", "a", {"spec": {"minCapacity": 2}}
    )
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(
            "dbscale.io",
            "v1alpha1",
            "default",
            "serverlessdatabases",
            "a",
            {"metadata": {"resourceVersion": rv}, "spec": {"minCapacity": 3}},
        )
    assert err.value.status == 409  # a resourceVersion in a patch is a precondition


# -- pure functions -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)
objects = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


@given(objects, objects)
def test_merge_patch_is_idempotent(target: dict[str, Any], patch: dict[str, Any]) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


@given(objects)
def test_json_patch_replace_root_and_test(doc: dict[str, Any]) -> None:
    assert json_patch({"x": 1}, [{"op": "replace", "path": "", "value": doc}]) == doc
    assert json_patch(doc, [{"op": "test", "path": "", "value": doc}]) == doc


@given(
    st.fractions(min_value=0, max_value=10**6, max_denominator=1000),
    st.sampled_from(["", "m", "k", "M", "G", "Ki", "Mi", "Gi"]),
)
def test_canonical_quantities_keep_their_value(number: Fraction, suffix: str) -> None:
    text = f"{float(number):.3f}{suffix}"
    canon = quantity.canonical(text)
    assert quantity.value(canon) == quantity.value(text)
    assert quantity.canonical(canon) == canon


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("0.5", "500m"),
        ("1000m", "1"),
        ("2048Mi", "2Gi"),
        ("1.5Gi", "1536Mi"),
        ("1000M", "1G"),
        ("100", "100"),
        (2, "2"),
    ],
)
def test_canonical_quantity_examples(given_: Any, expected: str) -> None:
    assert quantity.canonical(given_) == expected


CRD = serverless_database_crd()


def _sdb(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "dbscale.io/v1alpha1",
        "kind": "ServerlessDatabase",
        "metadata": {"name": name},
        "spec": {"minCapacity": 1},
    }
