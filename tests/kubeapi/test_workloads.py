# The generated client types every model field as Optional, returns `object` from CustomObjectsApi and
# declares model types for bodies it also accepts as plain dicts (as the API does). These tests read
# fields the double has just filled in and send dict bodies on purpose, so those checks are off here.
# mypy: disable-error-code="union-attr, index, arg-type, type-var, operator"
"""The controller and kubelet half of the Kubernetes API double: StatefulSets, pods, resize."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubeapi import KubeApiDouble, PodBehaviour

pytestmark = pytest.mark.kubernetes


@pytest.fixture
def kube() -> Iterator[KubeApiDouble]:
    with KubeApiDouble(node_capacity={"cpu": "4", "memory": "16Gi", "pods": "110"}) as double:
        yield double
        assert double.internal_errors == []


@pytest.fixture
def core(kube: KubeApiDouble) -> client.CoreV1Api:
    return client.CoreV1Api(kube.api_client())


@pytest.fixture
def apps(kube: KubeApiDouble) -> client.AppsV1Api:
    return client.AppsV1Api(kube.api_client())


def _statefulset(
    name: str = "db",
    replicas: int = 2,
    *,
    retention: dict[str, str] | None = None,
    parallel: bool = False,
    cpu: str = "500m",
    memory: str = "1Gi",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "serviceName": name,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name, "tier": "data"}},
            "spec": {
                "containers": [
                    {
                        "name": "postgres",
                        "image": "postgres:17",
                        "resources": {
                            "requests": {"cpu": cpu, "memory": memory},
                            "limits": {"memory": memory},
                        },
                        "resizePolicy": [
                            {"resourceName": "cpu", "restartPolicy": "NotRequired"},
                            {"resourceName": "memory", "restartPolicy": "NotRequired"},
                        ],
                        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql"}],
                    }
                ]
            },
        },
        "volumeClaimTemplates": [
            {
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }
        ],
    }
    if retention:
        spec["persistentVolumeClaimRetentionPolicy"] = retention
    if parallel:
        spec["podManagementPolicy"] = "Parallel"
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name}, "spec": spec}


def _names(kube: KubeApiDouble, resource: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in kube.list(resource, "default"))


def _ready_replicas(kube: KubeApiDouble, name: str = "db") -> int:
    sts = kube.get("statefulsets", name, "default") or {}
    return int((sts.get("status") or {}).get("readyReplicas") or 0)


def test_statefulset_makes_pods_and_claims(
    kube: KubeApiDouble, apps: client.AppsV1Api, core: client.CoreV1Api
) -> None:
    apps.create_namespaced_stateful_set("default", _statefulset(replicas=3))
    kube.wait_for(lambda: _ready_replicas(kube) == 3)
    sts = apps.read_namespaced_stateful_set("db", "default")
    assert (sts.status.replicas, sts.status.ready_replicas, sts.status.available_replicas) == (3, 3, 3)
    assert (sts.status.current_replicas, sts.status.updated_replicas) == (3, 3)
    assert sts.status.observed_generation == sts.metadata.generation
    assert sts.status.current_revision == sts.status.update_revision

    pods = core.list_namespaced_pod("default", label_selector="app=db").items
    assert sorted(p.metadata.name for p in pods) == ["db-0", "db-1", "db-2"]
    pod = next(p for p in pods if p.metadata.name == "db-1")
    assert pod.metadata.labels["tier"] == "data"
    assert pod.metadata.labels["statefulset.kubernetes.io/pod-name"] == "db-1"
    owner = pod.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "StatefulSet",
        "db",
        sts.metadata.uid,
        True,
    )
    assert pod.spec.hostname == "db-1"
    assert pod.spec.subdomain == "db"
    claim_volume = next(v for v in pod.spec.volumes if v.name == "data")
    assert claim_volume.persistent_volume_claim.claim_name == "data-db-1"

    claims = core.list_namespaced_persistent_volume_claim("default").items
    assert sorted(c.metadata.name for c in claims) == ["data-db-0", "data-db-1", "data-db-2"]
    assert all(c.status.phase == "Bound" for c in claims)
    assert claims[0].metadata.labels == {"app": "db"}


def test_ordered_ready_waits_for_each_pod(kube: KubeApiDouble, apps: client.AppsV1Api) -> None:
    kube.set_pod_behaviour("default", "db-0", PodBehaviour.NOT_READY)
    apps.create_namespaced_stateful_set("default", _statefulset(replicas=3))
    kube.wait_for(lambda: kube.get("pods", "db-0", "default"))
    time.sleep(0.3)
    assert _names(kube, "pods") == ["db-0"]  # db-1 waits for db-0 to be Ready
    kube.set_pod_behaviour("default", "db-0", PodBehaviour.READY)
    kube.wait_for(lambda: _ready_replicas(kube) == 3)


def test_scale_down_and_claim_retention(kube: KubeApiDouble, apps: client.AppsV1Api) -> None:
    apps.create_namespaced_stateful_set("default", _statefulset("keep", replicas=2))
    apps.create_namespaced_stateful_set(
        "default",
        _statefulset("drop", replicas=2, retention={"whenScaled": "Delete", "whenDeleted": "Delete"}),
    )
    kube.wait_for(lambda: _ready_replicas(kube, "keep") == 2 and _ready_replicas(kube, "drop") == 2)

    for name in ("keep", "drop"):
        apps.patch_namespaced_stateful_set_scale(name, "default", {"spec": {"replicas": 1}})
    kube.wait_for(lambda: _names(kube, "pods") == ["drop-0", "keep-0"])
    kube.wait_for(lambda: "data-drop-1" not in _names(kube, "persistentvolumeclaims"))
    assert _names(kube, "persistentvolumeclaims") == ["data-drop-0", "data-keep-0", "data-keep-1"]
    status = apps.read_namespaced_stateful_set("keep", "default").status
    assert (status.replicas, status.ready_replicas) == (1, 1)

    for name in ("keep", "drop"):
        apps.delete_namespaced_stateful_set(name, "default")
    kube.wait_for(lambda: _names(kube, "pods") == [])
    assert _names(kube, "persistentvolumeclaims") == ["data-keep-0", "data-keep-1"]  # Retain keeps them


def test_rolling_update_replaces_pods_highest_first(
    kube: KubeApiDouble, apps: client.AppsV1Api, core: client.CoreV1Api
) -> None:
    apps.create_namespaced_stateful_set("default", _statefulset(replicas=2, parallel=True))
    kube.wait_for(lambda: _ready_replicas(kube) == 2)
    before = {p.metadata.name: p.metadata.uid for p in core.list_namespaced_pod("default").items}
    apps.patch_namespaced_stateful_set(
        "db",
        "default",
        {"spec": {"template": {"spec": {"containers": [{"name": "postgres", "image": "postgres:18"}]}}}},
    )

    def rolled() -> bool:
        sts = apps.read_namespaced_stateful_set("db", "default")
        # observedGeneration first: until the controller has seen the new template, the old status holds.
        return bool(
            sts.status.observed_generation == sts.metadata.generation
            and sts.status.updated_replicas == 2
            and sts.status.ready_replicas == 2
            and sts.status.current_revision == sts.status.update_revision
        )

    kube.wait_for(rolled)
    after = {p.metadata.name: p for p in core.list_namespaced_pod("default").items}
    assert all(after[n].metadata.uid != before[n] for n in before)
    assert {p.spec.containers[0].image for p in after.values()} == {"postgres:18"}


def test_pod_becomes_ready_with_ip_and_statuses(kube: KubeApiDouble, core: client.CoreV1Api) -> None:
    kube.kubelet.ready_delay = 60  # long enough to look at the pod before it starts
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="db",
                    image="postgres:17",
                    resources=client.V1ResourceRequirements(requests={"cpu": "250m", "memory": "512Mi"}),
                )
            ]
        ),
    )
    core.create_namespaced_pod("default", pod)
    kube.wait_for(lambda: (kube.get("pods", "p", "default") or {}).get("spec", {}).get("nodeName"))
    assert not kube.pod_ready("p")  # still within ready_delay
    assert core.read_namespaced_pod("p", "default").status.phase == "Pending"
    kube.kubelet.ready_delay = 0
    kube.wait_for(lambda: kube.pod_ready("p"))
    got = core.read_namespaced_pod("p", "default")
    assert got.status.phase == "Running"
    assert got.status.pod_ip.startswith("127.244.")
    conditions = {c.type: c.status for c in got.status.conditions}
    assert conditions["Ready"] == conditions["ContainersReady"] == conditions["PodScheduled"] == "True"
    cs = got.status.container_statuses[0]
    assert (cs.ready, cs.restart_count, cs.started) == (True, 0, True)
    assert cs.resources.requests == {"cpu": "250m", "memory": "512Mi"}
    assert cs.allocated_resources == {"cpu": "250m", "memory": "512Mi"}
    node = core.read_node("node-1")
    assert node.status.capacity["cpu"] == "4"
    assert node.status.node_info.kubelet_version == "v1.33.1"


@pytest.mark.parametrize(
    ("behaviour", "phase", "ready"),
    [
        (PodBehaviour.NOT_READY, "Running", False),
        (PodBehaviour.FAIL, "Failed", False),
        (PodBehaviour.PENDING, "Pending", False),
        (PodBehaviour.CRASH, "Running", False),
    ],
)
def test_pod_behaviours(
    kube: KubeApiDouble, core: client.CoreV1Api, behaviour: PodBehaviour, phase: str, ready: bool
) -> None:
    kube.set_pod_behaviour("default", "p", behaviour)
    core.create_namespaced_pod(
        "default", {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}
    )
    kube.wait_for(lambda: (kube.get("pods", "p", "default") or {}).get("status", {}).get("containerStatuses"))
    time.sleep(0.1)
    pod = core.read_namespaced_pod("p", "default")
    assert pod.status.phase == phase
    assert kube.pod_ready("p") is ready
    if behaviour == PodBehaviour.CRASH:
        cs = pod.status.container_statuses[0]
        assert cs.restart_count == 1
        assert cs.state.waiting.reason == "CrashLoopBackOff"


def _resize_pod(core: client.CoreV1Api, cpu: str, memory: str) -> client.V1Pod:
    return core.patch_namespaced_pod_resize(
        "db-0",
        "default",
        {
            "spec": {
                "containers": [
                    {
                        "name": "postgres",
                        "resources": {
                            "requests": {"cpu": cpu, "memory": memory},
                            "limits": {"memory": memory},
                        },
                    }
                ]
            }
        },
    )


def _container_status(core: client.CoreV1Api) -> client.V1ContainerStatus:
    return core.read_namespaced_pod("db-0", "default").status.container_statuses[0]


def _conditions(kube: KubeApiDouble) -> dict[str, dict[str, Any]]:
    pod = kube.get("pods", "db-0", "default") or {}
    return {c["type"]: c for c in pod.get("status", {}).get("conditions") or []}


def test_in_place_resize_is_applied_without_restart(
    kube: KubeApiDouble, apps: client.AppsV1Api, core: client.CoreV1Api
) -> None:
    apps.create_namespaced_stateful_set("default", _statefulset(replicas=1))
    kube.wait_for(lambda: _ready_replicas(kube) == 1)
    before = core.read_namespaced_pod("db-0", "default")
    kube.kubelet.resize_delay = 60  # hold the resize in progress while we look
    resized = _resize_pod(core, "2", "4Gi")
    assert resized.spec.containers[0].resources.requests == {"cpu": "2", "memory": "4Gi"}
    kube.wait_for(lambda: "PodResizeInProgress" in _conditions(kube))
    assert _container_status(core).allocated_resources == {"cpu": "2", "memory": "4Gi"}
    assert _container_status(core).resources.requests == {"cpu": "500m", "memory": "1Gi"}  # not yet applied
    kube.kubelet.resize_delay = 0
    kube.wait_for(lambda: "PodResizeInProgress" not in _conditions(kube))
    cs = _container_status(core)
    assert cs.resources.requests == {"cpu": "2", "memory": "4Gi"}
    assert cs.resources.limits == {"memory": "4Gi"}
    assert cs.restart_count == 0
    after = core.read_namespaced_pod("db-0", "default")
    assert after.metadata.uid == before.metadata.uid
    assert cs.container_id == before.status.container_statuses[0].container_id
    assert kube.pod_ready("db-0", "default")
    # The StatefulSet's template is untouched: the pod keeps its revision and is not replaced.
    assert apps.read_namespaced_stateful_set("db", "default").status.updated_replicas == 1


def test_resize_with_restart_policy_restarts_the_container(
    kube: KubeApiDouble, apps: client.AppsV1Api, core: client.CoreV1Api
) -> None:
    sts = _statefulset(replicas=1)
    sts["spec"]["template"]["spec"]["containers"][0]["resizePolicy"][1]["restartPolicy"] = "RestartContainer"
    apps.create_namespaced_stateful_set("default", sts)
    kube.wait_for(lambda: _ready_replicas(kube) == 1)
    _resize_pod(core, "1", "1Gi")  # cpu only: NotRequired, no restart
    kube.wait_for(lambda: _container_status(core).resources.requests == {"cpu": "1", "memory": "1Gi"})
    assert _container_status(core).restart_count == 0
    _resize_pod(core, "1", "2Gi")  # memory: RestartContainer
    kube.wait_for(lambda: _container_status(core).resources.requests == {"cpu": "1", "memory": "2Gi"})
    assert _container_status(core).restart_count == 1


def test_infeasible_resize_leaves_resources_alone(
    kube: KubeApiDouble, apps: client.AppsV1Api, core: client.CoreV1Api
) -> None:
    apps.create_namespaced_stateful_set("default", _statefulset(replicas=1))
    kube.wait_for(lambda: _ready_replicas(kube) == 1)
    _resize_pod(core, "8", "2Gi")  # the node has 4 CPUs
    kube.wait_for(lambda: "PodResizePending" in _conditions(kube))
    pending = _conditions(kube)["PodResizePending"]
    assert pending["reason"] == "Infeasible"
    assert "cpu" in pending["message"]
    cs = _container_status(core)
    assert cs.resources.requests == {"cpu": "500m", "memory": "1Gi"}
    assert cs.allocated_resources == {"cpu": "500m", "memory": "1Gi"}
    # Asking for something that fits clears the condition and applies it.
    _resize_pod(core, "1", "2Gi")
    kube.wait_for(
        lambda: (
            "PodResizePending" not in _conditions(kube)
            and _container_status(core).resources.requests == {"cpu": "1", "memory": "2Gi"}
        )
    )


def test_deferred_resize_when_the_node_is_busy(
    kube: KubeApiDouble, apps: client.AppsV1Api, core: client.CoreV1Api
) -> None:
    apps.create_namespaced_stateful_set("default", _statefulset(replicas=1))
    apps.create_namespaced_stateful_set("default", _statefulset("other", replicas=1, cpu="3"))
    kube.wait_for(lambda: _ready_replicas(kube) == 1 and _ready_replicas(kube, "other") == 1)
    _resize_pod(core, "2", "1Gi")  # 2 + 3 > 4 CPUs, but 2 alone would fit
    kube.wait_for(lambda: "PodResizePending" in _conditions(kube))
    assert _conditions(kube)["PodResizePending"]["reason"] == "Deferred"
    apps.delete_namespaced_stateful_set("other", "default")  # frees the CPU: the resize proceeds
    kube.wait_for(lambda: _container_status(core).resources.requests == {"cpu": "2", "memory": "1Gi"})


def test_resize_cannot_change_qos_class(
    kube: KubeApiDouble, apps: client.AppsV1Api, core: client.CoreV1Api
) -> None:
    apps.create_namespaced_stateful_set("default", _statefulset(replicas=1))
    kube.wait_for(lambda: _ready_replicas(kube) == 1)
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod_resize(
            "db-0",
            "default",
            {
                "spec": {
                    "containers": [
                        {
                            "name": "postgres",
                            "resources": {
                                "requests": {"cpu": "1", "memory": "1Gi"},
                                "limits": {"cpu": "1", "memory": "1Gi"},
                            },
                        }
                    ]
                }
            },
        )
    assert err.value.status == 422  # Burstable -> Guaranteed


def test_unschedulable_pods_stay_pending(kube: KubeApiDouble, core: client.CoreV1Api) -> None:
    big = {
        "metadata": {"name": "big"},
        "spec": {"containers": [{"name": "c", "image": "x:1", "resources": {"requests": {"cpu": "16"}}}]},
    }
    core.create_namespaced_pod("default", big)
    kube.wait_for(lambda: (kube.get("pods", "big", "default") or {}).get("status", {}).get("conditions"))
    pod = core.read_namespaced_pod("big", "default")
    scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")
    assert "Insufficient cpu" in scheduled.message
    assert pod.spec.node_name is None


def test_graceful_pod_termination(kube: KubeApiDouble, core: client.CoreV1Api) -> None:
    kube.kubelet.graceful_termination = True
    kube.kubelet.termination_delay = 60
    core.create_namespaced_pod(
        "default", {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}
    )
    kube.wait_for(lambda: kube.pod_ready("p"))
    core.delete_namespaced_pod("p", "default")
    terminating = core.read_namespaced_pod("p", "default")
    assert terminating.metadata.deletion_timestamp is not None
    assert terminating.metadata.deletion_grace_period_seconds == 30
    kube.kubelet.termination_delay = 0
    kube.wait_for(lambda: kube.get("pods", "p", "default") is None)


def test_deployment_replicasets_and_endpointslices(
    kube: KubeApiDouble, apps: client.AppsV1Api, core: client.CoreV1Api
) -> None:
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        "default",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": "nginx:1",
                                "ports": [{"containerPort": 80, "name": "http"}],
                            }
                        ]
                    },
                },
            },
        },
    )
    core.create_namespaced_service(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": "http"}]},
        },
    )

    def available() -> bool:
        d = apps.read_namespaced_deployment("web", "default")
        return bool(
            d.status.available_replicas == 2 and d.status.observed_generation == d.metadata.generation
        )

    kube.wait_for(available)
    rs = apps.list_namespaced_replica_set("default").items
    assert len(rs) == 1
    assert rs[0].metadata.owner_references[0].name == "web"
    pods = core.list_namespaced_pod("default", label_selector="app=web").items
    assert all(p.metadata.name.startswith(rs[0].metadata.name + "-") for p in pods)
    discovery = client.DiscoveryV1Api(kube.api_client())

    def endpoints() -> list[str]:
        slices = discovery.list_namespaced_endpoint_slice(
            "default", label_selector="kubernetes.io/service-name=web"
        ).items
        return sorted(a for s in slices for e in s.endpoints or [] if e.conditions.ready for a in e.addresses)

    kube.wait_for(lambda: len(endpoints()) == 2)
    assert sorted(endpoints()) == sorted(p.status.pod_ip for p in pods)
    slices = discovery.list_namespaced_endpoint_slice("default").items
    assert slices[0].ports[0].port == 80

    apps.delete_namespaced_deployment("web", "default")
    kube.wait_for(lambda: core.list_namespaced_pod("default", label_selector="app=web").items == [])


def test_controllers_and_kubelet_can_be_switched_off(kube: KubeApiDouble, apps: client.AppsV1Api) -> None:
    kube.controllers_enabled = False
    apps.create_namespaced_stateful_set("default", _statefulset(replicas=1))
    time.sleep(0.3)
    assert _names(kube, "pods") == []
    kube.kubelet_enabled = False
    kube.controllers_enabled = True
    kube.wait_for(lambda: _names(kube, "pods") == ["db-0"])
    time.sleep(0.2)
    assert not kube.pod_ready("db-0")
    kube.kubelet_enabled = True
    kube.wait_for(lambda: _ready_replicas(kube) == 1)


def test_manual_stepping_without_background_thread() -> None:
    with KubeApiDouble(background=False) as kube:
        kube.create(_statefulset(replicas=2))
        assert kube.list("pods", "default") == []
        kube.settle()
        assert _ready_replicas(kube) == 2
        assert kube.internal_errors == []
