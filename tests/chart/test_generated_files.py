"""The generated files are current: the chart's RBAC rules, the docs references, install.yaml.

Each is regenerated in memory and compared with the committed file; `python -m tools`
rewrites them. Beyond staleness, the references are checked against their sources independently
of the generators: every CRD field, every metric and every chart value appears in them.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmchart import HELM, NAMESPACE, ROOT, default_objects, parse, require_helm
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from controller.metrics import exposition
from tools import generate, install_manifest

PURE = [o for o in generate.OUTPUTS if not o.needs_helm]


@pytest.mark.parametrize("output", PURE, ids=[o.name for o in PURE])
def test_generated_file_is_current(output: generate.Output) -> None:
    committed = (ROOT / output.path).read_text()
    assert committed == output.produce(generate.Context(root=ROOT, helm=None)), (
        f"{output.path} is stale: run `python -m tools {output.name}` and commit the result"
    )


@pytest.mark.helm
def test_install_manifest_is_current() -> None:
    require_helm()
    output = next(o for o in generate.OUTPUTS if o.name == "install-manifest")
    committed = (ROOT / output.path).read_text()
    assert committed == output.produce(generate.Context(root=ROOT, helm=HELM)), (
        "manifests/install.yaml is stale: run `make manifests`"
    )


@pytest.mark.helm
def test_install_manifest_creates_its_namespace_first() -> None:
    require_helm()
    objects = parse((ROOT / "manifests/install.yaml").read_text())
    assert objects[0]["kind"] == "Namespace"
    assert objects[0]["metadata"]["name"] == NAMESPACE
    assert objects[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert objects[1]["kind"] == "CustomResourceDefinition"  # before anything that could use it
    assert objects[1:] == list(default_objects())


def test_check_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(ROOT / "charts", tmp_path / "charts")
    assert generate.main(["--root", str(tmp_path), *(o.name for o in PURE)]) == 0
    assert generate.main(["--root", str(tmp_path), "--check", *(o.name for o in PURE)]) == 0
    stale = tmp_path / "docs/metrics.md"
    stale.write_text(stale.read_text().replace("sdb_pauses_total", "sdb_pauses"))
    capsys.readouterr()
    assert generate.main(["--root", str(tmp_path), "--check", *(o.name for o in PURE)]) == 1
    assert "stale: docs/metrics.md" in capsys.readouterr().err


# -- the references against their sources ---------------------------------------------------------


def _crd_fields(schema: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
    """(section, field) for every property below the root, as the reference groups them."""
    for name, prop in schema.get("properties", {}).items():
        if path == "ServerlessDatabase" and name in ("apiVersion", "kind", "metadata"):
            yield path, name
            continue
        yield path, name
        node = prop["items"] if prop.get("type") == "array" and "items" in prop else prop
        if node.get("type") == "object" and node.get("properties"):
            yield from _crd_fields(node, f"{path}.{name}" + ("[]" if node is not prop else ""))


def test_crd_reference_lists_every_field() -> None:
    crd = yaml.safe_load(
        (ROOT / "charts/serverless-db-operator/crds/serverlessdatabases.dbscale.io.yaml").read_text()
    )
    reference = (ROOT / "docs/crd-reference.md").read_text()
    sections = _sections(reference)
    fields = list(_crd_fields(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "ServerlessDatabase"))
    assert len(fields) > 40
    for section, name in fields:
        assert section in sections, f"no section for {section}"
        assert f"| `{name}`" in sections[section], f"{section}.{name} is missing from the reference"


def _sections(markdown: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for chunk in markdown.split("\n## `")[1:]:
        title, _, body = chunk.partition("`")
        found[title] = body
    return found


def test_metrics_reference_lists_every_series() -> None:
    registry = CollectorRegistry()
    metrics = exposition.OperatorMetrics(registry=registry)
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*("x" for _ in metric._labelnames))
    exposition_text = generate_latest(registry).decode()
    served = {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in exposition_text.splitlines()
        if line and not line.startswith("#")
    }
    served = {name for name in served if not name.endswith("_created")}
    reference = (ROOT / "docs/metrics.md").read_text()
    assert len(served) >= 20
    for name in served:
        assert f"`{name}`" in reference, f"{name} is missing from docs/metrics.md"


def test_values_reference_lists_every_value() -> None:
    values = yaml.safe_load((ROOT / "charts/serverless-db-operator/values.yaml").read_text())
    reference = (ROOT / "docs/helm-values.md").read_text()

    def leaves(node: Any, prefix: str) -> Iterator[str]:
        for key, value in node.items():
            if isinstance(value, dict) and value and key not in ("resources",):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    for leaf in leaves(values, ""):
        assert f"| `{leaf}` |" in reference, f"{leaf} is missing from docs/helm-values.md"


def test_install_manifest_module_names_the_chart() -> None:
    assert (ROOT / install_manifest.CHART / "Chart.yaml").exists()
