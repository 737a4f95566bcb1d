"""Object storage with etcd-like resourceVersions, the write pipeline, deletion and garbage collection.

One global counter numbers every write (as etcd's revision does), every write appends a watch event
to a bounded history, and a `threading.Condition` wakes watchers. All reads hand out deep copies and
stored dicts are never mutated in place (each write stores a new dict), so watch events can share
snapshots safely.

The write pipeline follows the real registry: type check, subresource projection (`/status` only
touches `.status`, the main resource never does, `/resize` only container resources), server-owned
metadata kept, optimistic concurrency on resourceVersion, defaulting and validation, generation bumped
on spec changes, managed fields recorded, no-op writes not stored at all (no new resourceVersion, no
event). Deletion honours finalizers (deletionTimestamp first), propagation policies and ownerReference
garbage collection, namespace termination and CRD cleanup.
"""

from __future__ import annotations

import copy
import datetime
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import strategies
from .apply import record_update, server_side_apply
from .errors import (
    STALE_OBJECT,
    ApiError,
    already_exists,
    bad_request,
    conflict,
    expired,
    internal,
    invalid,
    not_found,
    unsupported_media_type,
)
from .patch import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_PATCH,
    json_patch,
    merge_patch,
    strategic_merge,
)
from .registry import Registry, ResourceType
from .schema import TypeSchema
from .selectors import Matcher

Obj = dict[str, Any]

# Metadata only the server sets; a client's values for these are ignored on update.
_SERVER_METADATA = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "name",
    "namespace",
    "selfLink",
)
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what apiserver's generateName suffix draws from
FOREGROUND = "foregroundDeletion"
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"
CRD_KEY = "customresourcedefinitions.apiextensions.k8s.io"


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    key: str  # storage key of the resource ("pods", "statefulsets.apps")
    namespace: str
    obj: Obj  # state after the event (for DELETED: the last state, carrying the deletion's resourceVersion)
    old: Obj | None  # state before, for MODIFIED and DELETED


@dataclass
class Changes:
    """What a stretch of watch history touched: (namespace, name) by storage key, and any deletion."""

    objects: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    deleted: bool = False

    def of(self, key: str) -> set[tuple[str, str]]:
        return self.objects.get(key, set())

    def any(self, *keys: str) -> bool:
        return any(key in self.objects for key in keys)


def now_rfc3339(offset_seconds: float = 0.0) -> str:
    t = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ns_of(rt: ResourceType, namespace: str | None) -> str:
    return (namespace or "") if rt.namespaced else ""


