"""The chart's RBAC rules, written from the declared permission table.

`controller/runtime/kubernetes/permissions.py` lists every API call the operator and the activator
make; this renders it as two named Helm templates (`sdb.operatorRules`, `sdb.activatorRules`) that
the chart's ClusterRoles include. One rule per resource, in the table's order, verbs sorted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from controller.runtime.kubernetes import permissions

SOURCE = "controller/runtime/kubernetes/permissions.py"


def render_rules(rules: Sequence[permissions.Rule]) -> str:
    """PolicyRule YAML for the rules, one list item per rule."""
    lines: list[str] = []
    for rule in rules:
        lines += [
            f"- apiGroups: [{json.dumps(rule.group)}]",
            f"  resources: [{json.dumps(rule.resource)}]",
            f"  verbs: [{', '.join(json.dumps(v) for v in sorted(rule.verbs))}]",
        ]
    return "\n".join(lines)


def render_template(
    operator: Sequence[permissions.Rule] = permissions.OPERATOR,
    activator: Sequence[permissions.Rule] = permissions.ACTIVATOR,
) -> str:
    """The chart's templates/_rules.tpl."""
    parts = [
        f"{{{{/* Generated from {SOURCE} by `python -m tools rbac`; do not edit. */}}}}",
        "",
    ]
    for name, rules in (("sdb.operatorRules", operator), ("sdb.activatorRules", activator)):
        parts += [f'{{{{- define "{name}" -}}}}', render_rules(rules), "{{- end }}", ""]
    return "\n".join(parts)
