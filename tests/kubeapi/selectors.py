"""Label and field selectors, parsed from their query-string form and matched against objects.

Label selectors support the whole set-based grammar the API server accepts for lists and watches:
`k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists) and `!k` (does not exist).
Field selectors support `=`, `==` and `!=` on the fields each resource type allows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, bad_request

_KEY = re.compile(r"^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" also match objects that lack the label, as in Kubernetes.
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def _split_top_level(text: str) -> list[str]:
    # Commas separate requirements, except inside the parentheses of `in (...)`.
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _check_key(key: str, whole: str) -> str:
    if not _KEY.match(key) or len(key.rsplit("/", maxsplit=1)[-1]) > 63:
        raise bad_request(f"unable to parse requirement: invalid label key {key!r} in {whole!r}")
    return key


def _check_value(value: str, whole: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise bad_request(f"unable to parse requirement: invalid label value {value!r} in {whole!r}")
    return value


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse `labelSelector`; raises a 400 ApiError on bad syntax, as the real server does."""
    if not text:
        return LabelSelector(())
    reqs: list[Requirement] = []
    for part in _split_top_level(text):
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s*\((.*)\)", part)
        if m:
            values = tuple(_check_value(v.strip(), text) for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(_check_key(m.group(1), text), m.group(2), values))
            continue
        m = re.fullmatch(r"([^=!\s]+)\s*(==|!=|=)\s*(\S*)", part)
        if m:
            op = "=" if m.group(2) in ("=", "==") else "!="
            reqs.append(Requirement(_check_key(m.group(1), text), op, (_check_value(m.group(3), text),)))
            continue
        m = re.fullmatch(r"!\s*(\S+)", part)
        if m:
            reqs.append(Requirement(_check_key(m.group(1), text), "!exists"))
            continue
        if re.fullmatch(r"\S+", part):
            reqs.append(Requirement(_check_key(part, text), "exists"))
            continue
        raise bad_request(f"unable to parse requirement: {part!r}")
    return LabelSelector(tuple(reqs))


def selector_from_label_selector(sel: Mapping[str, Any] | None) -> LabelSelector:
    """Convert a structured `metav1.LabelSelector` (matchLabels/matchExpressions) into a matcher."""
    if not sel:
        return LabelSelector(())
    reqs = [Requirement(k, "=", (str(v),)) for k, v in (sel.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in sel.get("matchExpressions") or []:
        reqs.append(Requirement(expr["key"], ops[expr["operator"]], tuple(expr.get("values") or ())))
    return LabelSelector(tuple(reqs))


# Fields each built-in resource allows in field selectors, besides metadata.name and metadata.namespace.
FIELD_LABELS: dict[str, tuple[str, ...]] = {
    "pods": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.podIPs",
        "status.nominatedNodeName",
    ),
    "events": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
    "events.events.k8s.io": ("regarding.kind", "regarding.name", "regarding.namespace", "reason", "type"),
    "secrets": ("type",),
    "namespaces": ("status.phase",),
    "nodes": ("spec.unschedulable",),
    "persistentvolumeclaims": (),
    "statefulsets.apps": ("status.successful",),
    "replicasets.apps": ("status.replicas",),
}


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    equal: bool
    value: str


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...]

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all((field_value(obj, r.field) == r.value) == r.equal for r in self.requirements)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """A field's value as the server's field-label conversion renders it (strings, "" when absent)."""
    if path == "source":
        src = obj.get("source") or {}
        return str(src.get("component", "")) if isinstance(src, dict) else ""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, list):
        # status.podIPs matches the primary IP only.
        return str(cur[0].get("ip", "")) if cur and isinstance(cur[0], dict) else ""
    return str(cur)


def parse_field_selector(
    text: str | None, resource_key: str, extra_fields: tuple[str, ...] = ()
) -> FieldSelector:
    """Parse `fieldSelector`; unsupported fields are a 400, as on the real server."""
    if not text:
        return FieldSelector(())
    allowed = {"metadata.name", "metadata.namespace", *FIELD_LABELS.get(resource_key, ()), *extra_fields}
    reqs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"([^=!\s]+)\s*(==|!=|=)\s*(.*)", part)
        if not m:
            raise bad_request(f"invalid selector: {text!r}; can't understand {part!r}")
        if m.group(1) not in allowed:
            raise ApiError(
                400,
                "BadRequest",
                f'Unable to find "{resource_key}" that match label selector "", field selector "{text}": '
                f"field label not supported: {m.group(1)}",
            )
        reqs.append(FieldRequirement(m.group(1), m.group(2) != "!=", m.group(3).strip()))
    return FieldSelector(tuple(reqs))


Matcher = Callable[[Mapping[str, Any]], bool]


def object_matcher(labels: LabelSelector, fields: FieldSelector) -> Matcher:
    """One predicate for both selectors, applied to whole objects."""

    def match(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return labels.matches(meta.get("labels")) and fields.matches(obj)

    return match
