"""List-then-watch of one kind into a cache, as client-go's informers do.

A watch resumes from the last resourceVersion it saw; when the server says that version is too old
(410 Gone), the informer lists again and tells about every object that changed meanwhile. Watches
end at a timeout and start again, and a periodic full relist catches anything a watch missed.

The cache holds projections (`projection`): only the fields the operator reads, made on the watch's
thread before an object reaches the event loop. Only the list and the watch write the cache, so it
never goes back to an older object. A writer that
must read its own write (the next step of a pass) says what it expects (`expect`), as client-go's
controllers keep expectations, and waits for the watch to bring it (`settled`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from kubernetes import watch

from controller.runtime.kubernetes import projection
from controller.runtime.kubernetes.client import ApiError, Kind, Kube, key_of

log = structlog.get_logger("informer")

Handler = Callable[[str, dict[str, Any], bool], None]
"""(key, object, deleted), called on the event loop; a deleted object is its last known state."""

RECENT_VERSIONS = 4096
"""How many (key, resourceVersion) pairs the informer remembers having applied, so a write whose
watch event arrived before its own response still finds it."""


@dataclass(frozen=True)
class _Expectation:
    version: str | None
    """The resourceVersion a write returned; None: the object was deleted."""
    relists: int
    """Lists begun before the write returned: one begun after it holds the write, or something newer."""


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
        project: projection.Projection = projection.whole,
    ) -> None:
        self.kube = kube
        self.kind = kind
        self.project = project
        self.namespace = namespace
        self.label_selector = label_selector
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.resync = resync
        self.cache: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.relists = 0
        self._lists_begun = 0
        self._recent: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._expected: dict[str, _Expectation] = {}
        self._written: collections.OrderedDict[str, str] = collections.OrderedDict()
        """The resourceVersion of the operator's last write of each key, for the most recent keys."""
        self._progress = asyncio.Event()
        self._watchers: list[watch.Watch] = []
        self._stopping = threading.Event()

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.cache.get(f"{namespace}/{name}")

    def values(self) -> list[dict[str, Any]]:
        return list(self.cache.values())

    def keys(self) -> list[str]:
        return list(self.cache)

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

    # -- reading one's own writes ---------------------------------------------------------------

    def expect(self, key: str, version: str | None) -> None:
        """A write of `key` returned `version` (None: a delete): reads wait for the cache to hold it."""
        self._expected[key] = _Expectation(version, self._lists_begun)
        if version is not None:
            self._written[key] = version
            self._written.move_to_end(key)
            while len(self._written) > RECENT_VERSIONS:
                self._written.popitem(last=False)
        self._settle(key)

    def holds_own_write(self, key: str) -> str | None:
        """The cached object's resourceVersion when it is the operator's own last write of it, and
        nobody has written it since; else None."""
        current = self.cache.get(key, {}).get("metadata", {}).get("resourceVersion")
        return current if current is not None and self._written.get(key) == current else None

    def _met(self, key: str, expectation: _Expectation) -> bool:
        if self.relists > expectation.relists:  # a list that began after the write holds it
            return True
        if expectation.version is None:
            return key not in self.cache
        current = self.cache.get(key, {}).get("metadata", {}).get("resourceVersion")
        return current == expectation.version or (key, expectation.version) in self._recent

    def _settle(self, key: str) -> None:
        expectation = self._expected.get(key)
        if expectation is not None and self._met(key, expectation):
            del self._expected[key]

    async def settled(self, key: str, *, timeout: float) -> bool:
        """Wait until the cache holds this informer's last expected write of `key`; False on timeout."""
        deadline = time.monotonic() + timeout
        while key in self._expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            progress = self._progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), remaining)
        return True

    def _applied(self, key: str, obj: dict[str, Any]) -> None:
        version = obj.get("metadata", {}).get("resourceVersion")
        if version:
            self._recent[(key, version)] = None
            while len(self._recent) > RECENT_VERSIONS:
                self._recent.popitem(last=False)
        self._settle(key)
        # Wake every waiter: each checks its own key again.
        self._progress.set()
        self._progress = asyncio.Event()

    # -- list and watch ---------------------------------------------------------------------------

    async def _relist(self) -> None:
        self._lists_begun += 1
        items, version = await asyncio.to_thread(
            self.kube.list,
            self.kind,
            namespace=self.namespace,
            label_selector=self.label_selector,
            project=self.project,
        )
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
        self.relists = self._lists_begun
        for key in list(self._expected):
            self._settle(key)
        self._progress.set()
        self._progress = asyncio.Event()
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
            loop.call_soon_threadsafe(self._apply, str(kind), self.project(obj))
            if version:
                self.resource_version = version

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        key = key_of(obj)
        if kind == "DELETED":
            self.cache.pop(key, None)
        else:
            self.cache[key] = obj
        self._applied(key, obj)
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
