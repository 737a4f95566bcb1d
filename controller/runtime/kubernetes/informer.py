"""List-then-watch of one kind into a cache, as client-go's informers do.

A watch resumes from the last resourceVersion it saw; when the server says that version is too old
(410 Gone), the informer lists again and tells about every object that changed meanwhile. Watches
end at a timeout and start again, and a periodic full relist catches anything a watch missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import structlog
from kubernetes import watch

from controller.runtime.kubernetes.client import ApiError, Kind, Kube, key_of

log = structlog.get_logger("informer")

Handler = Callable[[str, dict[str, Any], bool], None]
"""(key, object, deleted), called on the event loop; a deleted object is its last known state."""


class Informer:
    def __init__(
        self,
        kube: Kube,
        kind: Kind,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        on_change: Handler | None = None,
        watch_timeout: int = 240,
        resync: float = 600.0,
    ) -> None:
        self.kube = kube
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.resync = resync
        self.cache: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.relists = 0
        self._watchers: list[watch.Watch] = []
        self._stopping = threading.Event()

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.cache.get(f"{namespace}/{name}")

    def values(self) -> list[dict[str, Any]]:
        return list(self.cache.values())

    async def run(self) -> None:
        """List, then watch, forever (until cancelled)."""
        loop = asyncio.get_running_loop()
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                await self._relist()
                backoff = 0.5
                relist_at = loop.time() + self.resync
                while loop.time() < relist_at and not self._stopping.is_set():
                    await self._watch(loop)
            except ApiError as error:
                if error.gone:
                    log.info(
                        "watch expired; listing again", kind=self.kind.kind, version=self.resource_version
                    )
                    continue
                log.warning("list or watch failed", kind=self.kind.kind, error=str(error))
            except asyncio.CancelledError:
                self.stop()
                raise
            except Exception as error:  # connection resets and the like: back off, then list again
                log.warning("list or watch failed", kind=self.kind.kind, error=str(error))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _relist(self) -> None:
        items, version = await asyncio.to_thread(
            self.kube.list, self.kind, namespace=self.namespace, label_selector=self.label_selector
        )
        self.relists += 1
        fresh = {key_of(item): item for item in items}
        changed = [
            k
            for k, v in fresh.items()
            if self.cache.get(k, {}).get("metadata", {}).get("resourceVersion")
            != v["metadata"].get("resourceVersion")
        ]
        gone = {k: v for k, v in self.cache.items() if k not in fresh}
        self.cache = fresh
        self.resource_version = version
        self.synced.set()
        for key in changed:
            self._notify(key, fresh[key], deleted=False)
        for key, last in gone.items():
            self._notify(key, last, deleted=True)

    async def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run one watch on a daemon thread: a blocked read must never hold up the process's exit."""
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def target() -> None:
            try:
                self._watch_once(loop)
            except BaseException as error:  # handed to the awaiting task, which decides
                with contextlib.suppress(RuntimeError):  # the loop may be closed already
                    loop.call_soon_threadsafe(settle, error)
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, None)

        threading.Thread(target=target, name=f"watch-{self.kind.plural}", daemon=True).start()
        await done

    def _watch_once(self, loop: asyncio.AbstractEventLoop) -> None:
        """One watch until its timeout, run in a thread; each event is applied on the loop."""
        for event in self.kube.watch(
            self.kind,
            namespace=self.namespace,
            resource_version=self.resource_version,
            timeout_seconds=self.watch_timeout,
            label_selector=self.label_selector,
            stopper=self._watchers,
        ):
            if self._stopping.is_set():
                return
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                code = int(obj.get("code") or 0)
                raise ApiError(code, str(obj.get("reason", "")), str(obj.get("message", "")))
            version = obj.get("metadata", {}).get("resourceVersion")
            if kind == "BOOKMARK":
                if version:
                    self.resource_version = version
                continue
            loop.call_soon_threadsafe(self._apply, str(kind), obj)
            if version:
                self.resource_version = version

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        key = key_of(obj)
        if kind == "DELETED":
            self.cache.pop(key, None)
        else:
            self.cache[key] = obj
        self._notify(key, obj, deleted=kind == "DELETED")

    def _notify(self, key: str, obj: dict[str, Any], *, deleted: bool) -> None:
        if self.on_change is not None:
            self.on_change(key, obj, deleted)

    def stop(self) -> None:
        """Stop watching; an open watch's connection is closed so its thread ends at once."""
        self._stopping.set()
        for watcher in self._watchers:
            with contextlib.suppress(Exception):
                watcher.stop()
                response = getattr(watcher, "_resp", None)  # the stream Watch reads from
                if response is not None:
                    response.shutdown()  # interrupts a read blocked in another thread (urllib3 2.3+)
