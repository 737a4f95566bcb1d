# The generated client types every model field as Optional, returns `object` from CustomObjectsApi and
# declares model types for bodies it also accepts as plain dicts (as the API does). These tests read
# fields the double has just filled in and send dict bodies on purpose, so those checks are off here.
# mypy: disable-error-code="union-attr, index, arg-type, type-var, operator"
"""The Kubernetes API double, driven through the real client: CRUD, versions, selectors, deletion."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubeapi import ApiError, KubeApiDouble

pytestmark = pytest.mark.kubernetes


@pytest.fixture
def kube() -> Iterator[KubeApiDouble]:
    # No controllers or kubelet: these tests are about the API server alone.
    with KubeApiDouble(controllers=False, kubelet=False) as double:
        yield double
        assert double.internal_errors == []


@pytest.fixture
def core(kube: KubeApiDouble) -> client.CoreV1Api:
    return client.CoreV1Api(kube.api_client())


def _cm(
    name: str, labels: dict[str, str] | None = None, data: dict[str, str] | None = None
) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels), data=data or {"k": "v"})


def _pod(name: str, image: str = "postgres:17", labels: dict[str, str] | None = None) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(containers=[client.V1Container(name="db", image=image)]),
    )


def test_create_get_list_update_delete(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map("default", _cm("a"))
    assert created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    assert created.metadata.generation == 1
    got = core.read_namespaced_config_map("a", "default")
    assert got.data == {"k": "v"}
    assert got.metadata.resource_version == created.metadata.resource_version

    got.data = {"k": "w"}
    updated = core.replace_namespaced_config_map("a", "default", got)
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    assert updated.metadata.uid == created.metadata.uid

    listing = core.list_namespaced_config_map("default")
    assert [c.metadata.name for c in listing.items] == ["a"]
    assert int(listing.metadata.resource_version) >= int(updated.metadata.resource_version)

    status = core.delete_namespaced_config_map("a", "default")
    assert status["kind"] == "Status"
    assert status["status"] == "Success"
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("a", "default")
    assert err.value.status == 404
    assert json.loads(err.value.body)["message"] == 'configmaps "a" not found'


def test_errors_are_real_status_objects(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", _cm("a"))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("default", _cm("a"))
    assert err.value.status == 409
    body = client.ApiClient().deserialize(err.value.body, "V1Status", "application/json")
    assert body.reason == "AlreadyExists"
    assert body.details.name == "a"

    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("nowhere", _cm("b"))
    assert err.value.status == 404  # the namespace does not exist

    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("default", _cm("Not_A_Name"))
    assert err.value.status == 422
    assert '"reason": "Invalid"' in (err.value.body or "").replace('":"', '": "')


def test_stale_update_is_a_conflict(core: client.CoreV1Api) -> None:
    first = core.create_namespaced_config_map("default", _cm("a"))
    second = core.read_namespaced_config_map("a", "default")
    second.data = {"k": "second"}
    core.replace_namespaced_config_map("a", "default", second)
    first.data = {"k": "first"}
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map("a", "default", first)
    assert err.value.status == 409
    assert "the object has been modified" in (err.value.body or "")
    assert core.read_namespaced_config_map("a", "default").data == {"k": "second"}


def test_generation_follows_spec_and_resource_version_every_write(core: client.CoreV1Api) -> None:
    pod = core.create_namespaced_pod("default", _pod("p"))
    assert pod.metadata.generation == 1
    labelled = core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"x": "y"}}})
    assert labelled.metadata.generation == 1  # metadata only
    assert int(labelled.metadata.resource_version) > int(pod.metadata.resource_version)
    status = core.patch_namespaced_pod_status("p", "default", {"status": {"message": "hello"}})
    assert status.metadata.generation == 1  # status only
    image = core.patch_namespaced_pod(
        "p", "default", {"spec": {"containers": [{"name": "db", "image": "postgres:18"}]}}
    )
    assert image.metadata.generation == 2

    # Objects without spec: any non-metadata change counts.
    cm = core.create_namespaced_config_map("default", _cm("c"))
    cm2 = core.patch_namespaced_config_map("c", "default", {"data": {"k": "changed"}})
    assert (cm.metadata.generation, cm2.metadata.generation) == (1, 2)


def test_no_op_write_keeps_resource_version(kube: KubeApiDouble, core: client.CoreV1Api) -> None:
    cm = core.create_namespaced_config_map("default", _cm("a"))
    same = core.patch_namespaced_config_map("a", "default", {"data": {"k": "v"}})
    assert same.metadata.resource_version == cm.metadata.resource_version
    assert kube.writes("configmaps") == 2  # both requests are logged; only one changed anything


def test_status_is_kept_apart_from_spec(core: client.CoreV1Api) -> None:
    pod = core.create_namespaced_pod("default", _pod("p"))
    assert pod.status.phase == "Pending"  # status is initialised by the server, not the client
    core.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Running"}})
    # A write to the main resource cannot change status...
    current = core.read_namespaced_pod("p", "default")
    current.status.phase = "Failed"
    current.metadata.labels = {"a": "b"}
    after = core.replace_namespaced_pod("p", "default", current)
    assert after.status.phase == "Running"
    assert after.metadata.labels == {"a": "b"}
    # ...and a write to /status cannot change anything else.
    after.status.phase = "Succeeded"
    after.metadata.labels = {"c": "d"}
    after.spec.containers[0].image = "other"
    status = core.replace_namespaced_pod_status("p", "default", after)
    assert status.status.phase == "Succeeded"
    assert status.metadata.labels == {"a": "b"}
    assert status.spec.containers[0].image == "postgres:17"


def test_pod_spec_is_immutable_except_image(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", _pod("p"))
    patch = {"spec": {"containers": [{"name": "db", "resources": {"limits": {"cpu": "1"}}}]}}
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod("p", "default", patch)
    assert err.value.status == 422
    assert "pod updates may not change fields" in (err.value.body or "")


def test_defaults_and_canonical_quantities(core: client.CoreV1Api) -> None:
    pod = _pod("p")
    pod.spec.containers[0].resources = client.V1ResourceRequirements(
        limits={"cpu": "0.5", "memory": "2048Mi"}
    )
    created = core.create_namespaced_pod("default", pod)
    res = created.spec.containers[0].resources
    assert res.limits == {"cpu": "500m", "memory": "2Gi"}
    assert res.requests == res.limits  # requests default to limits
    assert created.status.qos_class == "Guaranteed"
    assert created.spec.restart_policy == "Always"
    assert created.spec.containers[0].image_pull_policy == "IfNotPresent"


def test_secret_string_data_becomes_data(core: client.CoreV1Api) -> None:
    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"password": "hunter2"})
    created = core.create_namespaced_secret("default", secret)
    assert created.string_data is None
    assert base64.b64decode(created.data["password"]) == b"hunter2"
    assert created.type == "Opaque"


def test_generate_name(core: client.CoreV1Api) -> None:
    a = core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="x-"))
    )
    b = core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="x-"))
    )
    assert a.metadata.name.startswith("x-")
    assert len(a.metadata.name) == 7
    assert a.metadata.name != b.metadata.name


def test_label_selectors(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", _cm("a", {"app": "db", "tier": "gold"}))
    core.create_namespaced_config_map("default", _cm("b", {"app": "db", "tier": "silver"}))
    core.create_namespaced_config_map("default", _cm("c", {"app": "web"}))

    def names(selector: str) -> list[str]:
        return [
            str(c.metadata.name)
            for c in core.list_namespaced_config_map("default", label_selector=selector).items
        ]

    assert names("app=db") == ["a", "b"]
    assert names("app==db,tier!=gold") == ["b"]
    assert names("tier!=gold") == ["b", "c"]  # != matches objects without the label
    assert names("tier in (gold, silver)") == ["a", "b"]
    assert names("tier notin (gold)") == ["b", "c"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c"]
    assert names("app in (db),tier") == ["a", "b"]
    with pytest.raises(ApiException) as err:
        names("app in db")
    assert err.value.status == 400


def test_field_selectors_and_namespaces(core: client.CoreV1Api) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="other")))
    core.create_namespaced_config_map("default", _cm("a"))
    core.create_namespaced_config_map("other", _cm("a"))
    core.create_namespaced_config_map("other", _cm("b"))
    everywhere = core.list_config_map_for_all_namespaces(field_selector="metadata.name=a")
    assert sorted(c.metadata.namespace for c in everywhere.items) == ["default", "other"]
    only = core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=other,metadata.name!=a")
    assert [(c.metadata.namespace, c.metadata.name) for c in only.items] == [("other", "b")]
    assert [c.metadata.name for c in core.list_namespaced_config_map("other").items] == ["a", "b"]
    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map("other", field_selector="data.k=v")
    assert err.value.status == 400  # not a supported field label
    ns = core.read_namespace("other")
    assert ns.metadata.labels["kubernetes.io/metadata.name"] == "other"


def test_pagination(core: client.CoreV1Api) -> None:
    for i in range(5):
        core.create_namespaced_config_map("default", _cm(f"cm-{i}"))
    first = core.list_namespaced_config_map("default", limit=2)
    assert [c.metadata.name for c in first.items] == ["cm-0", "cm-1"]
    assert first.metadata.remaining_item_count == 3
    second = core.list_namespaced_config_map("default", limit=2, _continue=first.metadata._continue)
    assert [c.metadata.name for c in second.items] == ["cm-2", "cm-3"]


def test_finalizers_hold_deletion(core: client.CoreV1Api) -> None:
    cm = _cm("a")
    cm.metadata.finalizers = ["dbscale.io/cleanup"]
    created = core.create_namespaced_config_map("default", cm)
    core.delete_namespaced_config_map("a", "default")
    pending = core.read_namespaced_config_map("a", "default")
    assert pending.metadata.deletion_timestamp is not None
    assert pending.metadata.deletion_grace_period_seconds == 0
    assert pending.metadata.generation == created.metadata.generation + 1
    # No new finalizers while terminating.
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map(
            "a", "default", {"metadata": {"finalizers": ["dbscale.io/cleanup", "x/y"]}}
        )
    assert err.value.status == 422
    # Strategic merge on a set-list merges: an empty list removes nothing...
    core.patch_namespaced_config_map("a", "default", {"metadata": {"finalizers": []}})
    assert core.read_namespaced_config_map("a", "default").metadata.finalizers == ["dbscale.io/cleanup"]
    # ...while a JSON patch that removes the last finalizer lets the object go.
    core.patch_namespaced_config_map("a", "default", [{"op": "remove", "path": "/metadata/finalizers/0"}])
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("a", "default")
    assert err.value.status == 404


def _owned(name: str, owner: client.V1ConfigMap, *, block: bool = True) -> client.V1ConfigMap:
    cm = _cm(name)
    cm.metadata.owner_references = [
        client.V1OwnerReference(
            api_version="v1",
            kind="ConfigMap",
            name=owner.metadata.name,
            uid=owner.metadata.uid,
            block_owner_deletion=block,
        )
    ]
    return cm


def test_owner_reference_garbage_collection(core: client.CoreV1Api) -> None:
    owner = core.create_namespaced_config_map("default", _cm("owner"))
    child = core.create_namespaced_config_map("default", _owned("child", owner))
    core.create_namespaced_config_map("default", _owned("grandchild", child))
    other = core.create_namespaced_config_map("default", _cm("other"))
    shared = _owned("shared", owner)
    shared.metadata.owner_references.append(
        client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="other", uid=other.metadata.uid)
    )
    core.create_namespaced_config_map("default", shared)

    core.delete_namespaced_config_map("owner", "default", propagation_policy="Background")
    left = {c.metadata.name: c for c in core.list_namespaced_config_map("default").items}
    assert sorted(left) == ["other", "shared"]  # dependents went, recursively
    assert [r.name for r in left["shared"].metadata.owner_references] == [
        "other"
    ]  # still owned by the living


def test_orphan_and_foreground_propagation(core: client.CoreV1Api) -> None:
    owner = core.create_namespaced_config_map("default", _cm("owner"))
    core.create_namespaced_config_map("default", _owned("child", owner))
    core.delete_namespaced_config_map("owner", "default", propagation_policy="Orphan")
    child = core.read_namespaced_config_map("child", "default")
    assert child.metadata.owner_references is None

    owner = core.create_namespaced_config_map("default", _cm("owner2"))
    blocker = _owned("blocked-child", owner)
    blocker.metadata.finalizers = ["test/hold"]
    core.create_namespaced_config_map("default", blocker)
    core.delete_namespaced_config_map("owner2", "default", propagation_policy="Foreground")
    waiting = core.read_namespaced_config_map("owner2", "default")
    assert waiting.metadata.deletion_timestamp is not None
    assert "foregroundDeletion" in waiting.metadata.finalizers
    assert core.read_namespaced_config_map("blocked-child", "default").metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map(
        "blocked-child", "default", [{"op": "remove", "path": "/metadata/finalizers"}]
    )
    names = [c.metadata.name for c in core.list_namespaced_config_map("default").items]
    assert "owner2" not in names
    assert "blocked-child" not in names


def test_namespace_deletion_removes_its_content(core: client.CoreV1Api) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="gone")))
    core.create_namespaced_config_map("gone", _cm("a"))
    core.delete_namespace("gone")
    with pytest.raises(ApiException) as err:
        core.read_namespace("gone")
    assert err.value.status == 404
    assert core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=gone").items == []


def test_delete_preconditions_and_collection(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", _cm("a", {"x": "1"}))
    core.create_namespaced_config_map("default", _cm("b", {"x": "1"}))
    core.create_namespaced_config_map("default", _cm("c"))
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_config_map(
            "a", "default", body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="wrong"))
        )
    assert err.value.status == 409
    core.delete_collection_namespaced_config_map("default", label_selector="x=1")
    assert [c.metadata.name for c in core.list_namespaced_config_map("default").items] == ["c"]


def test_request_log_counts_writes(kube: KubeApiDouble, core: client.CoreV1Api) -> None:
    kube.clear_requests()
    core.create_namespaced_config_map("default", _cm("a"))
    core.read_namespaced_config_map("a", "default")
    core.patch_namespaced_config_map("a", "default", {"data": {"k": "2"}})
    core.patch_namespaced_pod_status  # noqa: B018 - the attribute exists; nothing is sent
    records = kube.requests_matching(resource="configmaps", name="a")
    assert [r.verb for r in records] == ["get", "patch"]  # create has no name in its path
    assert kube.writes("configmaps") == 2
    patch = records[1]
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.method == "PATCH"
    assert patch.namespace == "default"
    assert patch.subresource == ""
    assert patch.field_manager == "OpenAPI-Generator"


def test_injected_faults(kube: KubeApiDouble, core: client.CoreV1Api) -> None:
    kube.fail_requests(500, verb="create", resource="configmaps", times=1)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("default", _cm("a"))
    assert err.value.status == 500
    core.create_namespaced_config_map("default", _cm("a"))  # only once


def test_dry_run_stores_nothing(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", _cm("a"), dry_run="All")
    assert core.list_namespaced_config_map("default").items == []


def test_leases_for_leader_election(kube: KubeApiDouble) -> None:
    coordination = client.CoordinationV1Api(kube.api_client())
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="operator-leader"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15),
    )
    created = coordination.create_namespaced_lease("default", lease)
    # Two candidates read the same version; the first renew wins, the second conflicts.
    mine = coordination.read_namespaced_lease("operator-leader", "default")
    theirs = coordination.read_namespaced_lease("operator-leader", "default")
    mine.spec.renew_time = "2030-01-01T00:00:00.000000Z"
    coordination.replace_namespaced_lease("operator-leader", "default", mine)
    theirs.spec.holder_identity = "b"
    with pytest.raises(ApiException) as err:
        coordination.replace_namespaced_lease("operator-leader", "default", theirs)
    assert err.value.status == 409
    final = coordination.read_namespaced_lease("operator-leader", "default")
    assert final.spec.holder_identity == "a"
    assert final.metadata.resource_version != created.metadata.resource_version


def test_discovery_and_version(kube: KubeApiDouble) -> None:
    api = kube.api_client()
    assert client.VersionApi(api).get_code().git_version == "v1.33.1"
    core_resources = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {"pods", "pods/status", "pods/resize", "services", "secrets", "configmaps"} <= core_resources
    apps = {r.name for r in client.AppsV1Api(api).get_api_resources().resources}
    assert {"statefulsets", "statefulsets/status", "statefulsets/scale", "deployments"} <= apps
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert {
        "apps",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "events.k8s.io",
        "apiextensions.k8s.io",
    } <= groups
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]


def test_pod_resize_can_be_switched_off(kube: KubeApiDouble) -> None:
    kube.pod_resize = False
    kube.version = "v1.32.4"
    api = kube.api_client()
    assert client.VersionApi(api).get_code().minor == "32"
    names = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
    assert "pods/status" in names
    assert "pods/resize" not in names
    core = client.CoreV1Api(api)
    core.create_namespaced_pod("default", _pod("p"))
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod_resize("p", "default", {"spec": {"containers": [{"name": "db"}]}})
    assert err.value.status == 404


def test_scale_subresource(kube: KubeApiDouble) -> None:
    apps = client.AppsV1Api(kube.api_client())
    sts = client.V1StatefulSet(
        metadata=client.V1ObjectMeta(name="db"),
        spec=client.V1StatefulSetSpec(
            selector=client.V1LabelSelector(match_labels={"app": "db"}),
            service_name="db",
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "db"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="db", image="postgres:17")]),
            ),
        ),
    )
    apps.create_namespaced_stateful_set("default", sts)
    scale = apps.read_namespaced_stateful_set_scale("db", "default")
    assert scale.spec.replicas == 1
    assert scale.status.selector == "app=db"
    apps.patch_namespaced_stateful_set_scale("db", "default", {"spec": {"replicas": 3}})
    assert apps.read_namespaced_stateful_set("db", "default").spec.replicas == 3


def test_kubeconfig_for_other_processes(kube: KubeApiDouble, tmp_path: Path) -> None:
    path = kube.write_kubeconfig(tmp_path / "kubeconfig")
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    assert configuration.host == kube.url
    with client.ApiClient(configuration) as api:
        names = [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items]
    assert "default" in names


def test_a_restored_object_keeps_what_was_stored_and_is_watched_as_added(
    kube: KubeApiDouble, core: client.CoreV1Api
) -> None:
    stored = kube.api_client().sanitize_for_serialization(
        core.create_namespaced_config_map("default", _cm("a"))
    )
    core.delete_namespaced_config_map("a", "default")
    since = kube.resource_version
    kube.restore(json.loads(json.dumps(stored)))
    back = core.read_namespaced_config_map("a", "default")
    assert back.metadata.uid == stored["metadata"]["uid"]
    assert back.metadata.creation_timestamp.isoformat().startswith(
        stored["metadata"]["creationTimestamp"][:19]
    )
    assert back.metadata.managed_fields[0].manager == stored["metadata"]["managedFields"][0]["manager"]
    assert int(back.metadata.resource_version) > since
    assert [e.type for e in kube.store.events_after(since)] == ["ADDED"]
    assert kube.writes("configmaps") == 2  # the create and the delete; the restore is not a request
    with pytest.raises(ApiError):
        kube.restore(json.loads(json.dumps(stored)))
