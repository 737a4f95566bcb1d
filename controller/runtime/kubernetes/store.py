"""ServerlessDatabase objects through the API server: reads from the informer's cache, writes as patches.

Status goes to the status subresource in one write per reconcile (PUT with the resourceVersion read,
retried from a fresh read on 409). Events are core/v1 Events; a repeat of the last one bumps its
count, as client-go's recorder does. Finalizer changes carry a resourceVersion precondition.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog

from controller.api import codec, types, units
from controller.runtime.base import EventType, invalid_status
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes.informer import Informer

log = structlog.get_logger("store.kubernetes")
CONFLICT_RETRIES = 5
READ_OWN_WRITE_SECONDS = 2.0
LIST_YIELD_EVERY = 50
"""How long a read waits for the watch to bring the operator's own last write, before asking the server."""
COMPONENT = "serverless-db-operator"
_AT_REST = frozenset({types.Phase.PAUSED, types.Phase.PARKED})


class KubeStore:
    def __init__(
        self,
        kube: kc.Kube,
        databases: Informer,
        *,
        wakes: Informer | None = None,
        clock: Callable[[], datetime] = units.now_utc,
        instance: str = "",
    ) -> None:
        """`wakes`: the WakeRequests the operator answers (the activator, which only asks, has none)."""
        self.kube = kube
        self.databases = databases
        self.wakes = wakes
        self.clock = clock
        self.instance = instance
        self._pending: dict[str, None] = {}
        """Keys told of and not yet handed on, oldest first: a key told of again meanwhile is handed
        on once, as it is then (a wake's pod, StatefulSet and EndpointSlice events are one look)."""
        self._told = asyncio.Event()
        self._decoded: dict[str, tuple[str, str, types.ServerlessDatabase]] = {}
        """Running databases as last decoded: (resourceVersion, wake request, object)."""
        self._events: dict[str, tuple[str, str, str, str, int, datetime]] = {}
        """Per database: the last event's (name, type, reason, message, count, first time)."""

    def notify(self, key: str) -> None:
        """Something about this database changed (its object, or one of its objects)."""
        self._pending[key] = None
        self._told.set()

    async def changes(self) -> AsyncIterator[tuple[str, types.ServerlessDatabase | None]]:
        while True:
            while not self._pending:
                self._told.clear()
                await self._told.wait()
            key = next(iter(self._pending))
            del self._pending[key]
            raw = self.databases.get(*types.split_key(key))
            if raw is None:
                self._decoded.pop(key, None)
            try:
                yield key, self._decode(raw, self._newest_wake(key)) if raw is not None else None
            except ValueError:
                yield key, None  # reported when that object is reconciled

    async def list(self) -> Sequence[types.ServerlessDatabase]:
        await self.databases.synced.wait()
        newest = self._newest_wakes()
        out = []
        for index, raw in enumerate(self.databases.values()):
            if index % LIST_YIELD_EVERY == 0:
                await asyncio.sleep(0)  # ten thousand decodes in one go would hold up a wake meanwhile
            try:
                out.append(self._decode(raw, newest.get(kc.key_of(raw), "")))
            except ValueError:
                continue  # reported when that object is reconciled
        return out

    async def all_keys(self) -> Sequence[str]:
        await self.databases.synced.wait()
        return self.databases.keys()

    async def get(self, key: str) -> types.ServerlessDatabase | None:
        """The object as the cache holds it, once the cache holds the operator's own last write of it.

        Should the watch lag too long, the server is asked: a pass must never decide from a status
        older than the one it wrote last.
        """
        await self.databases.synced.wait()
        namespace, name = types.split_key(key)
        if await self.databases.settled(key, timeout=READ_OWN_WRITE_SECONDS):
            raw = self.databases.get(namespace, name)
        else:
            log.info("the watch lags behind our own write; reading the object from the server", database=key)
            raw = await asyncio.to_thread(self.kube.get, kc.DATABASES, namespace, name)
        if raw is None:
            self._decoded.pop(key, None)
            return None
        return self._decode(raw, self._newest_wake(key))

    def _decode(self, raw: dict[str, Any], wake_request: str) -> types.ServerlessDatabase:
        """The typed object; a running database's is kept for the version it was decoded from, since
        each of its ticks reads it again (a tenth of ten thousand, every 2 s), and the reconciler
        keeps the running ones anyway. A resting database's is not kept: it is read rarely."""
        key = kc.key_of(raw)
        version = str(raw["metadata"].get("resourceVersion", ""))
        kept = self._decoded.get(key)
        if kept is not None and kept[0] == version and kept[1] == wake_request:
            return kept[2]
        # A wake is asked for only with a WakeRequest: an annotation, which any spec author can set, is not.
        db = replace(codec.decode(raw), wake_request=wake_request)
        if db.status.phase in _AT_REST:
            self._decoded.pop(key, None)
        else:
            self._decoded[key] = (version, wake_request, db)
        return db

    async def mark_invalid(self, key: str, message: str, now: datetime) -> None:
        namespace, name = types.split_key(key)
        raw = self.databases.get(namespace, name)
        if raw is None:
            return
        status = invalid_status(codec.decode_status(raw.get("status")), message, now)
        await self._put_status(namespace, name, raw["metadata"].get("resourceVersion", ""), status)

    async def write_status(self, db: types.ServerlessDatabase, status: types.DatabaseStatus) -> None:
        if status == db.status:
            return
        # The pass may have written the object itself since it read it (a finalizer): that is no
        # conflict, so the write goes against our own last version.
        await self.databases.settled(db.key, timeout=READ_OWN_WRITE_SECONDS)
        version = self.databases.holds_own_write(db.key) or db.metadata.resource_version
        await self._put_status(db.metadata.namespace, db.metadata.name, version, status)
        if status.wake_request and status.wake_request != db.status.wake_request:
            await self._forget_answered(db.key, status.wake_request)

    async def _put_status(
        self, namespace: str, name: str, version: str, status: types.DatabaseStatus
    ) -> None:
        body = codec.encode_status(status)

        def put(current: dict[str, Any]) -> dict[str, Any]:
            obj = copy.deepcopy(current)
            obj["status"] = body
            written: dict[str, Any] = self.kube.replace(kc.DATABASES, obj, subresource="status")
            return written

        first = self.databases.get(namespace, name)
        if first is not None and version:  # the version the status was computed from
            first = {**first, "metadata": {**first["metadata"], "resourceVersion": version}}
        await self._write_read_again(namespace, name, put, first=first, what="status")

    async def _write_read_again(
        self,
        namespace: str,
        name: str,
        write: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        first: dict[str, Any] | None,
        what: str,
    ) -> None:
        """Write against the object as read; on 409 read it again and retry. A deleted one needs nothing."""
        current = first
        for _ in range(CONFLICT_RETRIES):
            if current is None:
                return
            try:
                written = await asyncio.to_thread(write, current)
            except kc.ApiError as error:
                if error.not_found:
                    return
                if not error.conflict:
                    raise
                current = await asyncio.to_thread(self.kube.get, kc.DATABASES, namespace, name)
                continue
            self.databases.expect(f"{namespace}/{name}", written["metadata"].get("resourceVersion"))
            return
        raise kc.ApiError(409, "Conflict", f"the {what} of {namespace}/{name} kept changing")

    async def record_event(
        self, db: types.ServerlessDatabase, type: EventType, reason: str, message: str
    ) -> None:
        now = self.clock()
        last = self._events.get(db.key)
        try:
            if last is not None and last[1:4] == (type.value, reason, message):
                name, _, _, _, count, first = last
                await asyncio.to_thread(
                    self.kube.patch,
                    kc.EVENTS,
                    db.metadata.namespace,
                    name,
                    {"count": count + 1, "lastTimestamp": _second(now)},
                )
                self._events[db.key] = (name, type.value, reason, message, count + 1, first)
                return
            name = f"{db.metadata.name}.{uuid.uuid4().hex[:16]}"
            await asyncio.to_thread(
                self.kube.create, kc.EVENTS, _event(db, name, type, reason, message, now, self.instance)
            )
            self._events[db.key] = (name, type.value, reason, message, 1, now)
        except kc.ApiError as error:  # an event is worth a log line, never a failed reconcile
            log.warning("could not record an event", database=db.key, reason=reason, error=str(error))

    async def request_wake(self, key: str) -> str:
        """A WakeRequest for the database (the activator's one write); its name is what status answers."""
        namespace, name = types.split_key(key)
        request = {
            "apiVersion": types.API_VERSION,
            "kind": types.WAKE_REQUEST_KIND,
            "metadata": {"generateName": f"{name}-", "namespace": namespace},
            "spec": {"database": name},
        }
        made = await asyncio.to_thread(self.kube.create, kc.WAKE_REQUESTS, request)
        return str(made["metadata"]["name"])

    def _newest_wake(self, key: str) -> str:
        requests = self._wake_requests(key)
        return str(requests[-1]["metadata"]["name"]) if requests else ""

    def _newest_wakes(self) -> dict[str, str]:
        """Per database, its newest pending WakeRequest: one pass over them all, for a list."""
        requests = _oldest_first(self.wakes.values()) if self.wakes is not None else []
        return {f"{r['metadata'].get('namespace')}/{_asks_for(r)}": r["metadata"]["name"] for r in requests}

    def _wake_requests(self, key: str) -> builtins.list[dict[str, Any]]:
        """The database's pending WakeRequests, oldest first."""
        if self.wakes is None:
            return []
        namespace, name = types.split_key(key)
        return _oldest_first(
            r
            for r in self.wakes.values()
            if r["metadata"].get("namespace") == namespace and _asks_for(r) == name
        )

    async def _forget_answered(self, key: str, answered: str) -> None:
        """Remove the WakeRequests a status has answered: the one it names, and any older."""
        requests = self._wake_requests(key)
        names = [r["metadata"]["name"] for r in requests]
        if answered not in names:
            return
        namespace, _ = types.split_key(key)
        for name in names[: names.index(answered) + 1]:
            try:
                await asyncio.to_thread(self.kube.delete, kc.WAKE_REQUESTS, namespace, name)
            except kc.ApiError as error:  # a leftover is answered again at worst: never a failed pass
                log.info("could not remove an answered wake request", database=key, error=str(error))

    async def set_finalizer(self, db: types.ServerlessDatabase, present: bool) -> None:
        namespace, name = db.metadata.namespace, db.metadata.name

        def patch(current: dict[str, Any]) -> dict[str, Any]:
            finalizers = [f for f in current["metadata"].get("finalizers") or [] if f != types.FINALIZER]
            if present:
                finalizers.append(types.FINALIZER)
            if finalizers == list(current["metadata"].get("finalizers") or []):
                return current
            meta = {"finalizers": finalizers, "resourceVersion": current["metadata"]["resourceVersion"]}
            written: dict[str, Any] = self.kube.patch(kc.DATABASES, namespace, name, {"metadata": meta})
            return written

        first = self.databases.get(namespace, name) or await asyncio.to_thread(
            self.kube.get, kc.DATABASES, namespace, name
        )
        await self._write_read_again(namespace, name, patch, first=first, what="finalizers")


def _second(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _event(
    db: types.ServerlessDatabase,
    name: str,
    type: EventType,
    reason: str,
    message: str,
    now: datetime,
    instance: str,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": db.metadata.namespace},
        "involvedObject": {
            "apiVersion": types.API_VERSION,
            "kind": types.KIND,
            "name": db.metadata.name,
            "namespace": db.metadata.namespace,
            "uid": db.metadata.uid,
        },
        "type": type.value,
        "reason": reason,
        "message": message[:1024],
        "count": 1,
        "firstTimestamp": _second(now),
        "lastTimestamp": _second(now),
        "source": {"component": COMPONENT, **({"host": instance} if instance else {})},
        "reportingComponent": f"{types.GROUP}/{COMPONENT}",
        "reportingInstance": instance or COMPONENT,
    }


def _asks_for(request: dict[str, Any]) -> Any:
    """The database a WakeRequest asks to wake (its name, in the request's namespace)."""
    return (request.get("spec") or {}).get("database")


def _oldest_first(requests: Iterable[dict[str, Any]]) -> builtins.list[dict[str, Any]]:
    return sorted(
        requests, key=lambda r: (r["metadata"].get("creationTimestamp") or "", r["metadata"]["name"])
    )
