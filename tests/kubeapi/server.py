"""The HTTP face of the double: URL routing, verbs, discovery, watch streaming and the request log.

`ApiServer.handle` turns one HTTP request into a `Reply` (a JSON body, or a stream of watch events)
and is independent of the socket layer; `serve` wraps it in a `ThreadingHTTPServer` speaking
HTTP/1.1 with keep-alive for ordinary calls and chunked transfer for watches, which is what the
`kubernetes` client (urllib3) expects.
"""

from __future__ import annotations

import base64
import binascii
import copy
import http
import json
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from . import errors
from .errors import ApiError, bad_request, method_not_allowed
from .patch import (
    APPLY_PATCH,
    APPLY_PATCH_CBOR,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_PATCH,
    json_patch,
    merge_patch,
)
from .registry import Registry, ResourceType
from .selectors import object_matcher, parse_field_selector, parse_label_selector
from .store import Obj, Store, WatchEvent
from .tokens import ServiceAccountTokens

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
_TOP_ORDER = ("apiVersion", "kind", "metadata", "spec", "status")


@dataclass
class RequestRecord:
    """One request as the double saw it; `resource` is the storage key ("pods", "statefulsets.apps")."""

    method: str
    path: str
    query: dict[str, str]
    verb: str
    resource: str = ""
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    content_type: str = ""
    field_manager: str = ""
    user_agent: str = ""
    status: int = 0
    time: float = field(default_factory=time.time)

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS


@dataclass
class Fault:
    """An injected error: requests matching all given fields answer `code` instead of being served."""

    code: int
    reason: str
    message: str
    verb: str | None = None
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    times: int | None = 1  # None: until cleared
    retry_after: int | None = None
    """Seconds the answer's Retry-After header tells the client to wait (as API priority and fairness
    does with 429 Too Many Requests)."""

    def matches(self, rec: RequestRecord) -> bool:
        return _matches(self, rec)


def _matches(selector: Fault | Hold, rec: RequestRecord) -> bool:
    """Whether a request has every field the selector names (None: any)."""
    fields = ("verb", "resource", "namespace", "name", "subresource")
    return all(getattr(selector, f) is None or getattr(rec, f) == getattr(selector, f) for f in fields)


HOLD_LIMIT_SECONDS = 60.0
"""A held reply is sent at the latest after this long, so a test that forgets to release ends."""


@dataclass
class Hold:
    """A delayed answer: the first request matching the fields is served at once (its change is stored
    and watchers see it), but its reply waits until `release` is set, as a slow network would."""

    verb: str | None = None
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    served: threading.Event = field(default_factory=threading.Event)
    """Set once the held request has been served."""
    release: threading.Event = field(default_factory=threading.Event)

    def matches(self, rec: RequestRecord) -> bool:
        return _matches(self, rec)


@dataclass
class Reply:
    status: int
    body: Any = None  # dict (JSON) or str (text)
    stream: Iterator[bytes] | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _ordered(obj: Obj) -> Obj:
    """apiVersion, kind, metadata, spec, status first, like the real server's output."""
    out = {k: obj[k] for k in _TOP_ORDER if k in obj}
    out.update((k, v) for k, v in obj.items() if k not in out)
    return out


def _for_version(obj: Obj, rt: ResourceType) -> Obj:
    # Custom resources are stored in one version and served in any ("None" conversion).
    if obj.get("apiVersion") != rt.api_version:
        obj = {**obj, "apiVersion": rt.api_version}
    return _ordered(obj)


def _success(rt: ResourceType, name: str, uid: str | None = None, code: int = 200) -> Obj:
    details: dict[str, Any] = {"name": name, "group": rt.group, "kind": rt.plural}
    if uid:
        details["uid"] = uid
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
        "code": code,
    }


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _path_value(obj: Obj, dotted: str) -> Any:
    cur: Any = obj
    for part in dotted.strip(".").split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _set_path_value(obj: Obj, dotted: str, value: Any) -> None:
    parts = dotted.strip(".").split(".")
    cur = obj
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


