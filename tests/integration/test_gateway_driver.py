"""The real `@neondatabase/serverless` driver, from npm, against the gateway of a real `sdb up`.

Each scenario runs against a database that is always on and against one that has paused: that one
is woken by the request itself, once, and answers it. The driver is configured exactly as
`sdb dsn --http` and `--ws` say, over HTTPS and `wss://`, trusting the operator's CA (and refusing
the gateway when it does not).
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


DOORS = ("http", "websocket")


@pytest.fixture(scope="module")
def operator() -> Iterator[Operator]:
    require_postgres()
    node.require_driver()
    root = Path(tempfile.mkdtemp(prefix="sdb-gateway-"))
    running = Operator(root / "state", tick=0.2, metrics_port=free_port())
    running.start()
    try:
        running.apply(database("awake", autoPause={"enabled": False}))
        # A woken database pauses again when no session shows within idleAfter of its wake: the
        # driver's session over WebSocket (two TLS handshakes and SCRAM in JavaScript) can take
        # over a second to show on a loaded machine.
        running.apply(database("resting", autoPause={"idleAfter": "3s"}))
        running.apply(database("sealed", autoPause={"enabled": False}, tls={"required": True}))
        running.wait_phase("awake", types.Phase.ACTIVE)
        running.wait_phase("sealed", types.Phase.ACTIVE)
        yield running
    finally:
        running.stop()
        shutil.rmtree(root, ignore_errors=True)
        accounts.remove_all(root / "state")


def parse(out: str) -> dict[str, str]:
    """`name: value` lines."""
    return {name: value for name, _, value in (line.partition(": ") for line in out.splitlines())}


def driver_settings(operator: Operator, name: str) -> dict[str, str]:
    """What `sdb dsn NAME --http` and `--ws` print, together."""
    settings: dict[str, str] = {}
    for flag in ("--http", "--ws"):
        _, out, _ = operator.sdb("dsn", name, flag, "--show-password")
        settings.update(parse(out))
    return settings


def test_sdb_dsn_says_how_to_configure_the_driver(operator: Operator) -> None:
    _, out, _ = operator.sdb("dsn", "awake", "--http", "--show-password")
    http = parse(out)
    ca = str(operator.state_dir / "ca.crt")
    assert http["fetchEndpoint"] == f"https://{operator.gateway}/sql"
    assert http["connectionString"].startswith("postgresql://app:")
    assert http["connectionString"].endswith("@awake.default/app")
    assert http["caCertificate"] == ca
    _, out, _ = operator.sdb("dsn", "awake", "--ws", "--show-password")
    assert parse(out) == {
        "wsProxy": f"{operator.gateway}/v2",
        "useSecureWebSocket": "true",
        "pipelineConnect": "false",
        "connectionString": http["connectionString"],
        "caCertificate": ca,
    }
    _, out, err = operator.sdb("dsn", "awake", "--http")
    assert "postgresql://app@awake.default/app" in out  # no password unless asked for
    assert "--show-password" in err


def test_a_driver_that_does_not_trust_the_ca_is_refused_before_it_sends_anything(operator: Operator) -> None:
    served = {
        door: operator.metric("sdb_gateway_served_total", database="awake", door=door) for door in DOORS
    }
    seen = node.run("untrusted", driver_settings(operator, "awake"), trusted=False)
    assert seen["http"] == "UNABLE_TO_VERIFY_LEAF_SIGNATURE"
    assert "certificate" in seen["ws"]
    assert {
        door: operator.metric("sdb_gateway_served_total", database="awake", door=door) for door in DOORS
    } == served


@pytest.mark.parametrize("scenario", ["query", "pool"])
def test_the_gateway_reaches_a_database_that_refuses_plaintext_over_tls(
    operator: Operator, scenario: str
) -> None:
    """spec.tls.required: the gateway's own sessions, and the WebSocket's relayed ones, are TLS too."""
    assert node.run(scenario, driver_settings(operator, "sealed")) == EXPECTED[scenario]


@pytest.mark.parametrize("scenario", list(EXPECTED))
@pytest.mark.parametrize("name", ["awake", "resting"])
def test_the_driver_is_answered(operator: Operator, name: str, scenario: str) -> None:
    if name == "resting":
        operator.wait_phase("resting", types.Phase.PAUSED, timeout=60)
    wakes = operator.metric("sdb_wakes_total", database=name)
    assert node.run(scenario, driver_settings(operator, name)) == EXPECTED[scenario]
    assert operator.metric("sdb_wakes_total", database=name) == wakes + (name == "resting")
    door = "websocket" if scenario == "pool" else "http"
    assert operator.metric("sdb_gateway_served_total", database=name, door=door) > 0
