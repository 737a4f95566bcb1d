"""The three non-apply patch formats: JSON merge patch, JSON patch and strategic merge patch.

* JSON merge patch (RFC 7386): maps merge, `null` deletes, lists are replaced whole.
* JSON patch (RFC 6902): a list of add/remove/replace/move/copy/test operations.
* Strategic merge patch: like a merge patch, but lists declared mergeable in the Go types are
  merged by key (containers by name, ports by containerPort, conditions by type, ...), primitive
  merge lists such as finalizers are unioned, and the `$patch`, `$retainKeys`,
  `$deleteFromPrimitiveList/<f>` and `$setElementOrder/<f>` directives are understood.
  Custom resources do not support it (415), exactly like the real server.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError, unprocessable
from .schema import TypeSchema

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
APPLY_PATCH_CBOR = "application/apply-patch+cbor"


# -- JSON merge patch ---------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# -- JSON patch ---------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise unprocessable(
            f"the server rejected our request due to an error in our request: invalid JSON pointer {path!r}"
        )
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise unprocessable(
            f"the server rejected our request due to an error in our request: invalid array index {token!r}"
        )
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise unprocessable(
            f"the server rejected our request due to an error in our request: array index {i} out of bounds"
        )
    return i


def _parent(doc: Any, tokens: list[str]) -> Any:
    cur = doc
    for t in tokens[:-1]:
        if isinstance(cur, dict) and t in cur:
            cur = cur[t]
        elif isinstance(cur, list):
            cur = cur[_index(cur, t, False)]
        else:
            raise unprocessable(
                "the server rejected our request due to an error in our request: "
                f"doc is missing path: /{'/'.join(tokens)}: missing value"
            )
    return cur


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, False)]
    raise unprocessable(
        "the server rejected our request due to an error in our request: "
        f"doc is missing path: /{'/'.join(tokens)}"
    )


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, True), value)
    else:
        raise unprocessable(
            "the server rejected our request due to an error in our request: cannot add to a scalar"
        )
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise unprocessable(
            "the server rejected our request due to an error in our request: cannot remove the root"
        )
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, False))
    raise unprocessable(
        "the server rejected our request due to an error in our request: "
        f"Unable to remove nonexistent key: {last}: missing value"
    )


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902; a failing `test` or a missing path is a 422, as on the real server."""
    if not isinstance(operations, list):
        raise ApiError(
            400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
        )
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise unprocessable(
                "the server rejected our request due to an error in our request: malformed operation"
            )
        kind, tokens = op["op"], _pointer(op["path"])
        if kind == "add":
            doc = _add(doc, tokens, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, tokens)
        elif kind == "replace":
            _get(doc, tokens)  # must exist
            if tokens:
                _remove(doc, tokens)
            doc = _add(doc, tokens, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            source = _pointer(op["from"])
            value = _get(doc, source) if kind == "copy" else _remove(doc, source)
            doc = _add(doc, tokens, copy.deepcopy(value))
        elif kind == "test":
            if _get(doc, tokens) != op.get("value"):
                raise unprocessable(
                    "the server rejected our request due to an error in our request: "
                    f"testing value {op['path']} failed: test failed"
                )
        else:
            raise unprocessable(
                f"the server rejected our request due to an error in our request: Unexpected kind: {kind}"
            )
    return doc


# -- strategic merge patch ----------------------------------------------------------------------

_DELETE_FROM = "$deleteFromPrimitiveList/"
_SET_ORDER = "$setElementOrder/"


def _strip_directives(value: Any) -> Any:
    """A patch value inserted where nothing existed still must not leak `$patch`-style keys."""
    if isinstance(value, dict):
        return {
            k: _strip_directives(v)
            for k, v in value.items()
            if not (k.startswith(("$patch", "$retainKeys", _DELETE_FROM, _SET_ORDER)))
        }
    if isinstance(value, list):
        return [
            _strip_directives(v) for v in value if not (isinstance(v, dict) and v.get("$patch") == "delete")
        ]
    return value


def strategic_merge(original: Any, patch: Any, schema: TypeSchema, path: tuple[str, ...] = ()) -> Any:
    """Apply a strategic merge patch to `original` (not modified); returns the result."""
    if not isinstance(patch, dict) or not isinstance(original, dict):
        return _strip_directives(copy.deepcopy(patch))
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives({k: v for k, v in patch.items() if k != "$patch"})
    if directive == "delete":
        return None
    result = copy.deepcopy(original)
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith(_SET_ORDER):
            continue
        if key.startswith(_DELETE_FROM):
            field = key[len(_DELETE_FROM) :]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        sub = (*path, key)
        current = result.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merged = strategic_merge(current, value, schema, sub)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, dict) and value.get("$patch") == "delete":
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(current if isinstance(current, list) else [], value, schema, sub)
        else:
            result[key] = _strip_directives(copy.deepcopy(value))
    if isinstance(patch.get("$retainKeys"), list):
        keep = set(patch["$retainKeys"])
        result = {k: v for k, v in result.items() if k in keep}
    return result


def _merge_list(
    original: list[Any], patch: list[Any], schema: TypeSchema, path: tuple[str, ...]
) -> list[Any]:
    spec = schema.list_spec(path)
    item_path = (*path, "[]")
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [_strip_directives(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    if not spec.smp_merge:
        return _strip_directives(copy.deepcopy(patch))  # type: ignore[no-any-return]
    if spec.type == "set" or not spec.keys:
        result = copy.deepcopy(original)
        for item in patch:
            if item not in result:
                result.append(copy.deepcopy(item))
        return result
    key = spec.keys[0]
    result = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise ApiError(
                422,
                "Invalid",
                f"map: {item!r} does not contain declared merge key: {key}",
            )
        idx = next((i for i, o in enumerate(result) if isinstance(o, dict) and o.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                result.pop(idx)
            continue
        if idx is None:
            result.append(_strip_directives(copy.deepcopy(item)))
        else:
            result[idx] = strategic_merge(result[idx], item, schema, item_path)
    return result
