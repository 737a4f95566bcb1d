"""`KubeApiDouble`: the one class a test uses.

It starts the HTTP server on a free loopback port (and the controller/kubelet loop), hands out
`kubernetes.client` configuration, gives thread-safe direct access to stored objects, keeps the
request log, and exposes the switches (kubelet behaviour, node capacity, resize support, faults,
history compaction). Use it as a context manager:

    with KubeApiDouble() as kube:
        core = client.CoreV1Api(kube.api_client())
        ...
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from kubernetes import client

from .controllers import Controllers, ControlLoop
from .errors import ApiError
from .kubelet import Kubelet, PodBehaviour
from .registry import Registry, ResourceType
from .selectors import object_matcher, parse_field_selector, parse_label_selector
from .server import ApiServer, Fault, Hold, RequestRecord, serve
from .store import Obj, Store


class KubeApiDouble:
    """A stateful Kubernetes API server double, with optional controllers and a pretend kubelet."""

    def __init__(
        self,
        *,
        version: str = "v1.33.1",
        pod_resize: bool | None = None,
        controllers: bool = True,
        kubelet: bool = True,
        background: bool = True,
        history_size: int = 1000,
        bookmark_interval: float = 5.0,
        node_capacity: dict[str, str] | None = None,
        port: int = 0,
    ) -> None:
        """
        version: what `/version` reports. pod_resize: whether `pods/resize` exists (default: the
        version is 1.33 or newer). controllers/kubelet: start those parts switched on. background:
        run them in a thread (otherwise call `settle()`). history_size: watch events kept.
        """
        if pod_resize is None:
            pod_resize = _minor(version) >= 33
        self.registry = Registry(git_version=version, pod_resize=pod_resize)
        self.store = Store(self.registry, history_size=history_size)
        self.api = ApiServer(self.registry, self.store, bookmark_interval=bookmark_interval)
        self.kubelet = Kubelet(self.store, self.registry, capacity=node_capacity)
        self.controllers = Controllers(self.store, self.registry)
        self.loop = ControlLoop(self.store, self.controllers, self.kubelet)
        self.loop.controllers_enabled = controllers
        self.loop.kubelet_enabled = kubelet
        self._background = background
        self._port = port
        self._httpd: Any = None
        self._clients: builtins.list[client.ApiClient] = []
        self.url = ""

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> KubeApiDouble:
        self._httpd, _ = serve(self.api, port=self._port)
        self.url = f"http://{self.api.server_address}"
        if self._background:
            self.loop.start()
        return self

    def stop(self) -> None:
        self.loop.stop()
        self.api.stopping = True
        self.store.wake_watchers()
        for c in self._clients:
            # Closing a pool can fail during interpreter teardown; there is nothing to do then.
            with contextlib.suppress(Exception):
                c.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> KubeApiDouble:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- clients ------------------------------------------------------------------------------------

    def configuration(self) -> client.Configuration:
        """Plain-HTTP, no-auth configuration pointing at the double."""
        config = client.Configuration()
        config.host = self.url
        config.verify_ssl = False
        return config

    def api_client(self) -> client.ApiClient:
        """A new ApiClient (closed when the double stops)."""
        api_client = client.ApiClient(self.configuration())
        self._clients.append(api_client)
        return api_client

    def write_kubeconfig(self, path: str | Path) -> Path:
        """Write a kubeconfig for the double (for an operator started as a separate process)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubeapi-double", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {}}],
            "contexts": [
                {"name": "kubeapi-double", "context": {"cluster": "kubeapi-double", "user": "test"}}
            ],
            "current-context": "kubeapi-double",
        }
        target = Path(path)
        target.write_text(yaml.safe_dump(config))
        return target

    # -- switches -----------------------------------------------------------------------------------

    @property
    def pod_resize(self) -> bool:
        return self.registry.pod_resize

    @pod_resize.setter
    def pod_resize(self, on: bool) -> None:
        self.registry.pod_resize = on

    @property
    def version(self) -> str:
        return self.registry.git_version

    @version.setter
    def version(self, git_version: str) -> None:
        self.registry.git_version = git_version

    @property
    def controllers_enabled(self) -> bool:
        return self.loop.controllers_enabled

    @controllers_enabled.setter
    def controllers_enabled(self, on: bool) -> None:
        self.loop.controllers_enabled = on
        self.store.wake_watchers()

    @property
    def kubelet_enabled(self) -> bool:
        return self.loop.kubelet_enabled

    @kubelet_enabled.setter
    def kubelet_enabled(self, on: bool) -> None:
        self.loop.kubelet_enabled = on
        self.store.wake_watchers()

    def set_pod_behaviour(self, namespace: str, name: str, behaviour: PodBehaviour | str) -> None:
        """ "ready", "not-ready", "pending", "crash", "fail" or "succeed" for pod `name` (now or later)."""
        self.kubelet.set_behaviour(namespace, name, behaviour)
        self.store.wake_watchers()

    def set_node_capacity(self, **capacity: str) -> None:
        """E.g. set_node_capacity(cpu="4", memory="16Gi")."""
        self.kubelet.node_capacity.update(capacity)
        self.kubelet.reconsider()
        self.store.wake_watchers()

    def compact_history(self) -> int:
        """Drop all watch history: a watch from any older resourceVersion now gets 410 Expired."""
        return self.store.compact()

    def drop_watches(self) -> None:
        """Close every open watch stream (clients must re-watch)."""
        self.api.drop_watches()

    def fail_requests(
        self,
        code: int,
        *,
        verb: str | None = None,
        resource: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        subresource: str | None = None,
        times: int | None = 1,
        reason: str | None = None,
        message: str = "injected failure",
        retry_after: int | None = None,
    ) -> None:
        """Answer matching requests with an error `Status` (times=None: until `clear_faults()`),
        with a Retry-After header when `retry_after` is given."""
        reasons = {
            409: "Conflict",
            410: "Expired",
            429: "TooManyRequests",
            500: "InternalError",
            503: "ServiceUnavailable",
            504: "Timeout",
            404: "NotFound",
            403: "Forbidden",
            422: "Invalid",
        }
        key = self._key(resource) if resource else None
        self.api.add_fault(
            Fault(
                code,
                reason or reasons.get(code, "Unknown"),
                message,
                verb,
                key,
                namespace,
                name,
                subresource,
                times,
                retry_after,
            )
        )

    def clear_faults(self) -> None:
        self.api.clear_faults()

    def hold_reply(
        self,
        *,
        verb: str | None = None,
        resource: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Hold:
        """Serve the next matching request at once but hold its reply until `release` is set."""
        hold = Hold(verb, self._key(resource) if resource else None, namespace, name, subresource)
        self.api.add_hold(hold)
        return hold

    # -- direct access ------------------------------------------------------------------------------

    def _key(self, resource: str) -> str:
        return self.registry.by_key(resource).key

    def resource(self, resource: str) -> ResourceType:
        """Resolve "pods", "sts", "statefulsets.apps", "ServerlessDatabase", ... to its type."""
        return self.registry.by_key(resource)

    def get(self, resource: str, name: str, namespace: str | None = None) -> Obj | None:
        """A deep copy of the stored object, or None."""
        return self.store.try_get(self.resource(resource), namespace, name)

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Obj]:
        rt = self.resource(resource)
        match = object_matcher(
            parse_label_selector(label_selector),
            parse_field_selector(field_selector, rt.key, rt.selectable_fields),
        )
        return self.store.list_objects(rt, namespace, match)[0]

    def create(self, obj: Obj, namespace: str | None = None) -> Obj:
        """Store an object directly (as the admin would; not in the request log)."""
        rt = self.registry.for_object(obj)
        ns = namespace or (obj.get("metadata") or {}).get("namespace") or ("default" if rt.namespaced else "")
        return self.store.create(rt, ns, obj, manager="test")

    def restore(self, obj: Obj) -> None:
        """Put back a stored object as it was (uid, status and managedFields kept), as an etcd restore
        does; not in the request log. The object is taken, not copied."""
        self.store.restore(self.registry.for_object(obj), obj)

    def apply(self, obj: Obj, *, manager: str = "test", force: bool = True) -> Obj:
        """Server-side apply an object directly (not in the request log)."""
        rt = self.registry.for_object(obj)
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or ("default" if rt.namespaced else "")
        result, _ = self.store.patch(
            rt, ns, meta["name"], "application/apply-patch+yaml", obj, manager=manager, force=force
        )
        return result

    def patch_status(
        self, resource: str, name: str, status: dict[str, Any], namespace: str | None = None
    ) -> Obj | None:
        """Replace `.status` of an object (as a controller would); returns the new object."""

        def change(o: Obj) -> None:
            o["status"] = copy.deepcopy(status)

        return self.store.mutate(
            self.resource(resource), namespace, name, change, subresource="status", manager="test"
        )

    def delete(
        self, resource: str, name: str, namespace: str | None = None, *, propagation: str | None = None
    ) -> None:
        self.store.delete(self.resource(resource), namespace, name, propagation=propagation)

    def install_crd(self, crd: Obj | str | Path) -> Obj:
        """Create a CRD from a dict, a YAML string or a YAML file path, as `kubectl create` would."""
        if isinstance(crd, Path) or (isinstance(crd, str) and "\n" not in crd):
            crd = yaml.safe_load(Path(crd).read_text())
        elif isinstance(crd, str):
            crd = yaml.safe_load(crd)
        assert isinstance(crd, dict)
        return self.create(crd)

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

    # -- request log --------------------------------------------------------------------------------

    @property
    def requests(self) -> builtins.list[RequestRecord]:
        return self.api.request_log()

    def clear_requests(self) -> None:
        self.api.clear_request_log()

    def requests_matching(
        self,
        *,
        verb: str | None = None,
        resource: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        subresource: str | None = None,
        writes_only: bool = False,
    ) -> builtins.list[RequestRecord]:
        key = self._key(resource) if resource else None
        return [
            r
            for r in self.requests
            if (verb is None or r.verb == verb)
            and (key is None or r.resource == key)
            and (name is None or r.name == name)
            and (namespace is None or r.namespace == namespace)
            and (subresource is None or r.subresource == subresource)
            and (not writes_only or r.is_write)
        ]

    def writes(self, resource: str, name: str | None = None, namespace: str | None = None) -> int:
        """How many create/update/patch/delete requests reached this object (or resource)."""
        return len(
            self.requests_matching(resource=resource, name=name, namespace=namespace, writes_only=True)
        )

    @property
    def internal_errors(self) -> builtins.list[str]:
        """Tracebacks of bugs inside the double (HTTP handler or controller loop); should stay empty."""
        return self.api.internal_errors + self.loop.errors

    # -- waiting ------------------------------------------------------------------------------------

    def settle(self) -> None:
        """Run controllers and kubelet until nothing changes (useful with background=False)."""
        self.loop.settle()

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02, message: str = ""
    ) -> Any:
        """Poll until predicate() is truthy; returns its value, raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
            except ApiError:
                value = None
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(message or f"condition not met within {timeout}s")
            if not self._background:
                self.settle()
            time.sleep(interval)

    def pod_ready(self, name: str, namespace: str = "default") -> bool:
        pod = self.get("pods", name, namespace)
        return bool(pod) and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (pod or {}).get("status", {}).get("conditions") or []
        )


def _minor(version: str) -> int:
    parts = version.lstrip("v").split(".")
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return 0
