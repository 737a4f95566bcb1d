"""values.schema.json: Helm refuses bad values before anything reaches the cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from helmchart import CHART, Obj, render, template

pytestmark = pytest.mark.helm

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        # spec / what helm says about it
        ({"operator": {"replicas": -1}}, "operator/replicas"),
        ({"activator": {"replicas": -1}}, "activator/replicas"),
        ({"operator": {"replicas": 1.5}}, "operator/replicas"),
        ({"image": {"tag": 3}}, "image/tag"),  # a number, as `--set image.tag=3` would give
        ({"replicaCount": 2}, "replicaCount"),  # an unknown top-level key
        ({"operator": {"replica": 2}}, "replica"),  # a typo one level down
        ({"image": {"pullPolicy": "Sometimes"}}, "image/pullPolicy"),
        ({"image": {"digest": "latest"}}, "image/digest"),
        ({"activator": {"portRange": "20000-20999"}}, "portRange"),  # fixed: the operator assigns the ports
        ({"activator": {"wakeTimeout": 0}}, "activator/wakeTimeout"),
        ({"prometheus": {"url": "prometheus:9090"}}, "prometheus/url"),
        ({"serviceMonitor": {"interval": "30 seconds"}}, "serviceMonitor/interval"),
        ({"networkPolicy": {"databasePorts": [70000]}}, "networkPolicy/databasePorts"),
        ({"networkPolicy": {"metricsFrom": [{"namespace": "monitoring"}]}}, "networkPolicy/metricsFrom"),
        ({"operator": {"resources": {"requests": {"memory": "lots"}}}}, "operator/resources"),
        ({"podMonitor": {"relabelings": [{"action": "rename"}]}}, "podMonitor/relabelings"),
        ({"dashboards": {"labelValue": 1}}, "dashboards/labelValue"),
        ({"fullnameOverride": "Not_A_Name"}, "fullnameOverride"),
        ({"tls": {"certManager": {"enabled": True}}}, "tls/certManager/issuerRef/name"),  # no issuer named
        ({"tls": {"certManager": {"issuerRef": {"kind": "Vault"}}}}, "tls/certManager/issuerRef/kind"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else "",
)
def test_bad_values_are_refused(values: Obj, complaint: str) -> None:
    result = template(values=values, check=False)
    assert result.returncode != 0, f"helm accepted {values}"
    assert "schema" in result.stderr
    assert complaint in result.stderr, result.stderr


@pytest.mark.parametrize(
    "values",
    [
        {"image": {"tag": "3"}},
        {"operator": {"replicas": 0}},
        {"activator": {"wakeTimeout": 2.5}},
        {"global": {"imageRegistry": "anything"}},  # a parent chart's globals pass through
        {"operator": {"resources": {"requests": {"cpu": 0.5, "memory": "1Gi"}}}},
    ],
    ids=json.dumps,
)
def test_good_values_are_accepted(values: Obj) -> None:
    assert render(values=values)


def _leaves(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")


def _schema_leaves(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, prop in node.get("properties", {}).items():
        if prop.get("type") == "object" and "properties" in prop:
            yield from _schema_leaves(prop, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_values_yaml_and_the_schema_list_the_same_values() -> None:
    """Every default is checked by the schema, and every value the schema allows has a default."""
    # maps of free-form content (resources, affinity...) are leaves for the schema
    schema = set(_schema_leaves(SCHEMA)) - {"global"}
    values = {next((s for s in schema if leaf.startswith(f"{s}.")), leaf) for leaf in _leaves(VALUES)}
    assert values == schema


def test_every_value_is_described() -> None:
    def walk(node: dict[str, Any], path: str) -> Iterator[str]:
        for key, prop in node.get("properties", {}).items():
            if not prop.get("description"):
                yield f"{path}{key}"
            yield from walk(prop, f"{path}{key}.")

    assert list(walk(SCHEMA, "")) == []
