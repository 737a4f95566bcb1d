"""Every Kubernetes API call the operator and the activator make, as one declared table.

The client wrapper refuses a call the table does not list, and the chart's RBAC is checked against
the table by a test, so code and RBAC cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    group: str
    """API group ("" for the core group)."""
    resource: str
    """Plural resource name, with "/subresource" for a subresource."""
    verbs: frozenset[str]


def _rule(group: str, resource: str, *verbs: str) -> Rule:
    return Rule(group, resource, frozenset(verbs))


OPERATOR: tuple[Rule, ...] = (
    _rule("dbscale.io", "serverlessdatabases", "get", "list", "watch", "patch", "update"),
    _rule("dbscale.io", "serverlessdatabases/status", "get", "patch", "update"),
    _rule("dbscale.io", "wakerequests", "get", "list", "watch", "delete"),
    _rule("apps", "statefulsets", "get", "list", "watch", "create", "patch", "delete"),
    _rule("apps", "deployments", "get", "list", "watch", "patch", "delete"),
    _rule("", "services", "get", "list", "watch", "create", "patch", "delete"),
    _rule("discovery.k8s.io", "endpointslices", "get", "list", "watch", "create", "patch", "delete"),
    _rule("", "pods", "get", "list", "watch"),
    _rule("", "pods/resize", "patch"),
    _rule("", "persistentvolumeclaims", "get", "delete"),
    _rule("", "secrets", "get", "create", "patch", "delete"),
    _rule("", "configmaps", "get", "list", "watch", "create", "patch", "delete"),
    _rule("cert-manager.io", "certificates", "patch"),
    _rule("networking.k8s.io", "networkpolicies", "get", "create", "patch", "delete"),
    _rule("", "events", "create", "patch"),
    _rule("coordination.k8s.io", "leases", "get", "create", "update"),
)
"""The operator: a ClusterRole, since ServerlessDatabases live in any namespace. The cert-manager rule
is inert where cert-manager is not installed, or not chosen (`--cert-manager-issuer`)."""

ACTIVATOR: tuple[Rule, ...] = (
    _rule("dbscale.io", "serverlessdatabases", "get", "list", "watch"),
    _rule("dbscale.io", "wakerequests", "create"),
    _rule("", "pods", "list"),
    _rule("authentication.k8s.io", "tokenreviews", "create"),
)
"""The activator reads which database each of its ports serves (from status, which only the operator
writes), asks for a wake by making a WakeRequest, looks up which namespace a client's pod is in,
and asks the API server whether a ServiceAccount token a client gave as its password is genuine (a
TokenReview: it reads no Secret and no token of its own). It cannot change any ServerlessDatabase."""


def allows(rules: tuple[Rule, ...], group: str, resource: str, verb: str) -> bool:
    return any(r.group == group and r.resource == resource and verb in r.verbs for r in rules)