class ApiServer:
    """Request handling over a `Store`; thread-safe, one instance per double."""

    def __init__(
        self,
        registry: Registry,
        store: Store,
        *,
        bookmark_interval: float = 5.0,
        max_watch_seconds: float = 1800,
    ) -> None:
        self.registry = registry
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.max_watch_seconds = max_watch_seconds
        self.server_address = "127.0.0.1:0"
        self._lock = threading.Lock()
        self.requests: list[RequestRecord] = []
        self.faults: list[Fault] = []
        self.holds: list[Hold] = []
        self.internal_errors: list[str] = []  # tracebacks of bugs in the double itself
        self.tokens = ServiceAccountTokens()
        self._watch_epoch = 0
        self.stopping = False

    # -- controls -----------------------------------------------------------------------------------

    def drop_watches(self) -> None:
        """End every open watch (as an API server restart or load balancer timeout would)."""
        with self._lock:
            self._watch_epoch += 1
        self.store.wake_watchers()

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def add_hold(self, hold: Hold) -> None:
        with self._lock:
            self.holds.append(hold)

    def _take_hold(self, rec: RequestRecord) -> Hold | None:
        with self._lock:
            hold = next((h for h in self.holds if h.matches(rec)), None)
            if hold is not None:
                self.holds.remove(hold)
            return hold

    def request_log(self) -> list[RequestRecord]:
        with self._lock:
            return list(self.requests)

    def clear_request_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def _take_fault(self, rec: RequestRecord) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.matches(rec):
                    if f.times is not None:
                        f.times -= 1
                        if f.times <= 0:
                            self.faults.remove(f)
                    return f
        return None

    def _log(self, rec: RequestRecord) -> None:
        with self._lock:
            self.requests.append(rec)

    # -- entry point --------------------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> Reply:
        path = raw_path.rstrip("/") or "/"
        content_type = (
            (headers.get("Content-Type") or headers.get("content-type") or "").split(";")[0].strip()
        )
        user_agent = headers.get("User-Agent") or headers.get("user-agent") or ""
        rec = RequestRecord(
            method=method, path=path, query=query, verb="", content_type=content_type, user_agent=user_agent
        )
        try:
            reply = self._route(method, path, query, content_type, user_agent, body, rec)
        except ApiError as e:
            reply = Reply(e.code, e.status())
        except Exception:  # a bug in the double: answer 500 and keep the traceback for the test to see
            self.internal_errors.append(traceback.format_exc())
            reply = Reply(500, errors.internal(traceback.format_exc(limit=3)).status())
        rec.status = reply.status
        hold = self._take_hold(rec) if rec.verb else None
        if hold is not None:
            hold.served.set()
            hold.release.wait(HOLD_LIMIT_SECONDS)
        return reply

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        content_type: str,
        user_agent: str,
        body: bytes,
        rec: RequestRecord,
    ) -> Reply:
        parts = [p for p in path.split("/") if p]
        discovery = self._discovery(method, parts)
        if discovery is not None:
            rec.verb = "get"
            self._log(rec)
            return discovery
        info = self._resource_path(parts)
        if info is None:
            rec.verb = method.lower()
            self._log(rec)
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        group, version, namespace, resource, name, sub = info
        rt = self.registry.lookup(group, version, resource)
        rec.namespace, rec.name, rec.subresource = namespace, name, sub
        rec.resource = rt.key if rt else resource
        rec.verb = self._verb(method, name, query)
        rec.field_manager = query.get("fieldManager") or user_agent.split("/", maxsplit=1)[0]
        self._log(rec)
        fault = self._take_fault(rec)
        if fault is not None:
            wait = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return Reply(fault.code, ApiError(fault.code, fault.reason, fault.message).status(), headers=wait)
        if rt is None or (namespace and not rt.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub and (not rt.has_subresource(sub) or (sub == "resize" and not self.registry.pod_resize)):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rt.namespaced:
            namespace = ""
        return self._serve(rt, rec, namespace, name, sub, query, content_type, body)

    def _discovery(self, method: str, parts: list[str]) -> Reply | None:
        if method != "GET":
            return None
        reg = self.registry
        if parts in (["version"],):
            return Reply(200, reg.version_info())
        if parts and parts[0] in ("healthz", "livez", "readyz"):
            return Reply(200, "ok", content_type="text/plain")
        if parts == ["api"]:
            return Reply(200, reg.core_versions(self.server_address))
        if parts == ["api", "v1"]:
            return Reply(200, reg.resource_list("", "v1"))
        if parts == ["apis"]:
            return Reply(200, reg.group_list())
        if len(parts) == 2 and parts[0] == "apis":
            group = reg.group(parts[1])
            return Reply(200, group) if group else None
        if len(parts) == 3 and parts[0] == "apis":
            listing = reg.resource_list(parts[1], parts[2])
            return Reply(200, listing) if listing else None
        return None

    @staticmethod
    def _resource_path(parts: list[str]) -> tuple[str, str, str, str, str, str] | None:
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = ""
        # /namespaces/<ns>/<resource>... unless the third part is a namespace subresource.
        if rest[0] == "namespaces" and len(rest) > 2 and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            return None
        return (
            group,
            version,
            namespace,
            rest[0],
            rest[1] if len(rest) > 1 else "",
            rest[2] if len(rest) > 2 else "",
        )

    @staticmethod
    def _verb(method: str, name: str, query: dict[str, str]) -> str:
        if method == "GET":
            if name:
                return "get"
            return "watch" if _truthy(query.get("watch")) else "list"
        return {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }.get(method, method.lower())

    # -- verbs --------------------------------------------------------------------------------------

    def _serve(
        self,
        rt: ResourceType,
        rec: RequestRecord,
        namespace: str,
        name: str,
        sub: str,
        query: dict[str, str],
        content_type: str,
        body: bytes,
    ) -> Reply:
        verb = rec.verb
        dry_run = query.get("dryRun") == "All"
        manager = rec.field_manager
        if len(manager) > 128:
            raise bad_request("fieldManager must not be longer than 128 characters")
        store = self.store
        if sub in ("exec", "attach", "portforward", "proxy"):
            raise bad_request("Upgrade request required")
        if sub == "log":
            return Reply(200, "", content_type="text/plain") if verb == "get" else self._not_allowed(verb, rt)
        if sub == "scale":
            return self._scale(rt, rec, namespace, name, query, content_type, body, manager)
        if sub in ("eviction", "binding", "token"):
            if verb != "create":
                return self._not_allowed(verb, rt)
            return self._pod_action(rt, namespace, name, sub, self._json(body))
        if sub in ("finalize", "ephemeralcontainers"):
            return self._not_allowed(verb, rt)
        if verb == "get":
            return Reply(200, _for_version(store.get(rt, namespace, name), rt))
        if verb == "list":
            return self._list(rt, namespace, query)
        if verb == "watch":
            return Reply(200, stream=self._watch(rt, namespace, query))
        if rt.plural == "tokenreviews":
            return (
                self._token_review(rt, self._json(body)) if verb == "create" else self._not_allowed(verb, rt)
            )
        if verb == "create":
            if name:
                return self._not_allowed(verb, rt)
            new = store.create(rt, namespace, self._json(body), manager=manager, dry_run=dry_run)
            return Reply(201, _for_version(new, rt))
        if verb == "update":
            updated = store.update(
                rt, namespace, name, self._json(body), subresource=sub, manager=manager, dry_run=dry_run
            )
            return Reply(200, _for_version(updated, rt))
        if verb == "patch":
            patch_type = content_type
            if patch_type == APPLY_PATCH_CBOR:
                raise errors.unsupported_media_type(
                    patch_type, [JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH]
                )
            parsed = self._yaml(body) if patch_type == APPLY_PATCH else self._json(body)
            if patch_type == APPLY_PATCH:
                manager = query.get("fieldManager", "")  # apply never defaults it from the user agent
            if (query.get("force") or "false").lower() not in ("true", "false", "1", "0"):
                raise bad_request("force must be true or false")
            obj, created = store.patch(
                rt,
                namespace,
                name,
                patch_type,
                parsed,
                subresource=sub,
                manager=manager,
                force=_truthy(query.get("force")),
                dry_run=dry_run,
            )
            return Reply(201 if created else 200, _for_version(obj, rt))
        if verb == "delete":
            return self._delete(rt, namespace, name, query, body, dry_run)
        if verb == "deletecollection":
            return self._delete_collection(rt, namespace, query, body, dry_run)
        return self._not_allowed(verb, rt)

    @staticmethod
    def _not_allowed(verb: str, rt: ResourceType) -> Reply:
        e = method_not_allowed(verb, rt.kind)
        return Reply(e.code, e.status())

    @staticmethod
    def _json(body: bytes) -> Any:
        if not body:
            raise bad_request("the request body is empty")
        try:
            return json.loads(body)
        except ValueError as e:
            raise bad_request(f"error decoding the request body as JSON: {e}") from e

    @staticmethod
    def _yaml(body: bytes) -> Any:
        try:
            return yaml.safe_load(body)
        except yaml.YAMLError as e:
            raise bad_request(f"error decoding YAML: {e}") from e

    def _matcher(self, rt: ResourceType, query: dict[str, str]) -> Any:
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), rt.key, rt.selectable_fields)
        return object_matcher(labels, fields)

    def _list(self, rt: ResourceType, namespace: str, query: dict[str, str]) -> Reply:
        match = self._matcher(rt, query)
        # Not copied yet: a page of a large collection copies only what it returns.
        items, rv = self.store.snapshot(rt, namespace or None, match)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        token = query.get("continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                list_rv, after = int(state["rv"]), tuple(state["start"])
            except (ValueError, KeyError, TypeError, binascii.Error) as e:
                raise bad_request(f"continue key is not valid: {e}") from e
            if list_rv < self.store.compacted_revision:
                raise errors.expired(
                    "The provided continue parameter is too old to display a consistent list result. "
                    "You can start a new list without the continue parameter, or use the continue token "
                    "in this response to retrieve the remainder of the results."
                )
            items = [i for i in items if (i["metadata"].get("namespace", ""), i["metadata"]["name"]) > after]
            rv = list_rv
            meta["resourceVersion"] = str(list_rv)
        limit = int(query.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            state = {"rv": rv, "start": [last.get("namespace", ""), last["name"]]}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        with self.store.lock:
            items = [copy.deepcopy(i) for i in items]
        return Reply(
            200,
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": meta,
                "items": [_for_version(i, rt) for i in items],
            },
        )

    def _delete_options(self, query: dict[str, str], body: bytes) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if body:
            parsed = self._json(body)
            if isinstance(parsed, dict):
                opts.update(parsed)
        if "propagationPolicy" in query:
            opts["propagationPolicy"] = query["propagationPolicy"]
        if "gracePeriodSeconds" in query:
            opts["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
        if opts.get("orphanDependents") is True and not opts.get("propagationPolicy"):
            opts["propagationPolicy"] = "Orphan"
        return opts

    def _delete(
        self, rt: ResourceType, namespace: str, name: str, query: dict[str, str], body: bytes, dry_run: bool
    ) -> Reply:
        opts = self._delete_options(query, body)
        obj, deleted = self.store.delete(
            rt,
            namespace,
            name,
            propagation=opts.get("propagationPolicy"),
            preconditions=opts.get("preconditions"),
            grace_period=opts.get("gracePeriodSeconds"),
            dry_run=dry_run or "All" in (opts.get("dryRun") or []),
        )
        if deleted and not rt.return_deleted_object:
            return Reply(200, _success(rt, name, obj["metadata"].get("uid")))
        return Reply(200, _for_version(obj, rt))

    def _delete_collection(
        self, rt: ResourceType, namespace: str, query: dict[str, str], body: bytes, dry_run: bool
    ) -> Reply:
        opts = self._delete_options(query, body)
        items, rv = self.store.list_objects(rt, namespace or None, self._matcher(rt, query))
        gone = []
        for item in items:
            try:
                obj, _ = self.store.delete(
                    rt,
                    item["metadata"].get("namespace"),
                    item["metadata"]["name"],
                    propagation=opts.get("propagationPolicy"),
                    grace_period=opts.get("gracePeriodSeconds"),
                    dry_run=dry_run,
                )
                gone.append(_for_version(obj, rt))
            except ApiError as e:
                if e.code != 404:
                    raise
        return Reply(
            200,
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": gone,
            },
        )

    # -- subresources with their own kinds ---------------------------------------------------------------

    def _scale(
        self,
        rt: ResourceType,
        rec: RequestRecord,
        namespace: str,
        name: str,
        query: dict[str, str],
        content_type: str,
        body: bytes,
        manager: str,
    ) -> Reply:
        paths = rt.scale
        assert paths is not None
        obj = self.store.get(rt, namespace, name)

        def as_scale(o: Obj) -> Obj:
            selector = None
            if paths.label_selector:
                selector = _path_value(o, paths.label_selector)
            else:
                match = ((o.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
                selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
            status: dict[str, Any] = {"replicas": _path_value(o, paths.status_replicas) or 0}
            if selector:
                status["selector"] = selector
            meta = {
                k: o["metadata"][k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in o["metadata"]
            }
            return {
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": meta,
                "spec": {"replicas": _path_value(o, paths.spec_replicas) or 0},
                "status": status,
            }

        if rec.verb == "get":
            return Reply(200, as_scale(obj))
        if rec.verb not in ("update", "patch"):
            return self._not_allowed(rec.verb, rt)
        scale = as_scale(obj)
        if rec.verb == "update":
            new_scale = self._json(body)
        elif content_type == MERGE_PATCH:
            new_scale = merge_patch(scale, self._json(body))
        elif content_type == JSON_PATCH:
            new_scale = json_patch(scale, self._json(body))
        else:
            new_scale = merge_patch(scale, self._json(body))
        replicas = (new_scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise errors.invalid(
                "Scale",
                "autoscaling",
                name,
                [
                    (
                        "FieldValueInvalid",
                        "spec.replicas",
                        f"Invalid value: {replicas}: must be greater than or equal to 0",
                    )
                ],
            )
        new = dict(obj)
        new["metadata"] = {
            **obj["metadata"],
            "resourceVersion": (new_scale.get("metadata") or {}).get("resourceVersion")
            or obj["metadata"]["resourceVersion"],
        }
        _set_path_value(new, paths.spec_replicas, replicas)
        updated = self.store.update(rt, namespace, name, new, subresource="scale", manager=manager)
        return Reply(200, as_scale(updated))

    def _pod_action(self, rt: ResourceType, namespace: str, name: str, sub: str, body: Any) -> Reply:
        store = self.store
        if sub == "eviction":
            opts = (body or {}).get("deleteOptions") or {}
            store.delete(
                rt,
                namespace,
                name,
                grace_period=opts.get("gracePeriodSeconds"),
                preconditions=opts.get("preconditions"),
            )
            return Reply(201, _success(rt, name, code=201))
        if sub == "binding":
            target = ((body or {}).get("target") or {}).get("name")
            if not target:
                raise bad_request("a binding needs target.name")
            pod = store.get(rt, namespace, name)
            if (pod.get("spec") or {}).get("nodeName"):
                raise errors.conflict(
                    rt.plural,
                    rt.group,
                    name,
                    f"pod {name} is already assigned to node {pod['spec']['nodeName']!r}",
                )
            store.mutate(
                rt,
                namespace,
                name,
                lambda p: p["spec"].__setitem__("nodeName", target),
                subresource="binding",
                manager="kube-scheduler",
            )
            return Reply(201, _success(rt, name, code=201))
        # serviceaccounts/<name>/token: a TokenRequest, answered with a signed token.
        account = store.get(rt, namespace, name)
        spec = (body or {}).get("spec") or {}
        return Reply(
            201,
            {
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
                "status": self.tokens.request(account, spec),
            },
        )

    def _token_review(self, rt: ResourceType, body: Any) -> Reply:
        """A TokenReview is never stored: created, it comes back with its status."""
        spec = (body or {}).get("spec") or {}
        accounts = self.registry.lookup("", "v1", "serviceaccounts")
        assert accounts is not None

        def account(namespace: str, name: str) -> Obj | None:
            try:
                return self.store.get(accounts, namespace, name)
            except ApiError:
                return None

        status = self.tokens.review(spec, account)
        return Reply(
            201,
            {
                "kind": rt.kind,
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {},
                "spec": spec,
                "status": status,
            },
        )

    # -- watch --------------------------------------------------------------------------------------

    def _watch(self, rt: ResourceType, namespace: str, query: dict[str, str]) -> Iterator[bytes]:
        """Validate synchronously (bad selectors are a 400), then stream lazily."""
        match = self._matcher(rt, query)
        timeout = float(query.get("timeoutSeconds") or self.max_watch_seconds)
        bookmarks = _truthy(query.get("allowWatchBookmarks"))
        send_initial = _truthy(query.get("sendInitialEvents"))
        rv_param = query.get("resourceVersion") or ""
        if rv_param and not rv_param.isdigit():
            raise bad_request(f"invalid resource version: {rv_param!r}")
        return self._watch_stream(rt, namespace, match, rv_param, timeout, bookmarks, send_initial)

    def _watch_stream(
        self,
        rt: ResourceType,
        namespace: str,
        match: Any,
        rv_param: str,
        timeout: float,
        bookmarks: bool,
        send_initial: bool,
    ) -> Iterator[bytes]:
        def line(event_type: str, obj: Obj) -> bytes:
            return json.dumps({"type": event_type, "object": obj}).encode() + b"\n"

        def bookmark(rv: int, initial_end: bool = False) -> bytes:
            meta: dict[str, Any] = {"resourceVersion": str(rv)}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            return line("BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta})

        epoch = self._watch_epoch
        deadline = time.monotonic() + timeout
        store = self.store
        with store.lock:
            if rv_param in ("", "0") or send_initial:
                initial, last = store.snapshot(rt, namespace or None, match)
                initial = [json.loads(json.dumps(o)) for o in initial]
            else:
                initial, last = [], int(rv_param)
                if last < store.compacted_revision:
                    e = errors.expired(f"too old resource version: {last} ({store.compacted_revision + 1})")
                    yield line("ERROR", e.status())
                    return
        for obj in initial:
            yield line("ADDED", _for_version(obj, rt))
        if send_initial and bookmarks:
            yield bookmark(last, initial_end=True)
        next_bookmark = time.monotonic() + self.bookmark_interval
        while not self.stopping and epoch == self._watch_epoch:
            now = time.monotonic()
            if now >= deadline:
                return
            try:
                events = store.events_after(last)
            except ApiError as e:
                yield line("ERROR", e.status())
                return
            for ev in events:
                last = ev.rv
                out = self._translate(ev, rt, namespace, match)
                if out is not None:
                    yield line(out[0], _for_version(out[1], rt))
            if bookmarks and time.monotonic() >= next_bookmark:
                yield bookmark(last)
                next_bookmark = time.monotonic() + self.bookmark_interval
            if not events:
                wait = min(deadline - time.monotonic(), 0.5)
                if bookmarks:
                    wait = min(wait, max(next_bookmark - time.monotonic(), 0.0))
                if wait > 0:
                    store.wait_for_change(last, wait)

    @staticmethod
    def _translate(ev: WatchEvent, rt: ResourceType, namespace: str, match: Any) -> tuple[str, Obj] | None:
        if ev.key != rt.key or (namespace and ev.namespace != namespace):
            return None
        # With selectors, an object moving into or out of the selection is ADDED or DELETED for this watcher.
        now_in = match(ev.obj)
        if ev.type == "ADDED":
            return ("ADDED", ev.obj) if now_in else None
        if ev.type == "DELETED":
            return ("DELETED", ev.obj) if now_in else None
        was_in = ev.old is not None and match(ev.old)
        if was_in and now_in:
            return ("MODIFIED", ev.obj)
        if now_in:
            return ("ADDED", ev.obj)
        if was_in:
            return ("DELETED", ev.obj)
        return None


# -- HTTP ---------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: ApiServer) -> None:
        super().__init__(address, _Handler)
        self.api = api


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Without this, Nagle's algorithm and delayed ACKs add ~40 ms to every small response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log replaces stderr noise

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        reply = self.server.api.handle(method, url.path, query, dict(self.headers.items()), body)
        try:
            if reply.stream is not None:
                self._stream(reply.stream)
            else:
                self._send(reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(self, reply: Reply) -> None:
        data = reply.body.encode() if isinstance(reply.body, str) else json.dumps(reply.body).encode()
        head = (
            f"HTTP/1.1 {reply.status} {http.HTTPStatus(reply.status).phrase}\r\n"
            f"Date: {self.date_time_string()}\r\n"
            f"Content-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(data)}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
            + f"Audit-Id: {time.time_ns()}\r\n\r\n"
        )
        # Status line, headers and body in one write: one TCP segment for small replies.
        self.wfile.write(head.encode() + data)

    def _stream(self, chunks: Iterator[bytes]) -> None:
        # Watches are unbounded responses: chunked encoding, one JSON event per chunk.
        first = True
        try:
            for chunk in chunks:
                if first:
                    self._start_stream()
                    first = False
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except ApiError as e:
            if first:
                self._send(Reply(e.code, e.status()))
                return
        if first:
            self._start_stream()
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()


def serve(api: ApiServer, host: str = "127.0.0.1", port: int = 0) -> tuple[_HTTPServer, threading.Thread]:
    """Start serving on a background thread; returns the server (for its address) and the thread."""
    httpd = _HTTPServer((host, port), api)
    api.server_address = f"{host}:{httpd.server_address[1]}"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="kubeapi-http", daemon=True
    )
    thread.start()
    return httpd, thread
