"""docs/crd-reference.md from the CRD: every field with its type, default, limits and description.

The CRD's OpenAPI schema is the contract (`kubectl explain` reads the same descriptions), so the
reference is written from it: one section per object, a table of its fields, then the CEL rules that
apply to it. Nothing is described here that the schema does not say.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SOURCE = "charts/serverless-db-operator/crds/serverlessdatabases.dbscale.io.yaml"


@dataclass(frozen=True)
class Section:
    """One object in the schema: where it is, and its schema."""

    path: str
    schema: dict[str, Any]

    @property
    def anchor(self) -> str:
        return self.path.replace(".", "-").replace("[]", "").lower()


def render(crd: dict[str, Any]) -> str:
    names = crd["spec"]["names"]
    group = crd["spec"]["group"]
    lines = [
        f"# {names['kind']} reference",
        "",
        f"<!-- Generated from {SOURCE} by `python -m tools`; edit the CRD, not this file. -->",
        "",
    ]
    namespaced = crd["spec"].get("scope") == "Namespaced"
    for version in crd["spec"]["versions"]:
        lines += _version(group, names, version, namespaced=namespaced)
    return "\n".join(lines).rstrip() + "\n"


def _version(group: str, names: dict[str, Any], version: dict[str, Any], *, namespaced: bool) -> list[str]:
    api_version = f"{group}/{version['name']}"
    schema = version["schema"]["openAPIV3Schema"]
    served = "served" if version.get("served") else "not served"
    storage = ", the storage version" if version.get("storage") else ""
    short = ", ".join(f"`{n}`" for n in names.get("shortNames", []))
    lines = [
        f"`apiVersion: {api_version}` ({served}{storage}), `kind: {names['kind']}`; "
        f"{'namespaced' if namespaced else 'cluster-scoped'}. "
        f"`kubectl get {names['plural']}`" + (f" (short names {short})" if short else "") + ".",
        "",
        _prose(schema.get("description", "")),
        "",
    ]
    columns = version.get("additionalPrinterColumns", [])
    if columns:
        lines += [
            "## Columns of `kubectl get`",
            "",
            "| Column | From | Shown | Description |",
            "| --- | --- | --- | --- |",
        ]
        for column in columns:
            shown = "always" if not column.get("priority") else "with `-o wide`"
            lines.append(
                f"| {column['name']} | `{column['jsonPath']}` | {shown} | "
                f"{_prose(column.get('description', ''))} |"
            )
        lines.append("")
    for section in _sections(Section(names["kind"], schema)):
        lines += _section(section, api_version=api_version)
    return lines


def _sections(section: Section) -> Iterator[Section]:
    """This object, then every object below it, depth first in the schema's order."""
    yield section
    for name, prop in section.schema.get("properties", {}).items():
        if name in ("apiVersion", "kind", "metadata") and section.path.count(".") == 0:
            continue
        child = _object_of(prop)
        if child is not None:
            suffix = "[]" if prop.get("type") == "array" else ""
            yield from _sections(Section(f"{section.path}.{name}{suffix}", child))


def _object_of(prop: dict[str, Any]) -> dict[str, Any] | None:
    """The object schema a property holds (itself, or its items), if it has fields of its own."""
    if prop.get("type") == "object" and prop.get("properties"):
        return prop
    items = prop.get("items")
    if prop.get("type") == "array" and isinstance(items, dict):
        return _object_of(items)
    return None


def _section(section: Section, *, api_version: str) -> list[str]:
    schema = section.schema
    lines = [f'<a id="{section.anchor}"></a>', "", f"## `{section.path}`", ""]
    if section.path.count(".") > 0 and schema.get("description"):
        lines += [_prose(schema["description"]), ""]
    required = set(schema.get("required", []))
    lines += ["| Field | Type | Default | Description |", "| --- | --- | --- | --- |"]
    top = section.path.count(".") == 0
    for name, prop in schema.get("properties", {}).items():
        field = f"`{name}`" + (" (required)" if name in required else "")
        description = _prose(prop.get("description", ""))
        if top and name in ("apiVersion", "kind"):
            description = f"`{api_version if name == 'apiVersion' else section.path}`"
        if top and name == "metadata":
            description = "Standard object metadata; see the name rules below."
        limits = _limits(prop)
        if limits:
            description = f"{description} {limits}".strip()
        lines.append(f"| {field} | {_type(section, name, prop)} | {_default(prop)} | {_cell(description)} |")
    lines.append("")
    rules = schema.get("x-kubernetes-validations", [])
    if rules:
        lines += ["Validation (CEL, checked by the API server on every write):", ""]
        for rule in rules:
            lines.append(f"- {_prose(rule.get('message', ''))}: `{_text(rule['rule'])}`")
        lines.append("")
    return lines


def _type(section: Section, name: str, prop: dict[str, Any]) -> str:
    kind = prop.get("type", "any")
    child = _object_of(prop)
    if child is not None:
        suffix = "[]" if kind == "array" else ""
        target = Section(f"{section.path}.{name}{suffix}", child)
        label = "array of objects" if kind == "array" else "object"
        return f"[{label}](#{target.anchor})"
    if kind == "array":
        items = prop.get("items", {})
        return f"array of {items.get('type', 'any')}s"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"map of {prop['additionalProperties'].get('type', 'any')}s"
    text = str(kind)
    if prop.get("format"):
        text += f" ({prop['format']})"
    if prop.get("nullable"):
        text += ", nullable"
    return text


def _default(prop: dict[str, Any]) -> str:
    if "default" not in prop:
        return ""
    value = prop["default"]
    if value == {}:
        return "`{}`"
    return f"`{json.dumps(value)}`" if not isinstance(value, str) else f'`"{value}"`'


def _limits(prop: dict[str, Any]) -> str:
    parts: list[str] = []
    if "enum" in prop:
        parts.append("One of " + ", ".join(f"`{v}`" for v in prop["enum"]) + ".")
    bounds = [
        f"{label} {_number(prop[key])}"
        for key, label in (("minimum", "at least"), ("maximum", "at most"), ("multipleOf", "a multiple of"))
        if key in prop
    ]
    if bounds:
        text = ", ".join(bounds)
        parts.append(f"{text[0].upper()}{text[1:]}.")
    if "maxItems" in prop:
        parts.append(f"At most {prop['maxItems']} items.")
    if "pattern" in prop:
        parts.append(f"Matches `{prop['pattern']}`.")
    if _object_of(prop) is None:  # an object's own rules are listed in its section
        for rule in prop.get("x-kubernetes-validations", []):
            parts.append(f"Validation: {_prose(rule.get('message', rule['rule'])).rstrip('.')}.")
    return " ".join(parts)


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _text(text: str) -> str:
    return " ".join(text.split())


def _prose(text: str) -> str:
    """Schema text as Markdown prose: one line, and no `<name>` that a renderer would take for HTML."""
    return _text(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    """Markdown for a table cell: a `|`, even inside code, would end the cell."""
    return _text(text).replace("|", "\\|")
