"""A thin, generic layer over the `kubernetes` client: paths, verbs and patch types, as plain dicts.

Every call names its verb and resource and is checked against the declared permission table
(`permissions.py`): a call the table does not list fails at once, in tests as in production, so the
chart's RBAC can be derived from the table and never lags behind the code. Calls are synchronous;
the async callers run them in threads.
"""

from __future__ import annotations

import builtins
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from controller.api import types
from controller.runtime.kubernetes import permissions
from controller.runtime.kubernetes.builders import FIELD_MANAGER

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
LIST_PAGE = 500
"""Objects per page of a list, as client-go's informers ask for."""


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


DATABASES = Kind(types.GROUP, types.VERSION, types.PLURAL, types.KIND)
WAKE_REQUESTS = Kind(types.GROUP, types.VERSION, types.WAKE_REQUEST_PLURAL, types.WAKE_REQUEST_KIND)
STATEFULSETS = Kind("apps", "v1", "statefulsets", "StatefulSet")
DEPLOYMENTS = Kind("apps", "v1", "deployments", "Deployment")
SERVICES = Kind("", "v1", "services", "Service")
ENDPOINTSLICES = Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
PODS = Kind("", "v1", "pods", "Pod")
CLAIMS = Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
SECRETS = Kind("", "v1", "secrets", "Secret")
CONFIGMAPS = Kind("", "v1", "configmaps", "ConfigMap")
NETWORK_POLICIES = Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
EVENTS = Kind("", "v1", "events", "Event")
LEASES = Kind("coordination.k8s.io", "v1", "leases", "Lease")
CERTIFICATES = Kind("cert-manager.io", "v1", "certificates", "Certificate")
TOKEN_REVIEWS = Kind("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", namespaced=False)
KINDS = {
    k.kind: k
    for k in (
        DATABASES,
        WAKE_REQUESTS,
        STATEFULSETS,
        SERVICES,
        ENDPOINTSLICES,
        PODS,
        CLAIMS,
        SECRETS,
        CONFIGMAPS,
        NETWORK_POLICIES,
        EVENTS,
        LEASES,
    )
}


class ApiError(Exception):
    """An API call that failed, with the server's Status reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def gone(self) -> bool:
        return self.status == 410

    @classmethod
    def from_exception(cls, error: ApiException) -> ApiError:
        try:
            status = json.loads(error.body or "{}")
        except ValueError:
            status = {}
        return cls(
            int(error.status or 0),
            str(status.get("reason") or error.reason or ""),
            str(status.get("message") or ""),
        )


class RateLimit:
    """A token bucket shared by the threads that call the API: `qps` requests a second on average,
    `burst` at once, as client-go's client-side limiter (the operator's defaults are 50 and 100, as
    kueue's; client-go's own 5 and 10 would take a ten-thousand-database fleet an hour to create).

    Written here because the asyncio limiters (aiolimiter) do not serve calls made in threads, and
    the client has none of its own.
    """

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.qps = qps
        self.burst = burst
        self.clock = clock
        self.sleep = sleep
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> None:
        """Wait for a token."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.qps)
            self._at = now
            self._tokens -= 1
            wait = -self._tokens / self.qps if self._tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)


def rate_limit(qps: float, burst: int) -> RateLimit | None:
    """The limit for `--kube-qps` and `--kube-burst`: none for a QPS of 0 or less (rely on the
    server's priority and fairness alone)."""
    return RateLimit(qps, max(burst, 1)) if qps > 0 else None


RETRIES = 10
"""Answers of 429 (or 5xx) with a Retry-After that a request waits out before it fails, as client-go."""
LONGEST_RETRY_AFTER = 60.0


