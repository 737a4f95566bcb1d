"""The real `@neondatabase/serverless` driver, run by Node from tests/js (which `./dev` installs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from support.requirements import missing

JS = Path(__file__).resolve().parents[1] / "js"


def require_driver() -> str:
    """The node binary, with tests/js's pinned packages installed (`npm ci` by `./dev test`)."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        missing("Node.js and npm on PATH (Debian's nodejs and npm)")
    if not (JS / "node_modules" / "@neondatabase" / "serverless").is_dir():
        missing("tests/js/node_modules (`./dev setup` runs npm ci there)")
    return node


def run(
    scenario: str,
    settings: dict[str, str],
    *,
    trusted: bool = True,
    timeout: float = 120,
    token: str | None = None,
) -> dict[str, Any]:
    """One scenario of tests/js/driver.mjs, with the driver configured by `sdb dsn --http` and `--ws`
    settings, trusting their CA unless told not to, and given a token when told (TOKEN); what it
    saw, as JSON."""
    env = {
        **({"TOKEN": token} if token is not None else {}),
        **{k: v for k, v in os.environ.items() if k != "NODE_EXTRA_CA_CERTS"},
        "FETCH_ENDPOINT": settings["fetchEndpoint"],
        "WS_PROXY": settings["wsProxy"],
        "USE_SECURE_WEBSOCKET": settings["useSecureWebSocket"],
        "DATABASE_URL": settings["connectionString"],
    }
    if trusted and "caCertificate" in settings:
        env["NODE_EXTRA_CA_CERTS"] = settings["caCertificate"]
    result = subprocess.run(
        [require_driver(), "driver.mjs", scenario],
        cwd=JS,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"node driver.mjs {scenario} exited {result.returncode}:\n{result.stderr}"
    document: dict[str, Any] = json.loads(result.stdout)
    return document
