"""The kind suite (tests/e2e/run.sh) as a test: skipped, with the reason, where it cannot run.

It needs a Docker engine that answers (`docker info`; a docker client alone is not enough) and
kind; kubectl and helm come from .cache/tools (./dev setup) or PATH. It takes several minutes: a
cluster, an image build, and a database taken through pause, wake, park, wake and delete.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "tests/e2e/run.sh"
TOOLS = ROOT / ".cache/tools"


def _missing() -> list[str]:
    """Why the suite cannot run here; empty when it can."""
    path = f"{TOOLS}{os.pathsep}{os.environ.get('PATH', '')}"
    reasons = [
        f"{tool} is not installed"
        for tool in ("docker", "kind", "kubectl", "helm")
        if not shutil.which(tool, path=path)
    ]
    if shutil.which("docker"):
        try:
            info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            reasons.append("`docker info` did not answer within 30s")
        else:
            if info.returncode != 0:
                last = (info.stderr.strip().splitlines() or ["no output"])[-1]
                reasons.append(f"no Docker engine answers (`docker info`: {last})")
    return reasons


@pytest.mark.timeout(3600)
def test_kind_suite() -> None:
    reasons = _missing()
    if reasons:
        pytest.skip(f"the kind suite needs a Docker engine and kind: {'; '.join(reasons)}")
    result = subprocess.run([str(RUN)], cwd=ROOT, capture_output=True, text=True, timeout=3500, check=False)
    assert result.returncode == 0, (
        f"tests/e2e/run.sh failed:\n{result.stdout[-20000:]}\n{result.stderr[-20000:]}"
    )
    assert "PASS: the kind suite" in result.stderr
