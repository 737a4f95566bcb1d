"""ServerlessDatabase objects on disk: the local runtime's stand-in for the API server.

Layout under the state directory:
  objects/<namespace>/<name>.yaml   metadata and spec, written by `sdb apply`, `sdb pause`, ...
  status/<namespace>/<name>.json    status, written by the operator alone (the status subresource)
  events/<namespace>/<name>.jsonl   the latest events, oldest first
Writes go to a temporary file and are renamed into place, under a lock for read-modify-write, so
a reader never sees half an object and a killed writer leaves the previous version.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from controller.api import codec, types, units
from controller.api.validation import FieldError, InvalidSpecError, validate
from controller.runtime.base import Event, EventType, invalid_status

MAX_EVENTS = 100


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    tmp.chmod(mode)
    tmp.replace(path)


class FileStore:
    def __init__(self, root: Path, *, clock: Any = units.now_utc) -> None:
        self.root = root
        self.objects = root / "objects"
        self.statuses = root / "status"
        self.events_dir = root / "events"
        self._clock = clock
        self._specs: dict[str, tuple[tuple[int, int, int], types.DatabaseSpec]] = {}

    def _object_path(self, key: str) -> Path:
        namespace, name = types.split_key(key)
        return self.objects / namespace / f"{name}.yaml"

    def _status_path(self, key: str) -> Path:
        namespace, name = types.split_key(key)
        return self.statuses / namespace / f"{name}.json"

    def _events_path(self, key: str) -> Path:
        namespace, name = types.split_key(key)
        return self.events_dir / namespace / f"{name}.jsonl"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- reading ---------------------------------------------------------------------------------

    def read(self, key: str) -> types.ServerlessDatabase | None:
        try:
            raw = yaml.safe_load(self._object_path(key).read_text())
        except FileNotFoundError:
            return None
        try:
            status = json.loads(self._status_path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            status = None
        db = codec.decode(raw)
        return replace(db, status=codec.decode_status(status))

    def read_spec(self, key: str) -> types.DatabaseSpec | None:
        """The object's spec, parsed again only when its file was replaced (every write renames a
        new file into place, so its inode, time and size say so): cheap enough for a check on every
        login, where parsing the YAML each time cost milliseconds."""
        path = self._object_path(key)
        try:
            info = path.stat()
        except FileNotFoundError:
            self._specs.pop(key, None)
            return None
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        known = self._specs.get(key)
        if known is not None and known[0] == stamp:
            return known[1]
        try:
            # Replaced since the stat: then the next stat differs, and this is read again.
            spec = codec.decode(yaml.safe_load(path.read_text())).spec
        except FileNotFoundError:
            return None
        self._specs[key] = (stamp, spec)
        return spec

    def keys(self) -> list[str]:
        if not self.objects.exists():
            return []
        return sorted(f"{p.parent.name}/{p.stem}" for p in self.objects.glob("*/*.yaml"))

    def read_all(self, namespace: str | None = None) -> list[types.ServerlessDatabase]:
        out = []
        for key in self.keys():
            if namespace is not None and types.split_key(key)[0] != namespace:
                continue
            db = self.read(key)
            if db is not None:
                out.append(db)
        return out

    def events(self, key: str) -> list[Event]:
        try:
            lines = self._events_path(key).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [_decode_event(json.loads(line)) for line in lines if line.strip()]

    # -- writing metadata and spec (users) -------------------------------------------------------

    def apply(self, raw: Mapping[str, Any]) -> tuple[types.ServerlessDatabase, str]:
        """Validate and store an object; returns it and "created", "configured" or "unchanged".

        Raises InvalidSpecError naming every problem; nothing is stored then.
        """
        errors = validate(raw)
        if errors:
            raise InvalidSpecError(errors)
        incoming = codec.decode(raw)
        key = incoming.key
        with self._locked():
            existing = self._read_raw(key)
            now = self._clock()
            if existing is None:
                meta = replace(
                    incoming.metadata,
                    uid=str(uuid.uuid4()),
                    generation=1,
                    creation_timestamp=now,
                    resource_version="1",
                    deletion_timestamp=None,
                    finalizers=(types.FINALIZER,),
                )
                result = "created"
            else:
                old = codec.decode(existing)
                if old.metadata.deletion_timestamp is not None:
                    raise InvalidSpecError(
                        [
                            FieldError(
                                "metadata.deletionTimestamp",
                                f"{key} is being deleted; apply it again once it is gone",
                            )
                        ]
                    )
                spec_changed = codec.encode_spec(old.spec) != codec.encode_spec(incoming.spec)
                annotations = {**old.metadata.annotations, **incoming.metadata.annotations}
                labels = incoming.metadata.labels or old.metadata.labels
                meta = replace(
                    old.metadata,
                    generation=old.metadata.generation + (1 if spec_changed else 0),
                    labels=labels,
                    annotations=annotations,
                )
                changed = spec_changed or meta != old.metadata
                result = "configured" if changed else "unchanged"
                if not changed:
                    return replace(old, status=self._read_status(key)), result
                meta = replace(meta, resource_version=str(int(old.metadata.resource_version or "0") + 1))
            db = types.ServerlessDatabase(metadata=meta, spec=incoming.spec)
            self._write_object(db)
        return replace(db, status=self._read_status(key)), result

    def _read_raw(self, key: str) -> dict[str, Any] | None:
        try:
            loaded = yaml.safe_load(self._object_path(key).read_text())
        except FileNotFoundError:
            return None
        return loaded if isinstance(loaded, dict) else None

    def _read_status(self, key: str) -> types.DatabaseStatus:
        try:
            return codec.decode_status(json.loads(self._status_path(key).read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return types.DatabaseStatus()

    def _write_object(self, db: types.ServerlessDatabase) -> None:
        text = yaml.safe_dump(codec.encode(db, with_status=False), sort_keys=False)
        _write_atomic(self._object_path(db.key), text)
        self._bump()

    def _bump(self) -> None:
        """Move the generation that `changes` watches (callers hold the lock)."""
        path = self.objects / ".generation"
        try:
            generation = int(path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            generation = 0
        _write_atomic(path, str(generation + 1))

    def update(self, key: str, change: Any) -> types.ServerlessDatabase | None:
        """Read-modify-write of one object under the lock; `change` maps the old object to the new."""
        with self._locked():
            raw = self._read_raw(key)
            if raw is None:
                return None
            old = codec.decode(raw)
            new: types.ServerlessDatabase = change(old)
            if new == old:
                return old
            spec_changed = codec.encode_spec(old.spec) != codec.encode_spec(new.spec)
            meta = replace(
                new.metadata,
                generation=old.metadata.generation + (1 if spec_changed else 0),
                resource_version=str(int(old.metadata.resource_version or "0") + 1),
            )
            new = replace(new, metadata=meta)
            self._write_object(new)
            return replace(new, status=self._read_status(key))

    def set_state(self, key: str, state: types.State) -> types.ServerlessDatabase | None:
        return self.update(key, lambda db: replace(db, spec=replace(db.spec, state=state)))

    def mark_deleted(self, key: str) -> types.ServerlessDatabase | None:
        def mark(db: types.ServerlessDatabase) -> types.ServerlessDatabase:
            if db.metadata.deletion_timestamp is not None:
                return db
            return replace(db, metadata=replace(db.metadata, deletion_timestamp=self._clock()))

        return self.update(key, mark)

    def remove(self, key: str) -> None:
        """Forget an object whose finalizer is done: object, status and events."""
        with self._locked():
            for path in (self._object_path(key), self._status_path(key), self._events_path(key)):
                path.unlink(missing_ok=True)
            self._bump()

    # -- the Store interface, for the reconciler -------------------------------------------------

    async def list(self) -> Sequence[types.ServerlessDatabase]:
        return await asyncio.to_thread(self.read_all)

    async def all_keys(self) -> Sequence[str]:
        return await asyncio.to_thread(self.keys)

    async def get(self, key: str) -> types.ServerlessDatabase | None:
        return await asyncio.to_thread(self.read, key)

    async def write_status(self, db: types.ServerlessDatabase, status: types.DatabaseStatus) -> None:
        if status == db.status:
            return
        text = json.dumps(codec.encode_status(status), indent=1)
        await asyncio.to_thread(_write_atomic, self._status_path(db.key), text)

    async def record_event(
        self, db: types.ServerlessDatabase, type: EventType, reason: str, message: str
    ) -> None:
        await asyncio.to_thread(self._append_event, db.key, type, reason, message)

    def _append_event(self, key: str, type: EventType, reason: str, message: str) -> None:
        now = self._clock()
        events = self.events(key)
        last = events[-1] if events else None
        if last and (last.type, last.reason, last.message) == (type, reason, message):
            # As Kubernetes does: a repeat bumps the count instead of adding a line.
            events[-1] = replace(last, count=last.count + 1, last_time=now)
        else:
            events.append(Event(type, reason, message, now, now))
        text = "".join(json.dumps(_encode_event(e)) + "\n" for e in events[-MAX_EVENTS:])
        _write_atomic(self._events_path(key), text)

    async def mark_invalid(self, key: str, message: str, now: datetime) -> None:
        status = invalid_status(self._read_status(key), message, now)
        text = json.dumps(codec.encode_status(status), indent=1)
        await asyncio.to_thread(_write_atomic, self._status_path(key), text)

    async def request_wake(self, key: str) -> str:
        token = units.format_time(self._clock())

        def annotate(db: types.ServerlessDatabase) -> types.ServerlessDatabase:
            annotations = {**db.metadata.annotations, types.WAKE_ANNOTATION: token}
            return replace(db, metadata=replace(db.metadata, annotations=annotations))

        await asyncio.to_thread(self.update, key, annotate)
        return token

    async def set_finalizer(self, db: types.ServerlessDatabase, present: bool) -> None:
        if not present and db.metadata.deletion_timestamp is not None:
            await asyncio.to_thread(self.remove, db.key)
            return

        def change(old: types.ServerlessDatabase) -> types.ServerlessDatabase:
            rest = tuple(f for f in old.metadata.finalizers if f != types.FINALIZER)
            finalizers = (*rest, types.FINALIZER) if present else rest
            return replace(old, metadata=replace(old.metadata, finalizers=finalizers))

        await asyncio.to_thread(self.update, db.key, change)

    async def changes(
        self, *, every: float = 0.2
    ) -> AsyncIterator[tuple[str, types.ServerlessDatabase | None]]:
        """Keys whose object file changed, appeared or went away since the last look.

        Every write bumps one generation file, so an idle store costs one stat per look; only when it
        moved are the object files compared (by size and mtime), as a list after a watch would.
        """
        seen: dict[str, tuple[int, int]] = {}
        generation: tuple[int, int] | None = None
        while True:
            now = _stamp(self.objects / ".generation")
            if now != generation:
                generation = now
                current = (
                    {f"{p.parent.name}/{p.stem}": _stamp(p) for p in self.objects.glob("*/*.yaml")}
                    if self.objects.exists()
                    else {}
                )
                for key in sorted(set(seen) | set(current)):
                    if seen.get(key) != current.get(key):
                        yield key, await self._last_seen(key)
                seen = current
            await asyncio.sleep(every)

    async def _last_seen(self, key: str) -> types.ServerlessDatabase | None:
        try:
            return await self.get(key)
        except (ValueError, yaml.YAMLError):
            return None  # reported when that object is reconciled


def _stamp(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (info.st_mtime_ns, info.st_size)


def _encode_event(event: Event) -> dict[str, Any]:
    return {
        "type": event.type.value,
        "reason": event.reason,
        "message": event.message,
        "firstTimestamp": units.format_time(event.first_time),
        "lastTimestamp": units.format_time(event.last_time),
        "count": event.count,
    }


def _decode_event(raw: Mapping[str, Any]) -> Event:
    first: datetime = units.parse_time(raw["firstTimestamp"])
    return Event(
        type=EventType(raw["type"]),
        reason=raw["reason"],
        message=raw["message"],
        first_time=first,
        last_time=units.parse_time(raw.get("lastTimestamp", raw["firstTimestamp"])),
        count=int(raw.get("count", 1)),
    )
