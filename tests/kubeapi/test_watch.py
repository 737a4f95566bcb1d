# The generated client types every model field as Optional, returns `object` from CustomObjectsApi and
# declares model types for bodies it also accepts as plain dicts (as the API does). These tests read
# fields the double has just filled in and send dict bodies on purpose, so those checks are off here.
# `kubernetes.watch` has no type annotations at all.
# mypy: disable-error-code="union-attr, index, arg-type, type-var, operator, no-untyped-call"
"""Watches in the Kubernetes API double, through `kubernetes.watch.Watch`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from kubeapi import KubeApiDouble
from kubeapi.crds import serverless_database_crd

pytestmark = pytest.mark.kubernetes


@pytest.fixture
def kube() -> Iterator[KubeApiDouble]:
    with KubeApiDouble(controllers=False, kubelet=False, history_size=50, bookmark_interval=0.2) as double:
        yield double
        assert double.internal_errors == []


@pytest.fixture
def core(kube: KubeApiDouble) -> client.CoreV1Api:
    return client.CoreV1Api(kube.api_client())


def _cm(name: str, labels: dict[str, str] | None = None, value: str = "v") -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels), data={"k": value})


def _collect(stream: Iterator[dict[str, Any]], count: int) -> list[tuple[str, str]]:
    out = []
    for event in stream:
        obj = event["raw_object"]
        out.append((event["type"], obj["metadata"]["name"]))
        if len(out) == count:
            break
    return out


def test_watch_from_resource_version_sees_only_later_events(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", _cm("before"))
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", _cm("after"))
    core.patch_namespaced_config_map("after", "default", {"data": {"k": "2"}})
    core.delete_namespaced_config_map("before", "default")
    w = watch.Watch()
    events = _collect(
        w.stream(core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=5), 3
    )
    w.stop()
    assert events == [("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "before")]


def test_watch_without_version_starts_with_current_state(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", _cm("a"))
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_config_map, "default", timeout_seconds=5)
    first = next(stream)
    assert first["type"] == "ADDED"
    assert isinstance(first["object"], client.V1ConfigMap)  # typed like the list's items
    assert first["object"].metadata.name == "a"
    w.stop()


def test_live_events_arrive_while_watching(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_config_map("default").metadata.resource_version

    def writer() -> None:
        time.sleep(0.1)
        core.create_namespaced_config_map("default", _cm("live"))

    thread = threading.Thread(target=writer)
    thread.start()
    w = watch.Watch()
    events = _collect(
        w.stream(core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=5), 1
    )
    w.stop()
    thread.join()
    assert events == [("ADDED", "live")]


def test_compacted_history_gives_410(kube: KubeApiDouble, core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", _cm("a"))
    kube.compact_history()
    w = watch.Watch()
    with pytest.raises(ApiException) as err:
        # No timeout_seconds: the client retries once after a 410, then raises.
        for _ in w.stream(core.list_namespaced_config_map, "default", resource_version=rv):
            pass
    assert err.value.status == 410
    assert "too old resource version" in str(err.value.reason)
    # A fresh list gives a version that can be watched from again.
    fresh = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", _cm("b"))
    events = _collect(
        w.stream(core.list_namespaced_config_map, "default", resource_version=fresh, timeout_seconds=5), 1
    )
    assert events == [("ADDED", "b")]


def test_bounded_history_expires_old_versions(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    for i in range(60):  # more writes than the history keeps (50)
        core.create_namespaced_config_map("default", _cm(f"cm-{i}"))
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(
            core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=2
        ):
            pass
    assert err.value.status == 410


def test_timeout_seconds_ends_the_watch(core: client.CoreV1Api) -> None:
    started = time.monotonic()
    events = list(watch.Watch().stream(core.list_namespaced_config_map, "default", timeout_seconds=1))
    elapsed = time.monotonic() - started
    assert events == []
    assert 0.9 <= elapsed < 3


def test_label_selector_applies_to_watches(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", _cm("a", {"app": "db"}))
    core.create_namespaced_config_map("default", _cm("b", {"app": "web"}))
    core.patch_namespaced_config_map("b", "default", {"metadata": {"labels": {"app": "db"}}})  # moves in
    core.patch_namespaced_config_map("a", "default", {"metadata": {"labels": {"app": "web"}}})  # moves out
    w = watch.Watch()
    events = _collect(
        w.stream(
            core.list_namespaced_config_map,
            "default",
            label_selector="app=db",
            resource_version=rv,
            timeout_seconds=5,
        ),
        3,
    )
    w.stop()
    assert events == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_all_namespaces_watch_and_namespace_scoping(core: client.CoreV1Api) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="other")))
    rv = core.list_config_map_for_all_namespaces().metadata.resource_version
    core.create_namespaced_config_map("other", _cm("x"))
    core.create_namespaced_config_map("default", _cm("y"))
    w = watch.Watch()
    everywhere = _collect(
        w.stream(core.list_config_map_for_all_namespaces, resource_version=rv, timeout_seconds=5), 2
    )
    w.stop()
    assert everywhere == [("ADDED", "x"), ("ADDED", "y")]
    w = watch.Watch()
    scoped = _collect(
        w.stream(core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=5), 1
    )
    w.stop()
    assert scoped == [("ADDED", "y")]


def test_bookmarks_when_asked(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    w = watch.Watch()
    stream = w.stream(
        core.list_namespaced_config_map,
        "default",
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=3,
    )
    event = next(stream)
    w.stop()
    assert event["type"] == "BOOKMARK"
    assert int(event["raw_object"]["metadata"]["resourceVersion"]) >= int(rv)


def test_dropped_watches_end(kube: KubeApiDouble, core: client.CoreV1Api) -> None:
    done = threading.Event()

    def watcher() -> None:
        for _ in watch.Watch().stream(core.list_namespaced_config_map, "default", timeout_seconds=30):
            pass
        done.set()

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    time.sleep(0.2)
    kube.drop_watches()
    assert done.wait(3)


def test_watch_of_custom_resources(kube: KubeApiDouble) -> None:
    kube.install_crd(serverless_database_crd())
    custom = client.CustomObjectsApi(kube.api_client())
    rv = custom.list_namespaced_custom_object("dbscale.io", "v1alpha1", "default", "serverlessdatabases")[
        "metadata"
    ]["resourceVersion"]
    sdb = {
        "apiVersion": "dbscale.io/v1alpha1",
        "kind": "ServerlessDatabase",
        "metadata": {"name": "a"},
        "spec": {},
    }
    custom.create_namespaced_custom_object("dbscale.io", "v1alpha1", "default", "serverlessdatabases", sdb)
    w = watch.Watch()
    stream = w.stream(
        custom.list_namespaced_custom_object,
        "dbscale.io",
        "v1alpha1",
        "default",
        "serverlessdatabases",
        resource_version=rv,
        timeout_seconds=5,
    )
    event = next(stream)
    w.stop()
    assert event["type"] == "ADDED"
    assert event["object"]["metadata"]["name"] == "a"
