"""docs/helm-values.md from the chart's values.schema.json (descriptions) and values.yaml (defaults).

The schema is what Helm enforces, so every value it accepts is listed, with the default the chart
ships; a value without a description is an error, so the page cannot fall behind the schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

SOURCE = "charts/serverless-db-operator/values.schema.json"


class UndocumentedValueError(ValueError):
    """A value in the schema without a description."""


def rows(schema: dict[str, Any], values: dict[str, Any]) -> Iterator[tuple[str, str, Any, str]]:
    """(path, type, default, description) for every leaf value, in the schema's order."""
    yield from _walk(schema, schema, values, "")


def _walk(
    root: dict[str, Any], node: dict[str, Any], values: Any, prefix: str
) -> Iterator[tuple[str, str, Any, str]]:
    for name, prop in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        if name == "global" and not prefix:
            continue
        here = values.get(name) if isinstance(values, dict) else None
        if prop.get("type") == "object" and "properties" in prop:
            yield from _walk(root, prop, here, f"{path}.")
            continue
        description = prop.get("description")
        if not description:
            raise UndocumentedValueError(f"{SOURCE}: {path} has no description")
        yield path, _type(root, prop), here, description


def _type(root: dict[str, Any], prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        target = root["$defs"][prop["$ref"].rsplit("/", 1)[1]]
        kind = target.get("type", "")
        if kind == "object" and isinstance(target.get("additionalProperties"), dict):
            return f"map of {target['additionalProperties'].get('type', 'value')}s"
        return "list" if kind == "array" else str(kind)
    kind = prop.get("type", "")
    if kind == "array":
        return "list"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    return str(kind)


def render(schema: dict[str, Any], values: dict[str, Any]) -> str:
    lines = [
        "# Helm values",
        "",
        f"<!-- Generated from {SOURCE} and values.yaml by `python -m tools`; edit those, not this file. -->",
        "",
        "Every value the `serverless-db-operator` chart accepts; `values.schema.json` refuses any other key",
        "and any value of the wrong type (`helm install` and `helm upgrade` stop before touching the",
        "cluster). Set them with `--set path=value` or a file given to `-f`.",
        "",
        "| Value | Type | Default | Description |",
        "| --- | --- | --- | --- |",
    ]
    for path, kind, default, description in rows(schema, values):
        lines.append(f"| `{path}` | {kind} | {_default(default)} | {_cell(description)} |")
    return "\n".join(lines) + "\n"


def _default(value: Any) -> str:
    if value in ("", None):
        return '`""`' if value == "" else ""
    return f"`{json.dumps(value, separators=(', ', ': '))}`".replace("|", "\\|")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
