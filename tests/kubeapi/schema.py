"""Just enough schema knowledge for patches, apply and custom-resource storage.

Strategic merge patch and server-side apply need to know, for each list, whether it is merged by
key ("map", e.g. containers by name), as a set (e.g. finalizers) or replaced whole ("atomic").
Built-in types use a table copied from the Kubernetes Go types (`patchMergeKey`, `listType`);
custom resources read `x-kubernetes-list-type` and friends from the CRD's openAPIV3Schema, which is
also used here to prune unknown fields, apply defaults and validate, as the real server does.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

Path = tuple[str, ...]  # field names, with "[]" standing for "an item of this list"


@dataclass(frozen=True)
class ListSpec:
    type: str  # "map" | "set" | "atomic"
    keys: tuple[str, ...] = ()
    smp_merge: bool = False  # strategic merge patch merges (by keys[0]) instead of replacing
    retain_keys: bool = False


ATOMIC = ListSpec("atomic")
_BY_NAME = ListSpec("map", ("name",), smp_merge=True)
_BY_TYPE = ListSpec("map", ("type",), smp_merge=True)

_METADATA: dict[Path, ListSpec] = {
    ("metadata", "finalizers"): ListSpec("set", smp_merge=True),
    ("metadata", "ownerReferences"): ListSpec("map", ("uid",), smp_merge=True),
}


def _container(prefix: Path) -> dict[Path, ListSpec]:
    return {
        # Real keys for SSA are (containerPort, protocol); protocol is defaulted, so one key suffices here.
        (*prefix, "ports"): ListSpec("map", ("containerPort",), smp_merge=True),
        (*prefix, "env"): _BY_NAME,
        (*prefix, "volumeMounts"): ListSpec("map", ("mountPath",), smp_merge=True),
        (*prefix, "volumeDevices"): ListSpec("map", ("devicePath",), smp_merge=True),
    }


def _pod_spec(prefix: Path) -> dict[Path, ListSpec]:
    table: dict[Path, ListSpec] = {}
    for name in ("containers", "initContainers", "ephemeralContainers"):
        table[(*prefix, name)] = _BY_NAME
        table.update(_container((*prefix, name, "[]")))
    table[(*prefix, "volumes")] = ListSpec("map", ("name",), smp_merge=True, retain_keys=True)
    table[(*prefix, "imagePullSecrets")] = _BY_NAME
    table[(*prefix, "hostAliases")] = ListSpec("map", ("ip",), smp_merge=True)
    table[(*prefix, "schedulingGates")] = _BY_NAME
    table[(*prefix, "resourceClaims")] = ListSpec("map", ("name",), smp_merge=True, retain_keys=True)
    table[(*prefix, "topologySpreadConstraints")] = ListSpec(
        "map", ("topologyKey", "whenUnsatisfiable"), smp_merge=True
    )
    return table


_CONDITIONS: dict[Path, ListSpec] = {("status", "conditions"): _BY_TYPE}
_WORKLOAD: dict[Path, ListSpec] = {**_pod_spec(("spec", "template", "spec")), **_CONDITIONS}

_BUILTIN_LISTS: dict[str, dict[Path, ListSpec]] = {
    "pods": {
        **_pod_spec(("spec",)),
        **_CONDITIONS,
        ("status", "podIPs"): ListSpec("map", ("ip",), smp_merge=True),
        ("status", "hostIPs"): ListSpec("map", ("ip",), smp_merge=True),
    },
    "statefulsets.apps": _WORKLOAD,
    "deployments.apps": _WORKLOAD,
    "replicasets.apps": _WORKLOAD,
    "services": {("spec", "ports"): ListSpec("map", ("port",), smp_merge=True), **_CONDITIONS},
    "persistentvolumeclaims": _CONDITIONS,
    "persistentvolumes": _CONDITIONS,
    "namespaces": _CONDITIONS,
    "nodes": {**_CONDITIONS, ("status", "addresses"): _BY_TYPE},
    "serviceaccounts": {("secrets",): _BY_NAME},
    "poddisruptionbudgets.policy": _CONDITIONS,
    "customresourcedefinitions.apiextensions.k8s.io": _CONDITIONS,
}

# Maps and structs that apply treats as one value (`+mapType=atomic`, `+structType=atomic`).
_BUILTIN_ATOMIC_MAPS: dict[str, set[Path]] = {
    "pods": {("spec", "nodeSelector")},
    "statefulsets.apps": {("spec", "selector"), ("spec", "template", "spec", "nodeSelector")},
    "deployments.apps": {("spec", "selector"), ("spec", "template", "spec", "nodeSelector")},
    "replicasets.apps": {("spec", "selector"), ("spec", "template", "spec", "nodeSelector")},
    "services": {("spec", "selector")},
}


def schema_path(path: tuple[str | int, ...]) -> Path:
    """Turn a concrete path (with list indices) into a schema path (with "[]")."""
    return tuple("[]" if isinstance(p, int) else p for p in path)


class TypeSchema:
    """List and map semantics for one resource type."""

    def __init__(self, key: str, openapi: dict[str, Any] | None = None, custom: bool = False) -> None:
        self.key = key
        self.custom = custom
        self.openapi = openapi
        self._lists = {**_METADATA, **_BUILTIN_LISTS.get(key, {})}
        self._atomic_maps = _BUILTIN_ATOMIC_MAPS.get(key, set())

    def _node(self, path: Path) -> dict[str, Any] | None:
        node = self.openapi
        for part in path:
            if node is None:
                return None
            if part == "[]":
                node = node.get("items")
            elif part in (node.get("properties") or {}):
                node = node["properties"][part]
            elif isinstance(node.get("additionalProperties"), dict):
                node = node["additionalProperties"]
            else:
                return None
        return node

    def list_spec(self, path: Path) -> ListSpec:
        if path in self._lists:
            return self._lists[path]
        if self.custom and path[:1] != ("metadata",):
            node = self._node(path)
            if node is not None:
                kind = node.get("x-kubernetes-list-type", "atomic")
                if kind == "map":
                    return ListSpec("map", tuple(node.get("x-kubernetes-list-map-keys") or ()))
                if kind == "set":
                    return ListSpec("set")
        return ATOMIC

    def map_atomic(self, path: Path) -> bool:
        if path in self._atomic_maps:
            return True
        if self.custom and path[:1] != ("metadata",):
            node = self._node(path)
            if node is not None:
                return node.get("x-kubernetes-map-type") == "atomic"
        return False


# -- structural schemas of custom resources -------------------------------------------------------

_ROOT_KEEP = ("apiVersion", "kind", "metadata")


def prune(value: Any, node: dict[str, Any] | None, root: bool = False) -> Any:
    """Drop fields the schema does not know, unless it preserves unknown fields."""
    if node is None:
        return value
    if isinstance(value, dict):
        props = node.get("properties")
        addl = node.get("additionalProperties")
        preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
        embedded = root or node.get("x-kubernetes-embedded-resource", False)
        out = {}
        for k, v in value.items():
            if embedded and k in _ROOT_KEEP:
                out[k] = v
            elif props is not None and k in props:
                out[k] = prune(v, props[k])
            elif isinstance(addl, dict):
                out[k] = prune(v, addl)
            elif addl is True or preserve or (props is None and addl is None and not node.get("type")):
                out[k] = v
        return out
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [prune(v, node["items"]) for v in value]
    return value


def apply_defaults(value: Any, node: dict[str, Any] | None) -> Any:
    """Fill `default`s of absent properties, recursively, where the parent object exists."""
    if node is None:
        return value
    if isinstance(value, dict):
        props = node.get("properties") or {}
        for k, sub in props.items():
            if k not in value and "default" in sub:
                value[k] = copy.deepcopy(sub["default"])
            if k in value:
                value[k] = apply_defaults(value[k], sub)
        addl = node.get("additionalProperties")
        if isinstance(addl, dict):
            for k in list(value):
                if k not in props:
                    value[k] = apply_defaults(value[k], addl)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        return [apply_defaults(v, node["items"]) for v in value]
    return value


Cause = tuple[str, str, str]  # (reason, field, message)


def _type_ok(value: Any, typ: str, int_or_string: bool) -> bool:
    if int_or_string:
        return isinstance(value, int | str) and not isinstance(value, bool)
    checks: dict[str, Any] = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    check = checks.get(typ)
    return bool(check(value)) if check else True


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def validate(value: Any, node: dict[str, Any] | None, path: str = "") -> list[Cause]:
    """OpenAPI v3 checks the real server makes on custom resources (CEL rules are not evaluated)."""
    if node is None:
        return []
    causes: list[Cause] = []
    field = path or "<root>"
    if value is None:
        if not node.get("nullable", False) and node.get("type"):
            causes.append(
                (
                    "FieldValueTypeInvalid",
                    field,
                    f'Invalid value: "null": {field} in body must be of type {node["type"]}: "null"',
                )
            )
        return causes
    typ = node.get("type", "")
    if typ and not _type_ok(value, typ, node.get("x-kubernetes-int-or-string", False)):
        shown = (
            type(value).__name__.replace("dict", "object").replace("list", "array").replace("str", "string")
        )
        causes.append(
            (
                "FieldValueTypeInvalid",
                field,
                f'Invalid value: "{shown}": {field} in body must be of type {typ}: "{shown}"',
            )
        )
        return causes
    if "enum" in node and value not in node["enum"]:
        supported = ", ".join(_show(v) for v in node["enum"])
        causes.append(
            (
                "FieldValueNotSupported",
                field,
                f"Unsupported value: {_show(value)}: supported values: {supported}",
            )
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in node and (
            value < node["minimum"] or (node.get("exclusiveMinimum") and value == node["minimum"])
        ):
            causes.append(
                (
                    "FieldValueInvalid",
                    field,
                    f"Invalid value: {value}: "
                    f"{field} in body should be greater than or equal to {node['minimum']}",
                )
            )
        if "maximum" in node and (
            value > node["maximum"] or (node.get("exclusiveMaximum") and value == node["maximum"])
        ):
            causes.append(
                (
                    "FieldValueInvalid",
                    field,
                    f"Invalid value: {value}: "
                    f"{field} in body should be less than or equal to {node['maximum']}",
                )
            )
    if isinstance(value, str):
        if "maxLength" in node and len(value) > node["maxLength"]:
            causes.append(
                ("FieldValueTooLong", field, f"Too long: may not be more than {node['maxLength']} bytes")
            )
        if "minLength" in node and len(value) < node["minLength"]:
            causes.append(
                (
                    "FieldValueInvalid",
                    field,
                    f"Invalid value: {_show(value)}: "
                    f"{field} in body should be at least {node['minLength']} chars long",
                )
            )
        if "pattern" in node and not re.search(node["pattern"], value):
            causes.append(
                (
                    "FieldValueInvalid",
                    field,
                    f"Invalid value: {_show(value)}: {field} in body should match '{node['pattern']}'",
                )
            )
    if isinstance(value, list):
        if "maxItems" in node and len(value) > node["maxItems"]:
            causes.append(
                (
                    "FieldValueTooMany",
                    field,
                    f"Too many: {len(value)}: must have at most {node['maxItems']} items",
                )
            )
        if "minItems" in node and len(value) < node["minItems"]:
            causes.append(
                (
                    "FieldValueInvalid",
                    field,
                    f"Invalid value: {len(value)}: "
                    f"{field} in body should have at least {node['minItems']} items",
                )
            )
        causes.extend(_list_uniqueness(value, node, field))
        items = node.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                causes.extend(validate(item, items, f"{path}[{i}]"))
    if isinstance(value, dict):
        for req in node.get("required") or []:
            if req not in value:
                causes.append(("FieldValueRequired", f"{path}.{req}" if path else req, "Required value"))
        props = node.get("properties") or {}
        addl = node.get("additionalProperties")
        for k, v in value.items():
            if not path and k in _ROOT_KEEP:
                continue
            sub_path = f"{path}.{k}" if path else k
            if k in props:
                causes.extend(validate(v, props[k], sub_path))
            elif isinstance(addl, dict):
                causes.extend(validate(v, addl, sub_path))
        if "maxProperties" in node and len(value) > node["maxProperties"]:
            causes.append(
                (
                    "FieldValueTooMany",
                    field,
                    f"Too many: {len(value)}: must have at most {node['maxProperties']} items",
                )
            )
    return causes


def _list_uniqueness(value: list[Any], node: dict[str, Any], field: str) -> list[Cause]:
    kind = node.get("x-kubernetes-list-type")
    seen: list[Any] = []
    causes: list[Cause] = []
    for i, item in enumerate(value):
        if kind == "set":
            ident: Any = item
        elif kind == "map" and isinstance(item, dict):
            ident = {k: item.get(k) for k in node.get("x-kubernetes-list-map-keys") or ()}
        else:
            continue
        if ident in seen:
            causes.append(
                (
                    "FieldValueDuplicate",
                    f"{field}[{i}]",
                    f"Duplicate value: {_show(item) if kind == 'set' else ident}",
                )
            )
        seen.append(ident)
    return causes