class Kube:
    """One API connection with a permission table, a client-side rate limit, and patience with 429."""

    def __init__(
        self,
        api_client: client.ApiClient,
        rules: tuple[permissions.Rule, ...],
        *,
        limit: RateLimit | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_client = api_client
        self.rules = rules
        self.limit = limit
        self.sleep = sleep
        # Retry-After is honoured below, for every verb; urllib3 would wait on its own for GETs alone.
        pools = api_client.rest_client.pool_manager.connection_pool_kw
        pools["retries"] = urllib3.Retry(3, respect_retry_after_header=False)

    def _check(self, kind: Kind, verb: str, subresource: str | None) -> None:
        resource = f"{kind.plural}/{subresource}" if subresource else kind.plural
        if not permissions.allows(self.rules, kind.group, resource, verb):
            raise PermissionError(f"{verb} {kind.group or 'core'}/{resource} is not in the permission table")

    def request(
        self,
        verb: str,
        kind: Kind,
        *,
        method: str,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        stream: bool = False,
        timeout: float | None = 30.0,
    ) -> Any:
        self._check(kind, verb, subresource)
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        params = self.api_client.param_serialize(
            method=method,
            resource_path=kind.path(namespace, name, subresource),
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        for attempt in range(RETRIES + 1):
            if self.limit is not None:
                self.limit.take()
            try:
                response = self.api_client.call_api(*params, _request_timeout=timeout)
            except ApiException as error:
                raise ApiError.from_exception(error) from error
            if stream and 200 <= response.status < 300:
                return response.response
            data = response.read()
            if 200 <= response.status < 300:
                return json.loads(data) if data else {}
            wait = _retry_after(response)
            if wait is None or attempt == RETRIES:
                raise ApiError.from_exception(ApiException(http_resp=response))
            self.sleep(wait)  # the server said when to come back (429, or a 5xx while it recovers)
        raise AssertionError("unreachable")

    # -- verbs -----------------------------------------------------------------------------------

    def get(
        self, kind: Kind, namespace: str, name: str, *, subresource: str | None = None
    ) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.request(
                "get", kind, method="GET", namespace=namespace, name=name, subresource=subresource
            )
        except ApiError as error:
            if error.not_found:
                return None
            raise
        return result

    def list(
        self,
        kind: Kind,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        project: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """Every object, a page at a time (as client-go lists), each through `project` as its page
        arrives: only a page of whole objects is ever held at once."""
        query = {"labelSelector": label_selector} if label_selector else {}
        if field_selector:
            query["fieldSelector"] = field_selector
        query["limit"] = str(LIST_PAGE)
        items: builtins.list[dict[str, Any]] = []
        while True:
            result = self.request("list", kind, method="GET", namespace=namespace, query=query)
            page = result.get("items") or []
            items += map(project, page) if project is not None else page
            token = result["metadata"].get("continue")
            if not token:
                return items, str(result["metadata"].get("resourceVersion", ""))
            query["continue"] = token

    def create(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        namespace = (body.get("metadata") or {}).get("namespace")
        result: dict[str, Any] = self.request("create", kind, method="POST", namespace=namespace, body=body)
        return result

    def apply(self, kind: Kind, body: dict[str, Any], *, subresource: str | None = None) -> dict[str, Any]:
        """Server-side apply with the operator's field manager, taking ownership of its fields."""
        meta = body["metadata"]
        result: dict[str, Any] = self.request(
            "patch",
            kind,
            method="PATCH",
            namespace=meta.get("namespace"),
            name=meta["name"],
            subresource=subresource,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=json.dumps(body),
            content_type=APPLY_PATCH,
        )
        return result

    def patch(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        *,
        subresource: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "patch",
            kind,
            method="PATCH",
            namespace=namespace,
            name=name,
            subresource=subresource,
            query={"fieldManager": FIELD_MANAGER},
            body=patch,
            content_type=content_type,
        )
        return result

    def replace(self, kind: Kind, body: dict[str, Any], *, subresource: str | None = None) -> dict[str, Any]:
        meta = body["metadata"]
        result: dict[str, Any] = self.request(
            "update",
            kind,
            method="PUT",
            namespace=meta.get("namespace"),
            name=meta["name"],
            subresource=subresource,
            query={"fieldManager": FIELD_MANAGER},
            body=body,
        )
        return result

    def delete(
        self, kind: Kind, namespace: str, name: str, *, propagation: str = "Background", uid: str = ""
    ) -> bool:
        """Delete; False when it was already gone. With `uid`, only that object (not one made since)."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("delete", kind, method="DELETE", namespace=namespace, name=name, body=body)
        except ApiError as error:
            if error.not_found:
                return False
            raise
        return True

    def watch(
        self,
        kind: Kind,
        *,
        namespace: str | None,
        resource_version: str,
        timeout_seconds: int,
        label_selector: str = "",
        stopper: builtins.list[watch.Watch] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Events from a resourceVersion on, as dicts; an expired version raises ApiError 410."""

        def list_for_watch(**kwargs: Any) -> Any:
            query = {"watch": "true", "allowWatchBookmarks": "true"}
            for key, name in (
                ("resource_version", "resourceVersion"),
                ("timeout_seconds", "timeoutSeconds"),
                ("label_selector", "labelSelector"),
            ):
                if kwargs.get(key):
                    query[name] = str(kwargs[key])
            return self.request(
                "watch",
                kind,
                method="GET",
                namespace=namespace,
                query=query,
                stream=True,
                timeout=timeout_seconds + 10,
            )

        watcher = watch.Watch()
        if stopper is not None:
            stopper.append(watcher)
        kwargs: dict[str, Any] = {"resource_version": resource_version, "timeout_seconds": timeout_seconds}
        if label_selector:
            kwargs["label_selector"] = label_selector
        try:
            for event in watcher.stream(list_for_watch, deserialize=False, **kwargs):
                yield event if isinstance(event, dict) else json.loads(event)
        except ApiException as error:
            raise ApiError.from_exception(error) from error

    # -- discovery -------------------------------------------------------------------------------

    def server_version(self) -> tuple[int, int]:
        params = self.api_client.param_serialize(
            method="GET",
            resource_path="/version",
            header_params={"Accept": JSON},
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*params, _request_timeout=10)
        info = json.loads(response.read())
        return int(info["major"]), int("".join(ch for ch in info["minor"] if ch.isdigit()))

    def has_subresource(self, kind: Kind, subresource: str) -> bool:
        path = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
        params = self.api_client.param_serialize(
            method="GET", resource_path=path, header_params={"Accept": JSON}, auth_settings=["BearerToken"]
        )
        response = self.api_client.call_api(*params, _request_timeout=10)
        resources = json.loads(response.read()).get("resources", [])
        return any(r.get("name") == f"{kind.plural}/{subresource}" for r in resources)


def _retry_after(response: Any) -> float | None:
    """Seconds to wait before trying again, when the answer says so (429 or 5xx with Retry-After)."""
    if response.status != 429 and response.status < 500:
        return None
    value = response.getheader("Retry-After")
    try:
        return min(max(float(value), 0.0), LONGEST_RETRY_AFTER) if value is not None else None
    except ValueError:
        return None


def key_of(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"
