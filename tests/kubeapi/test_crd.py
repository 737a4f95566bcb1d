# The generated client types every model field as Optional, returns `object` from CustomObjectsApi and
# declares model types for bodies it also accepts as plain dicts (as the API does). These tests read
# fields the double has just filled in and send dict bodies on purpose, so those checks are off here.
# mypy: disable-error-code="union-attr, index, arg-type, type-var, operator"
"""CustomResourceDefinitions in the Kubernetes API double: registration, discovery, status, schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from kubeapi import KubeApiDouble
from kubeapi.crds import custom_resource_definition, serverless_database_crd

pytestmark = pytest.mark.kubernetes

GROUP, VERSION, PLURAL = "dbscale.io", "v1alpha1", "serverlessdatabases"
CHART_CRD = (
    Path(__file__).resolve().parents[2]
    / "charts/serverless-db-operator/crds/serverlessdatabases.dbscale.io.yaml"
)


@pytest.fixture
def kube() -> Iterator[KubeApiDouble]:
    with KubeApiDouble(controllers=False, kubelet=False) as double:
        yield double
        assert double.internal_errors == []


@pytest.fixture
def custom(kube: KubeApiDouble) -> client.CustomObjectsApi:
    ext = client.ApiextensionsV1Api(kube.api_client())
    ext.create_custom_resource_definition(serverless_database_crd())
    return client.CustomObjectsApi(kube.api_client())


def _sdb(name: str, spec: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServerlessDatabase",
        "metadata": {"name": name},
        "spec": spec if spec is not None else {"minCapacity": 1},
        **extra,
    }


def test_crd_registers_resource_and_discovery(kube: KubeApiDouble, custom: client.CustomObjectsApi) -> None:
    api = kube.api_client()
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    established = {c.type: c.status for c in crd.status.conditions}
    assert established == {"NamesAccepted": "True", "Established": "True"}
    resources = custom.get_api_resources(GROUP, VERSION)
    by_name = {r.name: r for r in resources.resources}
    assert by_name[PLURAL].namespaced is True
    assert by_name[PLURAL].kind == "ServerlessDatabase"
    assert by_name[PLURAL].short_names == ["sdb"]
    assert f"{PLURAL}/status" in by_name
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    assert groups[GROUP].preferred_version.group_version == f"{GROUP}/{VERSION}"


def test_dynamic_client_finds_the_resource(kube: KubeApiDouble, custom: client.CustomObjectsApi) -> None:
    dyn = dynamic.DynamicClient(kube.api_client())
    resource = dyn.resources.get(api_version=f"{GROUP}/{VERSION}", kind="ServerlessDatabase")
    resource.create(body=_sdb("a"), namespace="default")
    assert [i.metadata.name for i in resource.get(namespace="default").items] == ["a"]


def test_custom_object_crud_and_status(custom: client.CustomObjectsApi) -> None:
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, _sdb("a", status={"phase": "Set"})
    )
    assert "status" not in created  # status cannot be set on create with a status subresource
    assert created["metadata"]["generation"] == 1

    spec_patch = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "a", {"spec": {"minCapacity": 2}, "status": {"phase": "Ignored"}}
    )
    assert spec_patch["metadata"]["generation"] == 2
    assert "status" not in spec_patch

    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "a", {"status": {"phase": "Running"}, "spec": {"minCapacity": 9}}
    )
    assert status["status"] == {"phase": "Running"}
    assert status["spec"]["minCapacity"] == 2
    assert status["metadata"]["generation"] == 2  # status writes do not bump generation

    current = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")
    current["status"]["phase"] = "Paused"
    replaced = custom.replace_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "a", current)
    assert replaced["status"]["phase"] == "Paused"
    stale = {**current, "status": {"phase": "Stale"}}  # type: ignore[dict-item]
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "a", stale)
    assert err.value.status == 409

    listed = custom.list_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, label_selector="!missing"
    )
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
    deleted = custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")
    assert deleted["metadata"]["name"] == "a"  # custom resources answer a delete with the object


def test_unconditional_update_is_refused_for_custom_resources(custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sdb("a"))
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a", _sdb("a"))
    assert err.value.status == 422
    assert "resourceVersion" in json.loads(err.value.body)["message"]


def test_schema_prunes_defaults_and_validates(custom: client.CustomObjectsApi) -> None:
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, _sdb("a", {"minCapacity": 1, "unknownField": True})
    )
    assert created["spec"] == {"minCapacity": 1, "maxCapacity": 4}  # pruned and defaulted
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, _sdb("b", {"minCapacity": -1})
        )
    assert err.value.status == 422
    body = json.loads(err.value.body)
    assert body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "spec.minCapacity"
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, _sdb("c", {"paused": "yes"})
        )
    assert err.value.status == 422


def test_apply_on_custom_resources_merges_conditions_by_type(custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sdb("a"))
    ready = {"type": "Ready", "status": "True"}
    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "a",
        _sdb("a", status={"conditions": [ready]}),
        field_manager="operator",
        _content_type="application/apply-patch+yaml",
    )
    scaled = {"type": "Scaled", "status": "False"}
    result = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "a",
        _sdb("a", status={"conditions": [scaled]}),
        field_manager="autoscaler",
        _content_type="application/apply-patch+yaml",
    )
    assert [c["type"] for c in result["status"]["conditions"]] == ["Ready", "Scaled"]


def test_crd_without_status_subresource(kube: KubeApiDouble) -> None:
    crd = custom_resource_definition(
        "example.com", "Widget", "widgets", status_subresource=False, namespaced=False
    )
    kube.install_crd(crd)
    custom = client.CustomObjectsApi(kube.api_client())
    body = {
        "apiVersion": "example.com/v1alpha1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {},
        "status": {"a": 1},
    }
    created = custom.create_cluster_custom_object("example.com", "v1alpha1", "widgets", body)
    assert created["status"] == {"a": 1}  # without the subresource, status is ordinary data
    changed = custom.patch_cluster_custom_object(
        "example.com", "v1alpha1", "widgets", "w", {"status": {"a": 2}}
    )
    assert changed["metadata"]["generation"] == 2
    names = {r.name for r in custom.get_api_resources("example.com", "v1alpha1").resources}
    assert names == {"widgets"}


def test_scale_subresource_of_custom_resources(kube: KubeApiDouble) -> None:
    kube.install_crd(custom_resource_definition("example.com", "Pool", "pools", scale_subresource=True))
    custom = client.CustomObjectsApi(kube.api_client())
    body = {
        "apiVersion": "example.com/v1alpha1",
        "kind": "Pool",
        "metadata": {"name": "p"},
        "spec": {"replicas": 1},
    }
    custom.create_namespaced_custom_object("example.com", "v1alpha1", "default", "pools", body)
    custom.patch_namespaced_custom_object_scale(
        "example.com", "v1alpha1", "default", "pools", "p", {"spec": {"replicas": 4}}
    )
    assert (
        custom.get_namespaced_custom_object("example.com", "v1alpha1", "default", "pools", "p")["spec"][
            "replicas"
        ]
        == 4
    )


def test_deleting_the_crd_deletes_its_objects(kube: KubeApiDouble, custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sdb("a"))
    client.ApiextensionsV1Api(kube.api_client()).delete_custom_resource_definition(f"{PLURAL}.{GROUP}")
    with pytest.raises(ApiException) as err:
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert err.value.status == 404
    assert kube.list("customresourcedefinitions") == []


@pytest.mark.skipif(not CHART_CRD.exists(), reason="the chart's CRD is not in this tree")
def test_the_projects_crd_installs(kube: KubeApiDouble) -> None:
    kube.install_crd(yaml.safe_load(CHART_CRD.read_text()))
    custom = client.CustomObjectsApi(kube.api_client())
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _sdb("db", {}))
    assert created["metadata"]["generation"] == 1
    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "db", {"status": {}}
    )
    assert status["metadata"]["name"] == "db"
    names = {r.name for r in custom.get_api_resources(GROUP, VERSION).resources}
    assert {PLURAL, f"{PLURAL}/status"} <= names
