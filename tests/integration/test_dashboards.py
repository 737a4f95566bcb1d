"""The Grafana dashboards: every query they hold, run against a real Prometheus scraping a real operator.

The operator is `sdb up` on the local runtime with /metrics on a port; one database goes through a
resize up and down, a pause, a park, two wakes and token logins, and another fails to start, so every
counter the dashboards read has moved while Prometheus watched. Each panel's PromQL (and each annotation's and
variable's) is then run as Grafana would run it, its template variables filled in.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.identity import ISSUER, SigningKey, write_jwks
from support.operator import Operator, database, wait_for
from support.prometheus import Prometheus, Target, running_prometheus
from support.requirements import require_pgbouncer, require_postgres

from controller.api import types
from controller.identity.tokens import default_audience
from controller.runtime.local.runtime import free_port

pytestmark = [pytest.mark.prometheus, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/serverless-db-operator/dashboards"
DOCS = ROOT / "docs/dashboards"
DASHBOARDS = sorted(p.name for p in CHART.glob("*.json"))

NO_DATA_WITHOUT_A_CLUSTER = {
    # cAdvisor's CFS counters exist only where the kubelet runs the pod; the local runtime has no
    # kubelet, and this test's Prometheus scrapes nothing but the operator.
    ("database.json", "CPU throttling"),
}
"""Panels that cannot have data here; their queries must still parse."""


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((CHART / name).read_text())
    return document


def panels(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in document["panels"]:
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    expr: str
    instant: bool


def queries(name: str) -> list[Query]:
    document = load(name)
    found = [
        Query(name, panel["title"], target["expr"], bool(target.get("instant")) and not target.get("range"))
        for panel in panels(document)
        for target in panel.get("targets", [])
    ]
    found += [
        Query(name, f"annotation {a['name']}", a["expr"], False)
        for a in document["annotations"]["list"]
        if "expr" in a
    ]
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's template variables (`$name`, `${name}`, `${name:format}`) replaced by values."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"the dashboards use a variable this test does not know: ${name}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


# -- the files -----------------------------------------------------------------------------------


def test_the_docs_hold_identical_copies_of_the_charts_dashboards() -> None:
    assert DASHBOARDS == ["database.json", "fleet-overview.json"]
    assert sorted(p.name for p in DOCS.glob("*.json")) == DASHBOARDS
    for name in DASHBOARDS:
        assert (DOCS / name).read_bytes() == (CHART / name).read_bytes(), f"docs/dashboards/{name} differs"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_each_dashboard_reads_its_prometheus_from_the_datasource_variable(name: str) -> None:
    document = load(name)
    assert document["schemaVersion"] >= 39
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "namespace" in variables
    ids = [panel["id"] for panel in panels(document)]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in panels(document) if panel["type"] != "row"]
    assert len(titles) == len(set(titles))  # NO_DATA_WITHOUT_A_CLUSTER names panels by title
    for panel in panels(document):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], f"{panel['title']} has no query"
    assert all(q.expr.strip() for q in queries(name))


def test_the_fleet_cost_is_priced_by_a_variable_the_viewer_sets() -> None:
    variables = {v["name"]: v for v in load("fleet-overview.json")["templating"]["list"]}
    price = variables["cu_hour_price"]
    assert price["type"] == "textbox"  # typed in, not picked from Prometheus
    assert float(price["query"]) > 0
    priced = [q for q in queries("fleet-overview.json") if "$cu_hour_price" in q.expr]
    assert {q.panel for q in priced} == {"Cost over the time range"}
    assert all("sdb_compute_unit_seconds_total" in q.expr for q in priced)


# -- the queries, on real data -------------------------------------------------------------------


SPEC: dict[str, Any] = {
    "capacity": {"min": 0.25, "max": 4},
    "autoPause": {"idleAfter": "1s"},
    "autoPark": {"idleAfter": "2s"},
    "scaling": {"scaleDownDelay": "1s"},
    "pooling": {"enabled": True},
    "roles": [{"name": "reader", "login": True, "inRoles": ["app"]}],
    "access": {"identities": [{"issuer": ISSUER, "subject": "alice", "role": "reader"}]},
}
"""orders: quick to pause and park, quick to scale down, with a pooled endpoint, and a token's
subject bound to a declared role."""
SIGNER = SigningKey()


@dataclass
class Lived:
    """Prometheus after it watched the operator take a database through its lifecycle."""

    prometheus: Prometheus
    start: float
    end: float


@pytest.fixture(scope="module")
def lived() -> Iterator[Lived]:
    require_postgres()
    require_pgbouncer()
    root = Path(tempfile.mkdtemp(prefix="sdb-dashboards-"))
    jwks = write_jwks(root / "jwks.json", SIGNER)
    options = ("--oidc-issuer", ISSUER, "--oidc-jwks", str(jwks))
    operator = Operator(root / "state", tick=0.2, metrics_port=free_port(), options=options)
    operator.start()
    try:
        broken = {"parameters": {"lock_timeout": "no_such_duration"}}
        operator.apply(database("broken", postgres=broken))  # its start fails, again and again
        # Postgres starts while Prometheus does; it must not pause before Prometheus watches.
        operator.apply(database("orders", **{**SPEC, "autoPause": {"enabled": False}}))
        with running_prometheus([Target("serverless-db-operator", operator.metrics_port)]) as prometheus:
            start = time.time()
            live_a_little(operator, prometheus)
            yield Lived(prometheus, start, time.time())
    finally:
        operator.stop()
        shutil.rmtree(root, ignore_errors=True)


def seen(prometheus: Prometheus, selector: str, value: float) -> None:
    """Until Prometheus has scraped `selector` at `value` or more.

    A counter's first sample is its first value, so increase() and rate() see a change only from
    the second: each event a panel must show happens again after Prometheus saw the first.
    """

    def scraped() -> bool:
        return any(float(s["value"][1]) >= value for s in prometheus.query(selector))

    wait_for(scraped, timeout=30, what=f"Prometheus to see {selector} at {value:g}")


def live_a_little(operator: Operator, prometheus: Prometheus) -> None:
    """Resize orders up twice and down, pause, park, and wake it twice by psql and once over HTTP;
    broken fails meanwhile."""
    operator.wait_phase("orders", types.Phase.ACTIVE)
    orders = '{database="orders"}'
    with operator.connect("orders"):  # a client session: it stays active while the floor moves
        # Raising the floor above the current size is a resize up, whatever size the load chose.
        start = operator.get("orders").status.capacity.current or 0.25
        for ups in (1, 2):
            floor = start + 0.25 * ups
            operator.apply(database("orders", **{**SPEC, "capacity": {"min": floor, "max": 4}}))
            seen(prometheus, 'sdb_resizes_total{database="orders", direction="up"}', ups)
        # A maximum below the current size is a resize down at once (the policy's own scale-down may
        # wait minutes for a page cache to cool).
        operator.apply(database("orders", **{**SPEC, "capacity": {"min": start, "max": start}}))
        seen(prometheus, 'sdb_resizes_total{database="orders", direction="down"}', 1)
        operator.apply(database("orders", **SPEC))
        # Through the pooler too: its clients and transactions, for the pooled endpoint's panels.
        pooled = operator.sdb("dsn", "orders", "--pooled")[1].strip()
        for transactions in (1, 2):
            with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as conn:
                conn.execute("select 1")
            seen(prometheus, f"sdb_pooler_transactions_total{orders}", transactions)
    seen(prometheus, f"sdb_parks_total{orders}", 1)  # paused, then parked
    for wakes in (1, 2):
        with operator.connect("orders") as conn:  # wakes it
            conn.execute("select 1")
        seen(prometheus, f"sdb_wakes_total{orders}", wakes)
        seen(prometheus, f"sdb_pauses_total{orders}", wakes + 1)
    # SQL over HTTP wakes it once more; more requests are answered after Prometheus saw the first,
    # three in all: the last one's sample can fall after the range's last step, two stay inside it.
    for served in (1, 2, 3):
        assert operator.sql_over_http("orders", "select 1")["rows"] == [[1]]
        seen(prometheus, 'sdb_gateway_served_total{database="orders", door="http"}', served)
    # A token over HTTP, checked and then answered by the cache of verified tokens; three times, as
    # above, so that two samples fall inside the range.
    token = SIGNER.mint("alice", default_audience("default/orders"))
    for hits in (1, 2, 3):
        answer = operator.sql_over_http("orders", "select current_user", token=token, role="reader")
        assert answer["rows"] == [["reader"]]
        seen(prometheus, f"sdb_identity_token_cache_hits_total{orders}", hits)
    seen(prometheus, 'sdb_errors_total{database="broken"}', 1)


def has_data(result: list[dict[str, Any]]) -> bool:
    """Some series with some number in it (NaN, as from a quantile of nothing, is not data)."""
    for series in result:
        points = series.get("values") or [series["value"]]
        if any(math.isfinite(float(value)) for _, value in points):
            return True
    return False


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_query_parses_and_shows_data(lived: Lived, name: str) -> None:
    span = lived.end - lived.start
    values = {
        "namespace": "default",
        "database": "orders",
        "__rate_interval": "1m",  # Grafana's: four scrape intervals at least
        "__interval": "1s",
        "__range": f"{math.ceil(span) + 1}s",
        "__range_s": str(math.ceil(span) + 1),
        "cu_hour_price": "0.12",
    }
    empty: list[str] = []
    for query in queries(name):
        expr = substitute(query.expr, values)
        if query.instant:
            result = lived.prometheus.query(expr)  # raises with Prometheus's message if it does not parse
        else:
            result = lived.prometheus.api(
                "/api/v1/query_range", query=expr, start=str(lived.start), end=str(lived.end), step="1"
            )["result"]
        if (name, query.panel) not in NO_DATA_WITHOUT_A_CLUSTER and not has_data(result):
            empty.append(f"{query.panel}: {expr}")
    assert empty == []


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_variable_finds_its_values(lived: Lived, name: str) -> None:
    """`label_values(metric{...}, label)`, as Grafana asks Prometheus for it."""
    found = {}
    for variable in load(name)["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["definition"])
        assert match is not None, variable["definition"]
        selector = substitute(match.group(1), {"namespace": "default"})
        found[variable["name"]] = lived.prometheus.api(
            f"/api/v1/label/{match.group(2)}/values", **{"match[]": selector}
        )
    assert found["namespace"] == ["default"]
    if "database" in found:
        assert set(found["database"]) == {"broken", "orders"}
