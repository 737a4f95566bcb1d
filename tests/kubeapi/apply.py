"""Server-side apply and `metadata.managedFields`.

Field ownership is tracked as sets of paths in the FieldsV1 vocabulary (`f:spec`, `k:{"name":"db"}`
for an item of a keyed list, `v:"x"` for an item of a set), stored on each object exactly where
the real server keeps them, in `metadata.managedFields`. The rules implemented are the ones an
operator depends on:

* every write records which manager set which fields (operation `Update`, or `Apply`);
* a field that changes value moves to the writer, so a later apply of another value by someone
  else is a conflict (409) unless the apply is forced, which takes the field over;
* a field that an applier applied before and omits now is removed, unless another manager
  still owns it;
* merging follows the schema's list types: keyed lists merge by key, sets union, the rest is atomic.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError
from .schema import Path, TypeSchema

FieldPath = tuple[str, ...]

# Metadata the server owns; it is never part of anyone's field set.
_SYSTEM_METADATA = {
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
}


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


@dataclass
class ManagedEntry:
    manager: str
    operation: str  # "Apply" | "Update"
    api_version: str
    time: str
    subresource: str = ""
    fields: set[FieldPath] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(self.fields),
        }
        if self.subresource:
            out["subresource"] = self.subresource
        return out


# -- field sets -----------------------------------------------------------------------------------


def scoped(obj: dict[str, Any], scope: str) -> dict[str, Any]:
    """The part of an object a write may own: "main" (no status), "status" (only status), "all"."""
    if scope == "status":
        return {"status": obj["status"]} if "status" in obj else {}
    out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    if scope == "main":
        out.pop("status", None)
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _SYSTEM_METADATA}
    if meta:
        out["metadata"] = meta
    else:
        out.pop("metadata", None)
    return out


def _key_element(item: dict[str, Any], keys: tuple[str, ...]) -> str:
    return "k:" + json.dumps({k: item[k] for k in keys if k in item}, separators=(",", ":"), sort_keys=True)


def fieldset(obj: Any, schema: TypeSchema) -> set[FieldPath]:
    """All paths (leaves and keyed-list items) present in an already scoped object."""
    out: set[FieldPath] = set()
    _walk(obj, (), (), schema, out)
    return out


def _walk(value: Any, fpath: FieldPath, spath: Path, schema: TypeSchema, out: set[FieldPath]) -> None:
    if isinstance(value, dict):
        if fpath and (not value or schema.map_atomic(spath)):
            out.add(fpath)
            return
        for k, v in value.items():
            _walk(v, (*fpath, "f:" + k), (*spath, k), schema, out)
    elif isinstance(value, list):
        spec = schema.list_spec(spath)
        if spec.type == "map" and spec.keys and all(isinstance(i, dict) for i in value):
            for item in value:
                ipath = (*fpath, _key_element(item, spec.keys))
                out.add(ipath)
                for k, v in item.items():
                    _walk(v, (*ipath, "f:" + k), (*spath, "[]", k), schema, out)
        elif spec.type == "set":
            for item in value:
                out.add((*fpath, "v:" + json.dumps(item, separators=(",", ":"))))
        else:
            out.add(fpath)
    else:
        out.add(fpath)


def to_fields_v1(paths: Iterable[FieldPath]) -> dict[str, Any]:
    """Serialise a field set as the nested FieldsV1 JSON the API shows."""
    root: dict[str, Any] = {}
    members: set[FieldPath] = set(paths)
    for p in sorted(members):
        node = root
        for part in p:
            node = node.setdefault(part, {})
    # A member that also has children is marked with ".".
    for p in members:
        node = root
        for part in p:
            node = node[part]
        if node and "." not in node:
            node["."] = {}
    return root


def from_fields_v1(tree: dict[str, Any], prefix: FieldPath = ()) -> set[FieldPath]:
    out: set[FieldPath] = set()
    for key, sub in tree.items():
        if key == ".":
            out.add(prefix)
            continue
        path = (*prefix, key)
        if not sub:
            out.add(path)
        else:
            out |= from_fields_v1(sub, path)
    return out


def entries_of(obj: dict[str, Any] | None) -> list[ManagedEntry]:
    out = []
    for e in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        out.append(
            ManagedEntry(
                manager=e.get("manager", ""),
                operation=e.get("operation", "Update"),
                api_version=e.get("apiVersion", ""),
                time=e.get("time", ""),
                subresource=e.get("subresource", ""),
                fields=from_fields_v1(e.get("fieldsV1") or {}),
            )
        )
    return out


def _store_entries(obj: dict[str, Any], entries: list[ManagedEntry]) -> None:
    kept = [e.to_json() for e in entries if e.fields]
    meta = obj.setdefault("metadata", {})
    if kept:
        meta["managedFields"] = kept
    else:
        meta.pop("managedFields", None)


# -- navigating by field path -----------------------------------------------------------------------


def _find_item(items: list[Any], element: str) -> int | None:
    if element.startswith("k:"):
        want = json.loads(element[2:])
        for i, item in enumerate(items):
            if isinstance(item, dict) and all(item.get(k) == v for k, v in want.items()):
                return i
    elif element.startswith("v:"):
        want = json.loads(element[2:])
        for i, item in enumerate(items):
            if item == want:
                return i
    return None


def value_at(obj: Any, path: FieldPath) -> Any:
    cur = obj
    for element in path:
        if element.startswith("f:"):
            if not isinstance(cur, dict) or element[2:] not in cur:
                return MISSING
            cur = cur[element[2:]]
        else:
            if not isinstance(cur, list):
                return MISSING
            i = _find_item(cur, element)
            if i is None:
                return MISSING
            cur = cur[i]
    return cur


def remove_path(obj: dict[str, Any], path: FieldPath) -> None:
    """Remove what `path` names, then prune maps and lists that this left empty."""
    trail: list[tuple[Any, str | int]] = []
    cur: Any = obj
    for element in path:
        if element.startswith("f:"):
            if not isinstance(cur, dict) or element[2:] not in cur:
                return
            trail.append((cur, element[2:]))
            cur = cur[element[2:]]
        else:
            if not isinstance(cur, list):
                return
            i = _find_item(cur, element)
            if i is None:
                return
            trail.append((cur, i))
            cur = cur[i]
    container, key = trail.pop()
    del container[key]
    # Keep top-level fields ("spec") even when empty; drop emptied maps and lists below them.
    while len(trail) > 1 and not container:
        container, key = trail.pop()
        del container[key]


def describe(path: FieldPath) -> str:
    """Render a field path the way conflict messages do: `.spec.containers[name="db"].image`."""
    out = ""
    for element in path:
        if element.startswith("f:"):
            out += "." + element[2:]
        elif element.startswith("k:"):
            keys = json.loads(element[2:])
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
        else:
            out += "[" + element[2:] + "]"
    return out


def _is_item_node(path: FieldPath) -> bool:
    return bool(path) and path[-1].startswith("k:")


# -- updates ------------------------------------------------------------------------------------------


def record_update(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    *,
    manager: str,
    subresource: str,
    scope: str,
    api_version: str,
    schema: TypeSchema,
    now: str,
) -> None:
    """Move the fields this non-apply write changed to `manager` (operation Update), in `new`."""
    entries = entries_of(old)
    old_fs = fieldset(scoped(old, scope), schema) if old is not None else set()
    new_fs = fieldset(scoped(new, scope), schema)
    old_scoped = scoped(old, scope) if old is not None else {}
    new_scoped = scoped(new, scope)
    changed = {
        p
        for p in new_fs
        if p not in old_fs or (not _is_item_node(p) and value_at(old_scoped, p) != value_at(new_scoped, p))
    }
    removed = old_fs - new_fs
    if not changed and not removed:
        _store_entries(new, entries)
        return
    target = next(
        (
            e
            for e in entries
            if e.manager == manager and e.operation == "Update" and e.subresource == subresource
        ),
        None,
    )
    for e in entries:
        if e is not target:
            e.fields -= {p for p in changed if not _is_item_node(p)}
        e.fields -= removed
    if changed:
        if target is None:
            target = ManagedEntry(manager, "Update", api_version, now, subresource)
            entries.append(target)
        target.fields |= changed
        target.time = now
        target.api_version = api_version
    _store_entries(new, entries)


# -- apply --------------------------------------------------------------------------------------------


def merge_applied(live: Any, config: Any, schema: TypeSchema, spath: Path = ()) -> Any:
    """Merge an applied configuration into the live object, following the schema's list types."""
    if isinstance(config, dict) and isinstance(live, dict) and not schema.map_atomic(spath):
        out = dict(live)
        for k, v in config.items():
            if v is None:
                out.pop(k, None)
            elif k in live:
                out[k] = merge_applied(live[k], v, schema, (*spath, k))
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(config, list) and isinstance(live, list):
        spec = schema.list_spec(spath)
        if spec.type == "map" and spec.keys:
            result = copy.deepcopy(live)
            for item in config:
                element = _key_element(item, spec.keys) if isinstance(item, dict) else None
                idx = _find_item(result, element) if element else None
                if idx is None:
                    result.append(copy.deepcopy(item))
                else:
                    result[idx] = merge_applied(result[idx], item, schema, (*spath, "[]"))
            return result
        if spec.type == "set":
            result = copy.deepcopy(live)
            result.extend(copy.deepcopy(i) for i in config if i not in result)
            return result
    return copy.deepcopy(config)