def _strip_for_compare(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    meta = out.get("metadata") or {}
    meta.pop("resourceVersion", None)
    for entry in meta.get("managedFields") or []:
        entry.pop("time", None)  # a timestamp alone does not make a write, as on the real server
    return out


class Store:
    """Thread-safe storage of all objects; every method is atomic under one lock."""

    def __init__(self, registry: Registry, *, history_size: int = 1000) -> None:
        self.registry = registry
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._rv = 0
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self._deleting: dict[tuple[str, str, str], None] = {}
        """Objects marked for deletion (deletionTimestamp): all `_settle` has to look at."""
        self._history: deque[WatchEvent] = deque()
        self.history_size = history_size
        self._compacted = 0
        self._ip_next = 10
        self._settling = False
        # Set by the kubelet: bound pods then terminate gracefully (deletionTimestamp first).
        self.graceful_pod_deletion = False
        self.ctx = strategies.Context(now=now_rfc3339, allocate_ip=self._allocate_ip)
        self._schemas: dict[tuple[str, str], TypeSchema] = {}
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(
                registry.by_key("namespaces"), "", {"metadata": {"name": name}}, manager="kube-apiserver"
            )

    # -- basics -------------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    @property
    def compacted_revision(self) -> int:
        with self.lock:
            return self._compacted

    def _allocate_ip(self) -> str:
        self._ip_next += 1
        return f"10.96.{self._ip_next // 250}.{self._ip_next % 250 + 1}"

    def schema(self, rt: ResourceType) -> TypeSchema:
        cache_key = (rt.key, rt.version)
        if cache_key not in self._schemas or self._schemas[cache_key].openapi is not rt.schema:
            self._schemas[cache_key] = TypeSchema(rt.key, rt.schema, rt.custom)
        return self._schemas[cache_key]

    def _bucket(self, key: str) -> dict[tuple[str, str], Obj]:
        return self._objects.setdefault(key, {})

    def _record(self, event: WatchEvent) -> None:
        self._history.append(event)
        while len(self._history) > self.history_size:
            self._compacted = self._history.popleft().rv
        self.changed.notify_all()

    def _put(self, rt: ResourceType, obj: Obj, old: Obj | None) -> Obj:
        self._rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        ns, name = meta.get("namespace", ""), meta["name"]
        self._bucket(rt.key)[(ns, name)] = obj
        if meta.get("deletionTimestamp"):
            self._deleting[(rt.key, ns, name)] = None
        self._record(WatchEvent(self._rv, "MODIFIED" if old else "ADDED", rt.key, ns, obj, old))
        return obj

    def _remove(self, rt: ResourceType, obj: Obj) -> Obj:
        self._rv += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        ns, name = obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
        self._bucket(rt.key).pop((ns, name), None)
        self._deleting.pop((rt.key, ns, name), None)
        self._record(WatchEvent(self._rv, "DELETED", rt.key, ns, gone, obj))
        return gone

    def _peek(self, key: str, namespace: str, name: str) -> Obj | None:
        return self._objects.get(key, {}).get((namespace, name))

    def _current(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self._peek(rt.key, _ns_of(rt, namespace), name)
        if obj is None:
            raise not_found(rt.plural, rt.group, name)
        return obj

    def _rt_for_key(self, key: str) -> ResourceType | None:
        versions = self.registry.versions_of(key)
        return versions[0] if versions else None

    def _iter_all(self) -> Iterator[tuple[str, Obj]]:
        for key, bucket in list(self._objects.items()):
            for obj in list(bucket.values()):
                yield key, obj

    # -- reads --------------------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        with self.lock:
            return copy.deepcopy(self._current(rt, namespace, name))

    def try_get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj | None:
        with self.lock:
            obj = self._peek(rt.key, _ns_of(rt, namespace), name)
            return copy.deepcopy(obj) if obj is not None else None

    def list_objects(
        self, rt: ResourceType, namespace: str | None = None, match: Matcher | None = None
    ) -> tuple[list[Obj], int]:
        """Objects sorted by (namespace, name), and the resourceVersion the list is consistent at."""
        with self.lock:
            items = [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self._objects.get(rt.key, {}).items())
                if (not namespace or ns == namespace) and (match is None or match(obj))
            ]
            return items, self._rv

    def snapshot(
        self, rt: ResourceType, namespace: str | None, match: Matcher | None
    ) -> tuple[list[Obj], int]:
        """Like `list` but without copying (for watch start); callers must not mutate the result."""
        with self.lock:
            items = [
                obj
                for (ns, _), obj in sorted(self._objects.get(rt.key, {}).items())
                if (not namespace or ns == namespace) and (match is None or match(obj))
            ]
            return items, self._rv

    # -- watch history ------------------------------------------------------------------------------

    def events_after(self, rv: int) -> list[WatchEvent]:
        """Events newer than `rv`; 410 Expired when some of them were compacted away."""
        with self.lock:
            if rv < self._compacted:
                raise expired(f"too old resource version: {rv} ({self._compacted + 1})")
            out: list[WatchEvent] = []
            for event in reversed(self._history):
                if event.rv <= rv:
                    break
                out.append(event)
            out.reverse()
            return out

    def wait_for_change(self, rv: int, timeout: float) -> None:
        with self.changed:
            if self._rv <= rv:
                self.changed.wait(timeout)

    def compact(self) -> int:
        """Forget all watch history, as an etcd compaction at the current revision does."""
        with self.lock:
            self._compacted = self._rv
            self._history.clear()
            self.changed.notify_all()
            return self._rv

    def wake_watchers(self) -> None:
        with self.changed:
            self.changed.notify_all()

    # -- create -------------------------------------------------------------------------------------

    def _check_type(self, rt: ResourceType, obj: Obj) -> None:
        if not isinstance(obj, dict):
            raise bad_request("the object provided is not a JSON object")
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        group = api_version.rpartition("/")[0] if isinstance(api_version, str) else ""
        if kind and kind != rt.kind:
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        if api_version and group != rt.group:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({rt.api_version})"
            )
        if not isinstance(obj.get("metadata", {}), dict):
            raise bad_request("metadata must be an object")

    def _check_namespace(self, rt: ResourceType, namespace: str, name: str) -> None:
        ns = self._peek("namespaces", "", namespace)
        if ns is None:
            raise not_found("namespaces", "", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f'{rt.plural}{"." + rt.group if rt.group else ""} "{name}" is forbidden: '
                "unable to create new content "
                f"in namespace {namespace} because it is being terminated",
                {"name": name, "group": rt.group, "kind": rt.plural},
            )

    def _scope(self, rt: ResourceType, subresource: str) -> str:
        if subresource == "status":
            return "status"
        return "main" if rt.has_status else "all"

    def create(
        self, rt: ResourceType, namespace: str | None, body: Obj, *, manager: str, dry_run: bool = False
    ) -> Obj:
        with self.lock:
            self._check_type(rt, body)
            return self._create(
                rt, namespace, copy.deepcopy(body), manager=manager, dry_run=dry_run, managed=False
            )

    def _create(
        self, rt: ResourceType, namespace: str | None, obj: Obj, *, manager: str, dry_run: bool, managed: bool
    ) -> Obj:
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj.setdefault("metadata", {})
        if meta.get("resourceVersion"):
            raise internal("resourceVersion should not be set on objects to be created")
        ns = ""
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            ns = namespace or ""
            if not ns:
                raise bad_request("a namespace must be given for a namespaced resource")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(
                    rt.kind,
                    rt.group,
                    "",
                    [
                        (
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
            for _ in range(100):
                candidate = meta["generateName"] + "".join(random.choice(_NAME_CHARS) for _ in range(5))
                if self._peek(rt.key, ns, candidate) is None:
                    meta["name"] = candidate
                    break
        name = meta["name"]
        if rt.namespaced:
            self._check_namespace(rt, ns, name)
        if self._peek(rt.key, ns, name) is not None:
            raise already_exists(rt.plural, rt.group, name)
        for f in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
        ):
            meta.pop(f, None)
        if not managed:
            meta.pop("managedFields", None)
        if rt.has_status:
            obj.pop("status", None)  # status is never set on create (the strategy may initialise it)
        obj = strategies.prepare(rt, obj, None, self.ctx)
        strategies.validate(rt, obj, None, "")
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        if not managed:
            record_update(
                None,
                obj,
                manager=manager,
                subresource="",
                scope=self._scope(rt, ""),
                api_version=rt.api_version,
                schema=self.schema(rt),
                now=now_rfc3339(),
            )
        if dry_run:
            return copy.deepcopy(obj)
        self._put(rt, obj, None)
        if rt.key == CRD_KEY:
            self.registry.register_crd(obj)
        return copy.deepcopy(obj)

    def restore(self, rt: ResourceType, obj: Obj) -> None:
        """Put back an object as it was stored, as an etcd restore does: its uid, generation, status
        and managedFields are kept, and it gets a new resourceVersion. The object is taken, not copied."""
        with self.lock:
            meta = obj["metadata"]
            ns, name = _ns_of(rt, meta.get("namespace")), meta["name"]
            if rt.namespaced:
                self._check_namespace(rt, ns, name)
            if self._peek(rt.key, ns, name) is not None:
                raise already_exists(rt.plural, rt.group, name)
            if not meta.get("uid"):
                raise invalid(
                    rt.kind, rt.group, name, [("FieldValueRequired", "metadata.uid", "Required value")]
                )
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            self._put(rt, obj, None)

    # -- update and patch ---------------------------------------------------------------------------

    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Obj,
        *,
        subresource: str = "",
        manager: str,
        dry_run: bool = False,
    ) -> Obj:
        with self.lock:
            self._check_type(rt, body)
            old = self._current(rt, namespace, name)
            meta = body.get("metadata") or {}
            if meta.get("name") and meta["name"] != name:
                raise bad_request(
                    f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
                )
            if not meta.get("resourceVersion") and rt.custom:
                raise invalid(
                    rt.kind,
                    rt.group,
                    name,
                    [
                        (
                            "FieldValueInvalid",
                            "metadata.resourceVersion",
                            "Invalid value: 0x0: must be specified for an update",
                        )
                    ],
                )
            return self._commit(
                rt, old, copy.deepcopy(body), subresource=subresource, manager=manager, dry_run=dry_run
            )

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        patch_type: str,
        body: Any,
        *,
        subresource: str = "",
        manager: str,
        force: bool = False,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Returns (object, created); only apply patches create."""
        with self.lock:
            old = self._peek(rt.key, _ns_of(rt, namespace), name)
            if patch_type == APPLY_PATCH:
                return self._apply(
                    rt,
                    namespace,
                    name,
                    old,
                    body,
                    subresource=subresource,
                    manager=manager,
                    force=force,
                    dry_run=dry_run,
                )
            if old is None:
                raise not_found(rt.plural, rt.group, name)
            if patch_type == MERGE_PATCH:
                if not isinstance(body, dict):
                    raise bad_request("a merge patch must be a JSON object")
                new = merge_patch(old, body)
            elif patch_type == JSON_PATCH:
                new = json_patch(old, body)
            elif patch_type == STRATEGIC_PATCH and not rt.custom:
                if not isinstance(body, dict):
                    raise bad_request("a strategic merge patch must be a JSON object")
                new = strategic_merge(old, body, self.schema(rt))
            else:
                accepted = [JSON_PATCH, MERGE_PATCH, APPLY_PATCH] + ([] if rt.custom else [STRATEGIC_PATCH])
                raise unsupported_media_type(patch_type, accepted)
            if not isinstance(new, dict):
                raise bad_request("the patch did not produce an object")
            return self._commit(
                rt, old, new, subresource=subresource, manager=manager, dry_run=dry_run
            ), False

    def _apply(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        old: Obj | None,
        config: Any,
        *,
        subresource: str,
        manager: str,
        force: bool,
        dry_run: bool,
    ) -> tuple[Obj, bool]:
        if not manager:
            raise bad_request("PATCH /apply requires fieldManager to be set")
        if not isinstance(config, dict):
            raise bad_request("the apply configuration must be an object")
        if not config.get("apiVersion") or not config.get("kind"):
            raise bad_request(
                f"invalid object type: {config.get('apiVersion', '')}, Kind={config.get('kind', '')}"
            )
        self._check_type(rt, config)
        meta = config.get("metadata") or {}
        if meta.get("name") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        scope = self._scope(rt, subresource)

        def run(live: Obj | None) -> Obj:
            return server_side_apply(
                live,
                config,
                manager=manager,
                force=force,
                subresource=subresource,
                scope=scope,
                api_version=rt.api_version,
                schema=self.schema(rt),
                now=now_rfc3339(),
            )

        if old is None:
            if subresource:
                raise not_found(rt.plural, rt.group, name)
            result = run(None)
            result["apiVersion"], result["kind"] = rt.api_version, rt.kind
            result.setdefault("metadata", {})["name"] = name
            return self._create(rt, namespace, result, manager=manager, dry_run=dry_run, managed=True), True
        if meta.get("resourceVersion") and meta["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise conflict(rt.plural, rt.group, name, STALE_OBJECT)
        result = run(old)
        return self._commit(
            rt, old, result, subresource=subresource, manager=manager, dry_run=dry_run, applied=True
        ), False

    def _project(self, rt: ResourceType, old: Obj, new: Obj, subresource: str) -> Obj:
        if subresource == "status":
            out = copy.deepcopy(old)
            if "status" in new:
                out["status"] = new["status"]
            else:
                out.pop("status", None)
            if "managedFields" in (new.get("metadata") or {}):
                out["metadata"]["managedFields"] = new["metadata"]["managedFields"]
            return out
        if subresource == "resize":
            return strategies.resize_projection(old, new)
        if rt.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        return new

    def _spec_changed(self, rt: ResourceType, old: Obj, new: Obj) -> bool:
        ignored = {"metadata", "apiVersion", "kind"} | ({"status"} if rt.has_status else set())
        return {k: v for k, v in old.items() if k not in ignored} != {
            k: v for k, v in new.items() if k not in ignored
        }

    def _commit(
        self,
        rt: ResourceType,
        old: Obj,
        new: Obj,
        *,
        subresource: str,
        manager: str,
        dry_run: bool,
        applied: bool = False,
    ) -> Obj:
        old_meta = old["metadata"]
        name = old_meta["name"]
        rv = (new.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old_meta["resourceVersion"]:
            raise conflict(rt.plural, rt.group, name, STALE_OBJECT)
        if not isinstance(new.get("metadata", {}), dict):
            raise bad_request("metadata must be an object")
        new = self._project(rt, old, new, subresource)
        meta = new.setdefault("metadata", {})
        for f in _SERVER_METADATA:
            if f in old_meta:
                meta[f] = old_meta[f]
            else:
                meta.pop(f, None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise invalid(
                    rt.kind,
                    rt.group,
                    name,
                    [
                        (
                            "FieldValueForbidden",
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being deleted, "
                            f"found new finalizers {sorted(added)}",
                        )
                    ],
                )
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)
        new = strategies.prepare(rt, new, old, self.ctx)
        strategies.validate(rt, new, old, subresource)
        meta = new["metadata"]
        # Binding a pod to a node (spec.nodeName) is the scheduler's, not a spec change by a user.
        if subresource != "binding" and self._spec_changed(rt, old, new):
            meta["generation"] = int(old_meta.get("generation") or 0) + 1
        if not applied:
            record_update(
                old,
                new,
                manager=manager,
                subresource=subresource if subresource != "binding" else "",
                scope=self._scope(rt, subresource),
                api_version=rt.api_version,
                schema=self.schema(rt),
                now=now_rfc3339(),
            )
        if _strip_for_compare(old) == _strip_for_compare(new):
            return copy.deepcopy(old)  # a no-op write: nothing stored, no new resourceVersion, no event
        if dry_run:
            return copy.deepcopy(new)
        if self._finished_deleting(rt, new):
            gone = self._remove_and_collect(rt, old)
            self._settle()
            return gone
        self._put(rt, new, old)
        if rt.key == CRD_KEY:
            self.registry.register_crd(new)
        self._settle()
        return copy.deepcopy(new)

    def _finished_deleting(self, rt: ResourceType, obj: Obj) -> bool:
        meta = obj["metadata"]
        return (
            bool(meta.get("deletionTimestamp"))
            and not meta.get("finalizers")
            and not meta.get("deletionGracePeriodSeconds")
            and rt.key != "namespaces"
        )

    def mutate(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        change: Callable[[Obj], None],
        *,
        subresource: str = "",
        manager: str,
    ) -> Obj | None:
        """Read-modify-write for in-process controllers; None when the object does not exist."""
        with self.lock:
            old = self._peek(rt.key, _ns_of(rt, namespace), name)
            if old is None:
                return None
            new = copy.deepcopy(old)
            change(new)
            if new == old:
                return copy.deepcopy(old)  # nothing to write: a no-op write stores nothing either
            return self._commit(rt, old, new, subresource=subresource, manager=manager, dry_run=False)

    # -- delete -------------------------------------------------------------------------------------

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: dict[str, Any] | None = None,
        grace_period: int | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Returns (object, deleted_now). With finalizers the object stays, with a deletionTimestamp."""
        if propagation not in (None, "Background", "Foreground", "Orphan"):
            raise bad_request(f"propagationPolicy {propagation!r} is not supported")
        with self.lock:
            obj = self._current(rt, namespace, name)
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
                raise conflict(
                    rt.plural,
                    rt.group,
                    name,
                    f"Precondition failed: UID in precondition: {pre['uid']}, "
                    f"UID in object meta: {obj['metadata']['uid']}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"]["resourceVersion"]:
                raise conflict(
                    rt.plural,
                    rt.group,
                    name,
                    f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                    f"ResourceVersion in object meta: {obj['metadata']['resourceVersion']}",
                )
            if dry_run:
                return copy.deepcopy(obj), False
            result = self._delete(rt, obj, propagation or "Background", grace_period)
            self._settle()
            still = self._peek(rt.key, obj["metadata"].get("namespace", ""), name)
            return (copy.deepcopy(still), False) if still is not None else (result, True)

    def _delete(self, rt: ResourceType, obj: Obj, policy: str, grace_period: int | None) -> Obj:
        meta = obj["metadata"]
        if rt.key == "namespaces":
            return self._delete_namespace(rt, obj)
        if meta.get("deletionTimestamp"):
            if grace_period == 0 and not meta.get("finalizers"):
                return self._remove_and_collect(rt, obj)  # forced deletion of a terminating pod
            return copy.deepcopy(obj)
        if policy == "Orphan":
            self._orphan_dependents(obj)
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and self._dependents(meta["uid"]) and FOREGROUND not in finalizers:
            finalizers.append(FOREGROUND)
        grace = 0
        if rt.key == "pods" and self.graceful_pod_deletion and (obj.get("spec") or {}).get("nodeName"):
            phase = (obj.get("status") or {}).get("phase")
            if grace_period != 0 and phase not in ("Succeeded", "Failed"):
                grace = (
                    grace_period
                    if grace_period is not None
                    else int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
                )
        if rt.key == CRD_KEY and CRD_CLEANUP in finalizers:
            for dep_rt in self.registry.versions_of(meta["name"])[:1]:
                for inst in list(self._objects.get(dep_rt.key, {}).values()):
                    self._delete(dep_rt, inst, "Background", None)
        if finalizers or grace:
            new = copy.deepcopy(obj)
            nm = new["metadata"]
            if finalizers:
                nm["finalizers"] = finalizers
            nm["deletionTimestamp"] = now_rfc3339(grace)
            nm["deletionGracePeriodSeconds"] = grace
            nm["generation"] = int(nm.get("generation") or 0) + 1  # as the real BeforeDelete does
            self._put(rt, new, obj)
            if FOREGROUND in finalizers:
                for dep_key, dep in self._dependents(meta["uid"]):
                    child_rt = self._rt_for_key(dep_key)
                    if child_rt is not None:
                        self._delete(child_rt, dep, "Foreground", None)
            return copy.deepcopy(new)
        return self._remove_and_collect(rt, obj)

    def _remove_and_collect(self, rt: ResourceType, obj: Obj) -> Obj:
        """Remove an object now, then garbage-collect its dependents (background propagation)."""
        gone = self._remove(rt, obj)
        if rt.key == CRD_KEY:
            self.registry.unregister_crd(obj["metadata"]["name"])
            self._objects.pop(obj["metadata"]["name"], None)
        uid = obj["metadata"]["uid"]
        for dep_key, dep in self._dependents(uid):
            dep_rt = self._rt_for_key(dep_key)
            if dep_rt is None:
                continue
            others = [
                r
                for r in dep["metadata"].get("ownerReferences") or []
                if r.get("uid") != uid and self._owner_exists(r["uid"])
            ]
            if others:
                self._drop_owner_refs(dep_rt, dep, {uid})
            else:
                self._delete(dep_rt, dep, "Background", None)
        return gone

    def _dependents(self, uid: str) -> list[tuple[str, Obj]]:
        return [
            (key, obj)
            for key, obj in self._iter_all()
            if any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or [])
        ]

    def _owner_exists(self, uid: str) -> bool:
        return any(obj["metadata"].get("uid") == uid for _, obj in self._iter_all())

    def _drop_owner_refs(self, rt: ResourceType, obj: Obj, uids: set[str]) -> None:
        current = self._peek(rt.key, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if current is None:
            return
        new = copy.deepcopy(current)
        refs = [r for r in new["metadata"].get("ownerReferences") or [] if r.get("uid") not in uids]
        if refs:
            new["metadata"]["ownerReferences"] = refs
        else:
            new["metadata"].pop("ownerReferences", None)
        self._commit(rt, current, new, subresource="", manager="kube-controller-manager", dry_run=False)

    def _orphan_dependents(self, owner: Obj) -> None:
        uid = owner["metadata"]["uid"]
        for dep_key, dep in self._dependents(uid):
            dep_rt = self._rt_for_key(dep_key)
            if dep_rt is not None:
                self._drop_owner_refs(dep_rt, dep, {uid})

    def _delete_namespace(self, rt: ResourceType, ns_obj: Obj) -> Obj:
        name = ns_obj["metadata"]["name"]
        if not ns_obj["metadata"].get("deletionTimestamp"):
            new = copy.deepcopy(ns_obj)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["status"] = {"phase": "Terminating"}
            self._put(rt, new, ns_obj)
        for key, obj in self._iter_all():
            if obj["metadata"].get("namespace") == name and not obj["metadata"].get("deletionTimestamp"):
                obj_rt = self._rt_for_key(key)
                if obj_rt is not None and self._peek(key, name, obj["metadata"]["name"]) is not None:
                    self._delete(obj_rt, obj, "Background", None)
        current = self._peek("namespaces", "", name)
        return copy.deepcopy(current if current is not None else ns_obj)

    def _settle(self) -> None:
        """Finish deletions that were waiting on others: namespaces, CRDs, foreground owners."""
        if self._settling:
            return
        self._settling = True
        try:
            progress = True
            while progress:
                progress = False
                for key, ns, name in list(self._deleting):
                    obj = self._peek(key, ns, name)
                    if obj is None or not obj["metadata"].get("deletionTimestamp"):
                        self._deleting.pop((key, ns, name), None)
                        continue
                    meta = obj["metadata"]
                    rt = self._rt_for_key(key)
                    if rt is None or self._peek(key, meta.get("namespace", ""), meta["name"]) is not obj:
                        continue
                    if key == "namespaces":
                        if not any(
                            o["metadata"].get("namespace") == meta["name"] for _, o in self._iter_all()
                        ):
                            self._remove(rt, obj)
                            progress = True
                        continue
                    drop: set[str] = set()
                    if CRD_CLEANUP in (meta.get("finalizers") or []) and not self._objects.get(meta["name"]):
                        drop.add(CRD_CLEANUP)
                    if FOREGROUND in (meta.get("finalizers") or []):
                        blocking = [d for _, d in self._dependents(meta["uid"])]
                        if not blocking:
                            drop.add(FOREGROUND)
                    if drop:
                        new = copy.deepcopy(obj)
                        new["metadata"]["finalizers"] = [
                            f for f in meta.get("finalizers") or [] if f not in drop
                        ]
                        self._commit(
                            rt, obj, new, subresource="", manager="kube-controller-manager", dry_run=False
                        )
                        progress = True
        finally:
            self._settling = False

    # -- helpers for the in-process controllers ----------------------------------------------------

    def objects(self, key: str) -> list[Obj]:
        """Deep copies of every stored object of a storage key."""
        with self.lock:
            return [copy.deepcopy(o) for _, o in sorted(self._objects.get(key, {}).items())]

    def stored(self, key: str) -> list[Obj]:
        """Every stored object of a storage key, not copied: for reading only (a write stores a new
        dict, so what is handed out never changes under the reader)."""
        with self.lock:
            return [o for _, o in sorted(self._objects.get(key, {}).items())]

    def changes_after(self, rv: int) -> tuple[Changes | None, int]:
        """What was written after `rv` (None: too long ago to tell), and the resourceVersion now."""
        with self.lock:
            now = self._rv
            try:
                events = self.events_after(rv)
            except ApiError:
                return None, now
            changes = Changes()
            for event in events:
                changes.objects.setdefault(event.key, set()).add(
                    (event.namespace, event.obj["metadata"]["name"])
                )
                changes.deleted = changes.deleted or event.type == "DELETED"
            return changes, now

    def dangling(self) -> list[tuple[str, Obj]]:
        """Objects all of whose owners are gone: what the garbage collector deletes."""
        with self.lock:
            uids = {obj["metadata"].get("uid") for _, obj in self._iter_all()}
            return [
                (key, copy.deepcopy(obj))
                for key, obj in self._iter_all()
                if obj["metadata"].get("ownerReferences")
                and not obj["metadata"].get("deletionTimestamp")
                and all(r.get("uid") not in uids for r in obj["metadata"]["ownerReferences"])
            ]
