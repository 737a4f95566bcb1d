"""Shared by the benchmarks: a real operator on a scratch state directory, and reporting."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "bench" / "reports"
sys.path.insert(0, str(ROOT / "tests"))

from support.operator import Operator, database, wait_for  # noqa: E402

from controller.api import units  # noqa: E402
from controller.runtime.local.runtime import Endpoint  # noqa: E402

__all__ = ["Operator", "database", "percentile", "pgbench", "report", "scratch_operator", "tps", "wait_for"]


def pgbench(port: int, endpoint: Endpoint, *args: str) -> str:
    """pgbench as `endpoint`'s role against `port` on loopback; its report."""
    binary = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    env = {**os.environ, "PGPASSWORD": endpoint.password}
    result = subprocess.run(
        [binary, "-h", "127.0.0.1", "-p", str(port), "-U", endpoint.user, *args, endpoint.database],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def tps(output: str) -> float:
    """The transactions per second of a pgbench report, not counting its connections."""
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", output)
    if match is None:
        raise RuntimeError(f"no tps in pgbench output:\n{output}")
    return float(match.group(1))


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (share in 0..1)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))
    return ordered[index]


def scratch_operator(**kwargs: Any) -> Operator:
    root = Path(tempfile.mkdtemp(prefix="sdb-bench-"))
    return Operator(root / "state", **kwargs)


def report(name: str, figures: dict[str, float], detail: dict[str, Any]) -> None:
    """Write the report next to the benchmarks and print the figures, the last line as key=value pairs."""
    REPORTS.mkdir(exist_ok=True)
    body = {
        "benchmark": name,
        "when": units.format_time(units.now_utc()),
        "machine": {"cpus": _cpus(), "python": platform.python_version(), "kernel": platform.release()},
        "figures": figures,
        "detail": detail,
    }
    (REPORTS / f"{name}.json").write_text(json.dumps(body, indent=2) + "\n")
    for key, value in detail.items():
        if not isinstance(value, list | dict):
            print(f"{key}: {value}")
    print(" ".join(f"{key}={_figure(value)}" for key, value in figures.items()))


def _figure(value: float) -> str:
    """Counts as they are (20000, not 2e+04); measures to four significant digits."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.4g}"


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def median(values: list[float]) -> float:
    return statistics.median(values)