def server_side_apply(
    live: dict[str, Any] | None,
    config: dict[str, Any],
    *,
    manager: str,
    force: bool,
    subresource: str,
    scope: str,
    api_version: str,
    schema: TypeSchema,
    now: str,
) -> dict[str, Any]:
    """Return the object after applying `config` as `manager`; raises 409 on conflicts."""
    cfg = scoped(config, scope)
    cfg_fs = fieldset(cfg, schema)
    entries = entries_of(live)
    own = next(
        (
            e
            for e in entries
            if e.manager == manager and e.operation == "Apply" and e.subresource == subresource
        ),
        None,
    )
    prev = set(own.fields) if own else set()
    live_scoped = scoped(live, scope) if live is not None else {}
    conflicts: list[tuple[ManagedEntry, FieldPath]] = []
    for e in entries:
        if e.manager == manager:
            continue
        for p in sorted(cfg_fs & e.fields):
            if not _is_item_node(p) and value_at(live_scoped, p) != value_at(cfg, p):
                conflicts.append((e, p))
    if conflicts and not force:
        raise _conflict_error(conflicts)
    for e, p in conflicts:
        e.fields.discard(p)
    others: set[FieldPath] = set().union(*(e.fields for e in entries if e is not own))
    result = copy.deepcopy(live) if live is not None else {}
    # Parents first: removing a keyed item takes its fields with it (its key fields must still be there).
    for p in sorted(prev - cfg_fs - others, key=len):
        if any(len(o) > len(p) and o[: len(p)] == p for o in others):
            continue  # someone else still owns something inside it
        remove_path(result, p)
    result = merge_applied(result, cfg, schema)
    if own is None:
        own = ManagedEntry(manager, "Apply", api_version, now, subresource)
        entries.append(own)
    own.fields = cfg_fs
    own.time = now
    own.api_version = api_version
    _store_entries(result, entries)
    return result  # type: ignore[no-any-return]


def _conflict_error(conflicts: list[tuple[ManagedEntry, FieldPath]]) -> ApiError:
    def who(e: ManagedEntry) -> str:
        return f'"{e.manager}"' + (f" using {e.api_version}" if e.operation == "Update" else "")

    causes = [
        {"type": "FieldManagerConflict", "message": f"conflict with {who(e)}", "field": describe(p)}
        for e, p in conflicts
    ]
    if len(conflicts) == 1:
        e, p = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {who(e)}: {describe(p)}"
    else:
        lines = "\n".join(f"- conflict with {who(e)}: {describe(p)}" for e, p in conflicts)
        message = f"Apply failed with {len(conflicts)} conflicts:\n{lines}"
    return ApiError(409, "Conflict", message, {"causes": causes})
