"""The chart tests' tools: the real helm and kubectl that `./dev setup` fetches, and rendered objects.

Every test that needs helm calls `require_helm()`, which skips (with the reason) when the binary is
missing; `./dev test` fetches it first, so in CI these tests run.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from support.requirements import missing

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/serverless-db-operator"
HELM = ROOT / ".cache/tools/helm"
KUBECTL = ROOT / ".cache/tools/kubectl"
ALL_FEATURES = Path(__file__).with_name("all-features.yaml")
RELEASE = "serverless-db-operator"
NAMESPACE = "sdb-system"

Obj = dict[str, Any]
Rendered = Callable[[], tuple[Obj, ...]]
"""`default_objects` or `all_features_objects`, as a test parameter."""


def require_helm() -> None:
    if not HELM.exists():
        missing(f"{HELM.relative_to(ROOT)}, which `./dev setup` fetches")


def require_kubectl() -> None:
    if not KUBECTL.exists():
        missing(f"{KUBECTL.relative_to(ROOT)}, which `./dev setup` fetches")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    require_helm()
    result = subprocess.run([str(HELM), *args], capture_output=True, text=True, check=False, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def template(
    *,
    values: Obj | None = None,
    files: Iterable[Path] = (),
    crds: bool = False,
    chart: Path = CHART,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart as install.yaml's release, with values files and then `values`."""
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE]
    for path in files:
        args += ["-f", str(path)]
    if crds:
        args.append("--include-crds")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        if values is not None:
            yaml.safe_dump(values, extra)
            extra.flush()
            args += ["-f", extra.name]
        return helm(*args, check=check)


def parse(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def render(
    *, values: Obj | None = None, files: Iterable[Path] = (), crds: bool = False, chart: Path = CHART
) -> list[Obj]:
    return parse(template(values=values, files=files, crds=crds, chart=chart).stdout)


@functools.cache
def default_objects() -> tuple[Obj, ...]:
    """The chart with default values, CRD included (as manifests/install.yaml has it)."""
    return tuple(render(crds=True))


@functools.cache
def all_features_objects() -> tuple[Obj, ...]:
    """The chart with every optional feature on (tests/chart/all-features.yaml)."""
    return tuple(render(files=[ALL_FEATURES], crds=True))


def find(objects: Iterable[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: Iterable[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objects, kind, name)
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    )
    return found[0]


def deployment(objects: Iterable[Obj], component: str) -> Obj:
    found = [
        o
        for o in find(objects, "Deployment")
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {component} Deployment"
    return found[0]


def container(deploy: Obj) -> Obj:
    containers = deploy["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Obj = containers[0]
    return result


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
