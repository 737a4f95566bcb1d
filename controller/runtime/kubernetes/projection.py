"""What an informer keeps of each object: the fields the operator reads, and nothing else.

Ten thousand databases mean tens of thousands of cached objects, so what each costs is what the
operator costs. An object as the server sends it carries `managedFields` (often half of it), a
status nobody here reads, and defaults; a projection drops them. Keys and the short values that
repeat across objects (condition types, reasons, label values) are interned, so a string held by
every object is held once.

A projection keeps, per kind, what the runtime's and the store's reads need: an EndpointSlice's whole
spec, and a StatefulSet's packed, since a write is skipped when every field the builders set is
there with the same value; of a pod, only its name, labels, address, conditions and the postgres
container's resources. A projection of a projection is the same object.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Callable, Mapping
from typing import Any

Projection = Callable[[dict[str, Any]], dict[str, Any]]

_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "deletionTimestamp")
_OWNED_METADATA = (*_METADATA, "labels", "annotations", "ownerReferences")
INTERN_LONGEST = 64
"""Strings up to this long are interned: names, reasons, label values; not messages."""


def _interned(value: Any) -> Any:
    if isinstance(value, str):
        return sys.intern(value) if len(value) <= INTERN_LONGEST else value
    if isinstance(value, dict):
        return {sys.intern(k): _interned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interned(v) for v in value]
    return value


def _interned_object(obj: dict[str, Any]) -> dict[str, Any]:
    interned: dict[str, Any] = _interned(obj)
    return interned


def _pick(obj: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: obj[k] for k in keys if k in obj}


def _metadata(obj: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return _pick(obj.get("metadata") or {}, keys)


def database(obj: dict[str, Any]) -> dict[str, Any]:
    """A ServerlessDatabase: its metadata without managedFields, its spec and status."""
    meta = _metadata(obj, (*_METADATA, "labels", "annotations", "finalizers", "creationTimestamp"))
    return _interned_object({**_pick(obj, ("apiVersion", "kind", "spec", "status")), "metadata": meta})


def wake_request(obj: dict[str, Any]) -> dict[str, Any]:
    """A WakeRequest: which database it asks for, and when it was made (the oldest is answered first)."""
    meta = _metadata(obj, (*_METADATA, "creationTimestamp"))
    return _interned_object({**_pick(obj, ("apiVersion", "kind", "spec")), "metadata": meta})


def owned(obj: dict[str, Any]) -> dict[str, Any]:
    """An object the operator applies (StatefulSet, EndpointSlice): everything but managedFields and
    status, which it never reads."""
    rest = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    return _interned_object({**rest, "metadata": _metadata(obj, _OWNED_METADATA)})


PACKED = "packedSpec"
"""Where a StatefulSet's projection keeps its spec, but for replicas: zlib of its JSON."""


def statefulset(obj: dict[str, Any]) -> dict[str, Any]:
    """A StatefulSet: its metadata and replicas as they are, the rest of its spec packed. A pass reads
    only the replicas; a start compares the whole spec with the builders' and unpacks it (`unpacked`).
    The pod template is most of a StatefulSet: some 15 KiB of dicts, against 1 KiB packed."""
    if PACKED in obj:
        return obj
    spec = obj.get("spec") or {}
    rest = {k: v for k, v in obj.items() if k not in ("metadata", "status", "spec")}
    kept = {"replicas": spec["replicas"]} if "replicas" in spec else {}
    packed = zlib.compress(json.dumps(spec, separators=(",", ":")).encode())
    return {
        **_interned_object({**rest, "metadata": _metadata(obj, _OWNED_METADATA), "spec": kept}),
        PACKED: packed,
    }


def unpacked(obj: dict[str, Any]) -> dict[str, Any]:
    """A StatefulSet's projection with its whole spec (as `owned` keeps it)."""
    if PACKED not in obj:
        return obj
    rest = {k: v for k, v in obj.items() if k != PACKED}
    return {**rest, "spec": json.loads(zlib.decompress(obj[PACKED]))}


def pod(obj: dict[str, Any]) -> dict[str, Any]:
    """A pod: enough to tell whether it runs, where, and the resources of its postgres container."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return _interned_object(
        {
            "metadata": _metadata(obj, (*_METADATA, "labels")),
            "spec": {"containers": [_pick(c, ("name", "resources")) for c in spec.get("containers") or []]},
            "status": {
                **_pick(status, ("podIP", "conditions", "resize")),
                "containerStatuses": [
                    _pick(c, ("name", "resources")) for c in status.get("containerStatuses") or []
                ],
            },
        }
    )


def deployment(obj: dict[str, Any]) -> dict[str, Any]:
    """A Deployment the operator applies (a pooler): as `owned`, and how many of its pods are ready."""
    status = _pick(obj.get("status") or {}, ("observedGeneration", "readyReplicas", "updatedReplicas"))
    return _interned_object({**owned(obj), "status": status})


def whole(obj: dict[str, Any]) -> dict[str, Any]:
    return obj
