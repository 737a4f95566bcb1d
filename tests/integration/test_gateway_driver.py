"""The real `@neondatabase/serverless` driver, from npm, against the gateway of a real `sdb up`.

Each scenario runs against a database that is always on and against one that has paused: that one
is woken by the request itself, once, and answers it. The driver is configured exactly as
`sdb dsn --http` and `--ws` say.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import node
from support.operator import Operator, database
from support.requirements import require_postgres

from controller.api import types
from controller.runtime.local import accounts
from controller.runtime.local.runtime import free_port

pytestmark = pytest.mark.postgres

EXPECTED: dict[str, Any] = {
    "query": {
        # The driver's own parsers read the gateway's text: int, bool, null, int[] and a timestamp.
        "row": {"n": 42, "s": "hi", "b": True, "nothing": None, "a": [1, 2], "t": True},
        "full": {"command": "SELECT", "rowCount": 1, "rows": [[7]], "type": 23},
    },
    "batch": {
        "inserted": [],
        "count": 2,
        "level": "serializable",
        # 1 / 0 fails the second transaction: its insert is rolled back with it.
        "rolledBack": {"code": "22012", "kept": 0},
    },
    "error": {
        "thrown": True,
        "neon": True,
        "code": "42P01",
        "message": 'relation "does_not_exist" does not exist',
        "position": "15",
    },
    "pool": {"inside": [{"name": "widget"}], "afterRollback": 0, "committed": True},
}


@pytest.fixture(scope="module")
def operator() -> Iterator[Operator]:
    require_postgres()
    node.require_driver()
    root = Path(tempfile.mkdtemp(prefix="sdb-gateway-"))
    running = Operator(root / "state", tick=0.2, metrics_port=free_port())
    running.start()
    try:
        running.apply(database("awake", autoPause={"enabled": False}))
        running.apply(database("resting", autoPause={"idleAfter": "1s"}))
        running.wait_phase("awake", types.Phase.ACTIVE)
        yield running
    finally:
        running.stop()
        shutil.rmtree(root, ignore_errors=True)
        accounts.remove_all(root / "state")


def driver_settings(operator: Operator, name: str, flag: str) -> dict[str, str]:
    _, out, _ = operator.sdb("dsn", name, flag, "--show-password")
    return dict(line.split(": ", 1) for line in out.splitlines())


def test_sdb_dsn_says_how_to_configure_the_driver(operator: Operator) -> None:
    http = driver_settings(operator, "awake", "--http")
    assert http["fetchEndpoint"] == f"http://{operator.gateway}/sql"
    assert http["connectionString"].startswith("postgresql://app:")
    assert http["connectionString"].endswith("@awake.default/app")
    ws = driver_settings(operator, "awake", "--ws")
    assert ws == {
        "wsProxy": f"{operator.gateway}/v2",
        "useSecureWebSocket": "false",
        "pipelineConnect": "false",
        "connectionString": http["connectionString"],
    }
    _, out, err = operator.sdb("dsn", "awake", "--http")
    assert "postgresql://app@awake.default/app" in out  # no password unless asked for
    assert "--show-password" in err


@pytest.mark.parametrize("scenario", list(EXPECTED))
@pytest.mark.parametrize("name", ["awake", "resting"])
def test_the_driver_is_answered(operator: Operator, name: str, scenario: str) -> None:
    if name == "resting":
        operator.wait_phase("resting", types.Phase.PAUSED, timeout=60)
    wakes = operator.metric("sdb_wakes_total", database=name)
    url = driver_settings(operator, name, "--http")["connectionString"]
    assert node.run(scenario, gateway=operator.gateway, url=url) == EXPECTED[scenario]
    assert operator.metric("sdb_wakes_total", database=name) == wakes + (name == "resting")
    door = "websocket" if scenario == "pool" else "http"
    assert operator.metric("sdb_gateway_served_total", database=name, door=door) > 0
