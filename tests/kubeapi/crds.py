"""Building CustomResourceDefinitions for tests, so a test can register a resource in one line."""

from __future__ import annotations

from typing import Any

PRESERVE: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def custom_resource_definition(
    group: str,
    kind: str,
    plural: str,
    *,
    version: str = "v1alpha1",
    namespaced: bool = True,
    status_subresource: bool = True,
    scale_subresource: bool = False,
    spec_schema: dict[str, Any] | None = None,
    status_schema: dict[str, Any] | None = None,
    short_names: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A v1 CRD with one served, stored version. Schemas default to "anything goes"."""
    subresources: dict[str, Any] = {}
    if status_subresource:
        subresources["status"] = {}
    if scale_subresource:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    names: dict[str, Any] = {
        "plural": plural,
        "singular": kind.lower(),
        "kind": kind,
        "listKind": f"{kind}List",
    }
    if short_names:
        names["shortNames"] = list(short_names)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced" if namespaced else "Cluster",
            "names": names,
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": spec_schema or PRESERVE,
                                "status": status_schema or PRESERVE,
                            },
                        }
                    },
                }
            ],
        },
    }


def serverless_database_crd(**overrides: Any) -> dict[str, Any]:
    """A small stand-in for the project's `serverlessdatabases.dbscale.io` CRD (status subresource on)."""
    spec_schema = {
        "type": "object",
        "properties": {
            "minCapacity": {"type": "number", "minimum": 0},
            "maxCapacity": {"type": "number", "default": 4},
            "paused": {"type": "boolean"},
        },
    }
    status_schema = {
        "type": "object",
        "properties": {
            "phase": {"type": "string"},
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
        "x-kubernetes-preserve-unknown-fields": True,
    }
    args: dict[str, Any] = {
        "spec_schema": spec_schema,
        "status_schema": status_schema,
        "short_names": ("sdb",),
    }
    args.update(overrides)
    return custom_resource_definition("dbscale.io", "ServerlessDatabase", "serverlessdatabases", **args)
