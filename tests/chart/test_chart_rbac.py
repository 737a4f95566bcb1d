"""The chart's RBAC grants exactly the API calls the code declares, and nothing more.

`controller/runtime/kubernetes/permissions.py` is the table of every call the operator and the
activator make (the client refuses any other). Here each component's ClusterRole, as helm renders
it, is compared with that table call by call: a verb the code needs and the role lacks fails, and
so does a verb, resource or wildcard the role grants that the code never uses.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from helmchart import NAMESPACE, RELEASE, Obj, default_objects, deployment, find, one, render

from controller.runtime.kubernetes import permissions

pytestmark = pytest.mark.helm

Grant = tuple[str, str, str]  # (API group, resource, verb)


def granted(role: Obj) -> set[Grant]:
    grants: set[Grant] = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {sorted(rule)}"
        grants |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return grants


def declared(rules: Iterable[permissions.Rule]) -> set[Grant]:
    return {(rule.group, rule.resource, verb) for rule in rules for verb in rule.verbs}


@pytest.mark.parametrize(
    ("component", "rules"),
    [("operator", permissions.OPERATOR), ("activator", permissions.ACTIVATOR)],
)
def test_cluster_role_grants_exactly_the_declared_calls(
    component: str, rules: tuple[permissions.Rule, ...]
) -> None:
    role = _role_of(default_objects(), component)
    grants = granted(role)
    assert not [g for g in grants if "*" in g], "no wildcards"
    missing = declared(rules) - grants
    extra = grants - declared(rules)
    assert not missing, (
        f"the code calls these, the {component}'s ClusterRole does not allow them: {sorted(missing)}"
    )
    assert not extra, f"the {component}'s ClusterRole allows calls the code never makes: {sorted(extra)}"


def test_comparison_catches_a_drift() -> None:
    """The check above fails when the table and the role differ either way (a control for it)."""
    role = _role_of(default_objects(), "operator")
    table = declared(permissions.OPERATOR)
    assert granted(role) == table
    widened = {
        **role,
        "rules": [*role["rules"], {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    }
    assert granted(widened) - table == {("", "secrets", "list")}
    narrowed = {**role, "rules": role["rules"][1:]}
    assert table - granted(narrowed)


def test_secrets_only_as_far_as_listed() -> None:
    grants = granted(_role_of(default_objects(), "operator"))
    secrets = {verb for group, resource, verb in grants if (group, resource) == ("", "secrets")}
    assert secrets == {
        verb for rule in permissions.OPERATOR if rule.resource == "secrets" for verb in rule.verbs
    }
    assert not {g for g in granted(_role_of(default_objects(), "activator")) if g[1] == "secrets"}


def _role_of(objects: Iterable[Obj], component: str) -> Obj:
    """The ClusterRole bound to the ServiceAccount the component's Deployment runs as."""
    objects = list(objects)
    account = deployment(objects, component)["spec"]["template"]["spec"]["serviceAccountName"]
    bindings = [
        b
        for b in find(objects, "ClusterRoleBinding")
        if {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE} in b["subjects"]
    ]
    assert len(bindings) == 1, f"{component}: expected one ClusterRoleBinding for {account}"
    assert bindings[0]["roleRef"]["kind"] == "ClusterRole"
    assert bindings[0]["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
    assert not find(objects, "RoleBinding"), "no namespaced grants beside the ClusterRoles"
    return one(objects, "ClusterRole", bindings[0]["roleRef"]["name"])


def test_service_accounts_exist_for_the_bindings() -> None:
    objects = default_objects()
    accounts = {sa["metadata"]["name"] for sa in find(objects, "ServiceAccount")}
    for component in ("operator", "activator"):
        assert deployment(objects, component)["spec"]["template"]["spec"]["serviceAccountName"] in accounts
    for sa in find(objects, "ServiceAccount"):
        assert sa["metadata"]["namespace"] == NAMESPACE


def test_aggregated_user_roles() -> None:
    objects = default_objects()
    edit = one(objects, "ClusterRole", f"{RELEASE}-edit")
    view = one(objects, "ClusterRole", f"{RELEASE}-view")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    for role in (edit, view):
        assert {group for group, _, _ in granted(role)} == {"dbscale.io"}
        assert not [g for g in granted(role) if "*" in g]
    # users write specs; only the operator writes status
    assert not {v for _, r, v in granted(edit) if r == "serverlessdatabases/status"} - {
        "get",
        "list",
        "watch",
    }
    assert {v for _, _, v in granted(view)} == {"get", "list", "watch"}
    off = render(values={"rbac": {"aggregateToDefaultRoles": False}})
    assert sorted(r["metadata"]["name"] for r in find(off, "ClusterRole")) == [
        RELEASE,
        f"{RELEASE}-activator",
    ]


def test_rbac_can_be_left_to_the_platform() -> None:
    objects = render(values={"rbac": {"create": False, "aggregateToDefaultRoles": False}})
    assert find(objects, "ClusterRole") == []
    assert find(objects, "ClusterRoleBinding") == []
    assert len(find(objects, "ServiceAccount")) == 2
