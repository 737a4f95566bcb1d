"""The chart's part of the pooled endpoint: the PgBouncer image the operator gives each pooler, pinned
in the values as in the operator's default. (The pooler's own objects are the operator's, checked
against the Kubernetes 1.33 schemas in tests/kubernetes/test_builders.py.)"""

from __future__ import annotations

import pytest
from helmchart import container, default_objects, deployment, render

from controller.app import cli
from controller.runtime.kubernetes import pooler as pooled

pytestmark = pytest.mark.helm


def _pooler_image(args: list[str]) -> str:
    return args[args.index("--pooler-image") + 1]


def test_the_chart_pins_the_operators_default_pgbouncer_image() -> None:
    args = container(deployment(default_objects(), "operator"))["args"]
    assert _pooler_image(args) == pooled.IMAGE
    parsed = cli._parser().parse_args(args)
    assert parsed.pooler_image == pooled.IMAGE


def test_a_pooler_image_without_a_digest_is_the_tag_alone() -> None:
    values = {
        "pooler": {"image": {"repository": "registry.example/pgbouncer", "tag": "1.24.1", "digest": ""}}
    }
    args = container(deployment(render(values=values), "operator"))["args"]
    assert _pooler_image(args) == "registry.example/pgbouncer:1.24.1"
