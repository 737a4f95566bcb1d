"""The CRD's own schema as a validator, as the API server applies it: defaults, then the structural
schema (JSON Schema), then every CEL rule (`x-kubernetes-validations`) evaluated with cel-python.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import celpy.adapter
import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "charts/serverless-db-operator/crds/serverlessdatabases.dbscale.io.yaml"


def load_crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return loaded


def openapi_schema(crd: dict[str, Any] | None = None) -> dict[str, Any]:
    crd = crd or load_crd()
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _to_json_schema(node: Any) -> Any:
    """OpenAPI v3 structural schema to JSON Schema: `nullable` becomes a null type; extensions are dropped."""
    if isinstance(node, list):
        return [_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: _to_json_schema(v)
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k != "nullable"
    }
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: absent properties with a default get it, recursively (as the API server).

    Numbers in `type: number` fields become floats, as CEL sees them (a double, never an int).
    """
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, dict) or schema.get("type") != "object":
        if isinstance(value, list) and "items" in schema:
            return [apply_defaults(schema["items"], v) for v in value]
        return value
    out = dict(value)
    for name, prop in schema.get("properties", {}).items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
    for name, prop in schema.get("properties", {}).items():
        if name in out:
            out[name] = apply_defaults(prop, out[name])
    return out


def _rules(schema: dict[str, Any], value: Any, path: str) -> Iterator[tuple[str, str, str, Any]]:
    """(path, rule, message expression, value) for every CEL rule that applies to a present value."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield (
            path,
            rule["rule"],
            rule.get("messageExpression") or repr(rule.get("message", rule["rule"])),
            value,
        )
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name in value:
                yield from _rules(prop, value[name], f"{path}.{name}" if path else name)
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from _rules(schema["items"], item, f"{path}[{index}]")


def cel_rules(schema: dict[str, Any] | None = None) -> list[str]:
    schema = schema or openapi_schema()
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.extend(r["rule"] for r in node.get("x-kubernetes-validations", []))
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(schema)
    return found


def validate(obj: dict[str, Any]) -> list[str]:
    """Every refusal the API server would give this object: schema errors and failed CEL rules."""
    schema = openapi_schema()
    defaulted = apply_defaults(schema, obj)
    problems = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in jsonschema.Draft7Validator(_to_json_schema(schema)).iter_errors(defaulted)
    ]
    if problems:
        return problems  # as the API server: CEL runs only on objects the schema accepts
    env = celpy.Environment()
    for path, rule, message, value in _rules(schema, defaulted, ""):
        activation = {"self": celpy.adapter.json_to_cel(value)}

        def evaluate(expression: str, activation: dict[str, Any] = activation) -> Any:
            return env.program(env.compile(expression), functions=KUBERNETES_STRINGS).evaluate(activation)

        if not bool(evaluate(rule)):
            problems.append(f"{path}: {evaluate(message)!s}")
    return problems


def _split(text: celpy.celtypes.StringType, separator: celpy.celtypes.StringType) -> celpy.celtypes.ListType:
    return celpy.celtypes.ListType(
        [celpy.celtypes.StringType(part) for part in str(text).split(str(separator))]
    )


def _trim(text: celpy.celtypes.StringType) -> celpy.celtypes.StringType:
    return celpy.celtypes.StringType(str(text).strip())


KUBERNETES_STRINGS: dict[str, Any] = {"split": _split, "trim": _trim}
"""The two functions of the API server's CEL string library (cel-go's ext.Strings) that the CRD uses
and cel-python lacks: `'a,b'.split(',')` and `' a '.trim()`, as Kubernetes defines them."""
