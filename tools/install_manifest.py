"""manifests/install.yaml: the chart rendered with default values, after its own Namespace.

`kubectl apply --server-side -f manifests/install.yaml` installs what `helm install` does (the CRD
included), into the namespace `sdb-system`, which the file creates first. The namespace enforces the
restricted Pod Security Standard, which the operator's and the activator's pods meet.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CHART = "charts/serverless-db-operator"
RELEASE = "serverless-db-operator"
NAMESPACE = "sdb-system"

HEADER = f"# Generated from {CHART} with default values by 'make manifests'; edit the chart, not this file.\n"

NAMESPACE_OBJECT = f"""---
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    app.kubernetes.io/name: serverless-db-operator
    app.kubernetes.io/part-of: serverless-db-operator
    pod-security.kubernetes.io/enforce: restricted
"""


class HelmError(RuntimeError):
    """helm failed to render the chart; the message is its stderr."""


def helm_template(helm: Path, root: Path, *extra: str) -> str:
    """`helm template` of the chart with the release name and namespace install.yaml uses."""
    result = subprocess.run(
        [str(helm), "template", RELEASE, str(root / CHART), "--namespace", NAMESPACE, *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise HelmError(result.stderr.strip())
    return result.stdout


def render(helm: Path, root: Path) -> str:
    return HEADER + NAMESPACE_OBJECT + helm_template(helm, root, "--include-crds")
