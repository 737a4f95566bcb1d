"""ServerlessDatabase objects through the API server: reads from the informer's cache, writes as patches.

Status goes to the status subresource in one write per reconcile (PUT with the resourceVersion read,
retried from a fresh read on 409). Events are core/v1 Events; a repeat of the last one bumps its
count, as client-go's recorder does. Finalizer changes carry a resourceVersion precondition.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

import structlog

from controller.api import codec, types, units
from controller.runtime.base import EventType, invalid_status
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes.informer import Informer

log = structlog.get_logger("store.kubernetes")
CONFLICT_RETRIES = 5
COMPONENT = "serverless-db-operator"


class KubeStore:
    def __init__(
        self,
        kube: kc.Kube,
        databases: Informer,
        *,
        clock: Callable[[], datetime] = units.now_utc,
        instance: str = "",
    ) -> None:
        self.kube = kube
        self.databases = databases
        self.clock = clock
        self.instance = instance
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._events: dict[str, tuple[str, str, str, str, int, datetime]] = {}
        """Per database: the last event's (name, type, reason, message, count, first time)."""

    def notify(self, key: str) -> None:
        """Something about this database changed (its object, or one of its objects)."""
        self.queue.put_nowait(key)

    async def changes(self) -> AsyncIterator[str]:
        while True:
            yield await self.queue.get()

    async def list(self) -> Sequence[types.ServerlessDatabase]:
        await self.databases.synced.wait()
        out = []
        for raw in self.databases.values():
            try:
                out.append(codec.decode(raw))
            except ValueError:
                continue  # reported when that object is reconciled
        return out

    async def get(self, key: str) -> types.ServerlessDatabase | None:
        await self.databases.synced.wait()
        namespace, _, name = key.partition("/")
        raw = self.databases.get(namespace, name)
        return codec.decode(raw) if raw is not None else None

    async def mark_invalid(self, key: str, message: str, now: datetime) -> None:
        namespace, _, name = key.partition("/")
        raw = self.databases.get(namespace, name)
        if raw is None:
            return
        status = invalid_status(codec.decode_status(raw.get("status")), message, now)
        await self._put_status(namespace, name, raw["metadata"].get("resourceVersion", ""), status)

    async def write_status(self, db: types.ServerlessDatabase, status: types.DatabaseStatus) -> None:
        if status == db.status:
            return
        await self._put_status(db.metadata.namespace, db.metadata.name, db.metadata.resource_version, status)

    async def _put_status(
        self, namespace: str, name: str, version: str, status: types.DatabaseStatus
    ) -> None:
        body = codec.encode_status(status)
        for _ in range(CONFLICT_RETRIES):
            current = self.databases.get(namespace, name)
            obj = copy.deepcopy(current) if current is not None else None
            if obj is None:
                return  # deleted meanwhile
            if version:
                obj["metadata"]["resourceVersion"] = version
            obj["status"] = body
            try:
                written = await asyncio.to_thread(self.kube.replace, kc.DATABASES, obj, subresource="status")
            except kc.ApiError as error:
                if error.not_found:
                    return
                if not error.conflict:
                    raise
                fresh = await asyncio.to_thread(self.kube.get, kc.DATABASES, namespace, name)
                if fresh is None:
                    return
                version = fresh["metadata"]["resourceVersion"]
                continue
            self.databases.cache[f"{namespace}/{name}"] = (
                written  # read-your-writes before the watch catches up
            )
            return
        raise kc.ApiError(409, "Conflict", f"status of {namespace}/{name} kept changing")

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
        token = units.format_time(self.clock())
        namespace, _, name = key.partition("/")
        await asyncio.to_thread(
            self.kube.patch,
            kc.DATABASES,
            namespace,
            name,
            {"metadata": {"annotations": {types.WAKE_ANNOTATION: token}}},
        )
        return token

    async def set_finalizer(self, db: types.ServerlessDatabase, present: bool) -> None:
        namespace, name = db.metadata.namespace, db.metadata.name
        for _ in range(CONFLICT_RETRIES):
            current = self.databases.get(namespace, name) or await asyncio.to_thread(
                self.kube.get, kc.DATABASES, namespace, name
            )
            if current is None:
                return
            finalizers = list(current["metadata"].get("finalizers") or [])
            if (types.FINALIZER in finalizers) == present:
                return
            finalizers = (
                [*finalizers, types.FINALIZER] if present else [f for f in finalizers if f != types.FINALIZER]
            )
            patch = {
                "metadata": {
                    "finalizers": finalizers,
                    "resourceVersion": current["metadata"]["resourceVersion"],
                }
            }
            try:
                await asyncio.to_thread(self.kube.patch, kc.DATABASES, namespace, name, patch)
                return
            except kc.ApiError as error:
                if error.not_found:
                    return
                if not error.conflict:
                    raise
                fresh = await asyncio.to_thread(self.kube.get, kc.DATABASES, namespace, name)
                if fresh is None:
                    return
                self.databases.cache[f"{namespace}/{name}"] = fresh
        raise kc.ApiError(409, "Conflict", f"finalizers of {db.key} kept changing")


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
