"""Write, or check, every generated file: `python -m tools [--check] [NAME ...]`.

Outputs, in the order they are made (the chart's RBAC rules first: the install manifest renders them):

  rbac               charts/serverless-db-operator/templates/_rules.tpl   from permissions.py
  crd-manifest       manifests/crd.yaml                                   from the chart's CRD
  crd-reference      docs/crd-reference.md                                from the CRD
  metrics-reference  docs/metrics.md                                      from metrics/exposition.py
  values-reference   docs/helm-values.md                                  from values.schema.json
  install-manifest   manifests/install.yaml                               from the chart, with helm

`--check` writes nothing and exits 1, naming each stale file, when any differs from what it would be.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tools import crd_reference, install_manifest, metrics_reference, rbac, values_reference

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts/serverless-db-operator"


@dataclass(frozen=True)
class Context:
    root: Path
    helm: Path | None
    """The helm binary; only the install manifest needs it."""


@dataclass(frozen=True)
class Output:
    name: str
    path: str
    """Relative to the repository's root."""
    produce: Callable[[Context], str]
    needs_helm: bool = False


def _crd_reference(context: Context) -> str:
    crd = yaml.safe_load((context.root / crd_reference.SOURCE).read_text())
    return crd_reference.render(crd)


def _values_reference(context: Context) -> str:
    chart = context.root / "charts/serverless-db-operator"
    schema = json.loads((chart / "values.schema.json").read_text())
    values = yaml.safe_load((chart / "values.yaml").read_text())
    return values_reference.render(schema, values)


def _install_manifest(context: Context) -> str:
    assert context.helm is not None
    return install_manifest.render(context.helm, context.root)


CRD = "charts/serverless-db-operator/crds/serverlessdatabases.dbscale.io.yaml"
CRDS = "charts/serverless-db-operator/crds"


def _crd_manifest(context: Context) -> str:
    header = f"# Generated from {CRDS}/*.yaml by 'make manifests'; edit those files, not this one.\n"
    crds = sorted((context.root / CRDS).glob("*.yaml"))
    return header + "---\n".join(path.read_text() for path in crds)


OUTPUTS: tuple[Output, ...] = (
    Output("rbac", "charts/serverless-db-operator/templates/_rules.tpl", lambda _: rbac.render_template()),
    Output("crd-manifest", "manifests/crd.yaml", _crd_manifest),
    Output("crd-reference", "docs/crd-reference.md", _crd_reference),
    Output("metrics-reference", "docs/metrics.md", lambda _: metrics_reference.render()),
    Output("values-reference", "docs/helm-values.md", _values_reference),
    Output("install-manifest", "manifests/install.yaml", _install_manifest, needs_helm=True),
)


def default_helm(root: Path = ROOT) -> Path | None:
    """The helm `./dev setup` fetches, else one on PATH."""
    fetched = root / ".cache/tools/helm"
    if fetched.exists():
        return fetched
    found = shutil.which("helm")
    return Path(found) if found else None


def stale(context: Context, outputs: Sequence[Output] = OUTPUTS) -> list[str]:
    """Paths of the outputs whose committed text differs from what they would be now."""
    found = []
    for output in outputs:
        path = context.root / output.path
        if not path.exists() or path.read_text() != output.produce(context):
            found.append(output.path)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="outputs to make (default: all)")
    parser.add_argument("--check", action="store_true", help="write nothing; fail if any output is stale")
    parser.add_argument(
        "--helm", type=Path, default=None, help="the helm binary (default: .cache/tools/helm)"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    known = {o.name: o for o in OUTPUTS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown output {', '.join(unknown)}; known: {', '.join(known)}")
    outputs = [o for o in OUTPUTS if not args.names or o.name in args.names]
    helm = args.helm or default_helm(args.root)
    if helm is None and any(o.needs_helm for o in outputs):
        print("error: helm not found; run ./dev setup or pass --helm", file=sys.stderr)
        return 1
    context = Context(root=args.root, helm=helm)
    try:
        if args.check:
            found = stale(context, outputs)
            for path in found:
                print(f"stale: {path} (run `python -m tools`)", file=sys.stderr)
            return 1 if found else 0
        for output in outputs:
            path = args.root / output.path
            path.parent.mkdir(parents=True, exist_ok=True)
            text = output.produce(context)
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                print(f"wrote {output.path}")
    except (install_manifest.HelmError, values_reference.UndocumentedValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
