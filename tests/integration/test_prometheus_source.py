"""The Prometheus metrics source against real Prometheus, real postgres_exporters and real Postgres servers.

The fleet: `shop/orders` and `tools/wiki` are two Postgres servers, each with its exporter sidecar
(the operator's query file and flags); `fleet/db0..db7` are eight more pods whose exporter and
container both stand for the wiki server; `shop/lonely` has a container but no exporter. A
cAdvisor stand-in serves the real process trees' CPU and memory. Prometheus scrapes all of it
every second, labelled as Kubernetes service discovery would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs
from support import postgres
from support.cadvisor import Cadvisor
from support.fakes import FakeCompute, FakeRuntime, MemoryStore
from support.operator import wait_for
from support.postgres import Server
from support.prometheus import Prometheus, Target, running_exporter, running_prometheus

from controller.api import types, units
from controller.metrics.prometheus import PrometheusConfig, PrometheusSource
from controller.policy.inputs import Compute, Observation, Route, Tuning
from controller.postgres import activity, exporter
from controller.reconciler.loop import Reconciler
from controller.runtime.local.runtime import free_port

pytestmark = pytest.mark.prometheus

STALE_AFTER = timedelta(seconds=4)
ALIASES = [f"db{i}" for i in range(8)]


def database(name: str, namespace: str) -> types.ServerlessDatabase:
    return types.ServerlessDatabase(metadata=types.ObjectMeta(name=name, namespace=namespace))


ORDERS = database("orders", "shop")
WIKI = database("wiki", "tools")
LONELY = database("lonely", "shop")
"""Its container is served, but it has no exporter: no client-session figures, so no observation."""
GHOST = database("ghost", "shop")
"""Nothing at all is scraped for it."""
FLEET = [database(name, "fleet") for name in ALIASES]


@dataclass
class World:
    prometheus: Prometheus
    cadvisor: Cadvisor
    orders: Server
    wiki: Server

    def source(self) -> PrometheusSource:
        return PrometheusSource(PrometheusConfig(url=self.prometheus.url, stale_after=STALE_AFTER))


postgres_server = postgres.postgres_server
"""orders' server: a fixture of its own, so the query file's test needs no Prometheus."""


@pytest.fixture(scope="module")
def world(postgres_server: Server) -> Iterator[World]:
    with contextlib.ExitStack() as stack:
        orders = postgres_server
        wiki = stack.enter_context(postgres.running_server(parameters=postgres.QUIET))
        orders_exporter = stack.enter_context(running_exporter(orders))
        wiki_exporter = stack.enter_context(running_exporter(wiki))
        # The eight fleet pods share one more exporter, so wiki's own is scraped once per interval.
        fleet_exporter = stack.enter_context(running_exporter(wiki))
        cadvisor = stack.enter_context(Cadvisor().serving())
        for namespace, pod, server, exporter_pid in [
            ("shop", "orders-0", orders, orders_exporter.process.pid),
            ("tools", "wiki-0", wiki, wiki_exporter.process.pid),
            ("shop", "lonely-0", orders, None),
            *[("fleet", f"{name}-0", wiki, fleet_exporter.process.pid) for name in ALIASES],
        ]:
            cadvisor.add(namespace, pod, "postgres", server.postmaster.pid)
            if exporter_pid is not None:
                cadvisor.add(namespace, pod, "exporter", exporter_pid)

        def labels(namespace: str, name: str) -> dict[str, str]:
            return {"namespace": namespace, "pod": f"{name}-0"}

        targets = [
            Target("kubelet-cadvisor", cadvisor.port, honor_labels=True),
            Target("sdb-exporter", orders_exporter.port, labels("shop", "orders")),
            Target("sdb-exporter", wiki_exporter.port, labels("tools", "wiki")),
            *[Target("sdb-exporter", fleet_exporter.port, labels("fleet", name)) for name in ALIASES],
        ]
        prometheus = stack.enter_context(running_prometheus(targets))
        yield World(prometheus, cadvisor, orders, wiki)


def observe(source: PrometheusSource, dbs: Sequence[types.ServerlessDatabase]) -> Mapping[str, Observation]:
    return asyncio.run(source.observe(dbs))


def reading(
    source: PrometheusSource,
    db: types.ServerlessDatabase,
    until: Callable[[Observation], bool] = lambda _: True,
    *,
    timeout: float = 20.0,
    what: str = "",
) -> Observation:
    """The first observation of `db` for which `until` holds (each poll is a whole tick of queries)."""

    def check() -> Observation | None:
        found = observe(source, [db]).get(db.key)
        return found if found is not None and until(found) else None

    found = wait_for(check, timeout=timeout, every=0.2, what=what or f"an observation of {db.key}")
    assert found is not None
    return found


def newer_than(previous: Observation, seconds: float = 0.0) -> Callable[[Observation], bool]:
    """True for an observation whose samples are at least `seconds` newer than `previous`'s."""
    return lambda o: (o.time - previous.time).total_seconds() > seconds


def scraped_since(world: World, previous: Observation, seconds: float) -> None:
    """Wait, without reading, until Prometheus holds orders' samples `seconds` newer than `previous`."""

    def scraped() -> bool:
        # the older of the exporter's and cAdvisor's newest samples, as an observation's time is
        pod = 'namespace="shop", pod="orders-0"'
        exporter = world.prometheus.query(f"timestamp(pg_sdb_transactions{{{pod}}})")
        cadvisor = world.prometheus.query(f"max(timestamp(container_cpu_usage_seconds_total{{{pod}}}))")
        newest = [float(r["value"][1]) for r in exporter + cadvisor]
        return len(newest) == 2 and min(newest) - previous.time.timestamp() >= seconds

    wait_for(scraped, timeout=seconds + 10, every=0.1, what=f"{seconds:g}s more of scrapes")


# -- the exporter's query file -------------------------------------------------------------------


def test_the_exporter_query_file_counts_exactly_what_sessions_sql_counts(postgres_server: Server) -> None:
    """The generated file is activity.ACTIVITY_SQL with its parameters written in, for awkward names too."""
    ignored = ("postgres_exporter", "pg,bouncer", 'odd"name', "it's")
    document = yaml.safe_load(exporter.queries(ignored))
    [(namespace, entry)] = document.items()
    assert namespace == "pg_sdb"
    columns = [next(iter(metric)) for metric in entry["metrics"]]
    with contextlib.ExitStack() as stack:
        for application in ["psql", "pg,bouncer", "it's", 'odd"name', exporter.APPLICATION]:
            stack.enter_context(postgres_server.connect(application_name=application))
        busy_ignored = stack.enter_context(postgres_server.connect(application_name="it's", autocommit=False))
        busy_ignored.execute("select 1")  # idle in transaction: an ignored application's session counts then
        monitor = stack.enter_context(postgres_server.connect(application_name=exporter.APPLICATION))
        cursor = monitor.execute(entry["query"])
        from_file = cursor.fetchone()
        assert cursor.description is not None
        assert [c.name for c in cursor.description] == columns
        from_sessions = monitor.execute(activity.ACTIVITY_SQL, activity.parameters(ignored)).fetchone()
    assert from_file is not None
    assert from_sessions is not None
    # psql, and the ignored application idle in transaction; not the idle ignored ones, not ours
    assert from_file[:2] == from_sessions[:2] == (2, 0)


# -- what the source observes --------------------------------------------------------------------


def test_client_sessions_follow_the_projects_rule(world: World) -> None:
    source = world.source()
    connect = world.orders.connect
    with connect() as conn:
        conn.execute("create table if not exists items (id int)")
    with contextlib.ExitStack() as stack:
        stack.enter_context(connect(application_name="psql"))  # counts: a client
        in_transaction = stack.enter_context(connect(application_name="psql", autocommit=False))
        in_transaction.execute("lock table items")  # counts: idle in transaction (holding a lock)
        stack.enter_context(connect(application_name="postgres_exporter"))  # ignored, and idle: no
        ignored_busy = stack.enter_context(connect(application_name="postgres_exporter", autocommit=False))
        ignored_busy.execute("select 1")  # ignored, but idle in transaction: counts
        ours = stack.enter_context(connect(application_name=exporter.APPLICATION, autocommit=False))
        ours.execute("select 1")  # the operator's own: never counts, even in a transaction
        seen = reading(source, ORDERS, lambda o: o.client_sessions == 3, what="3 client sessions on orders")
        assert seen.waiting_sessions == 0
        assert observe(source, [WIKI])[WIKI.key].client_sessions == 0  # the other server is untouched

        # A client blocked on the lock the open transaction holds: one more session, and it waits.
        rows: list[object] = []

        def blocked_client() -> None:
            with connect(application_name="psql") as conn:
                rows.append(conn.execute("select count(*) from items").fetchone())

        blocked = threading.Thread(target=blocked_client)
        blocked.start()
        try:
            waiting = reading(source, ORDERS, lambda o: o.waiting_sessions == 1, what="a waiting session")
            assert waiting.client_sessions == 4
        finally:
            in_transaction.rollback()
            blocked.join(10)
        assert rows == [(0,)]  # it was blocked, not failed
    gone = reading(source, ORDERS, lambda o: o.client_sessions == 0, what="every session gone")
    assert gone.waiting_sessions == 0


def test_a_client_that_came_and_went_between_scrapes_is_activity(world: World) -> None:
    source = world.source()
    quiet = reading(source, WIKI)
    before = units.now_utc()
    with world.wiki.connect() as client:
        client.execute("select 1")
    seen = reading(
        source,
        WIKI,
        lambda o: o.last_activity is not None and o.last_activity >= before,
        what="the short session to show as activity",
    )
    assert seen.client_sessions == 0  # it was never there at a scrape: only the counter saw it
    assert seen.observing_since == quiet.observing_since  # one unbroken run
    # The exporter's own session is persistent and tagged: scrapes without clients add no activity.
    later = reading(source, WIKI, newer_than(seen, 3), what="three more scrapes")
    assert later.last_activity == seen.last_activity


# About attribution, not speed: an idle server stays under a twentieth of a core, and one busy
# backend gets three times that even when ten other busy processes share the machine's two cores.
IDLE_CORES = 0.05
BUSY_CORES = 0.15


def test_cpu_rises_under_real_load_on_that_database_only(world: World) -> None:
    source = world.source()
    idle = reading(
        source, ORDERS, lambda o: o.cpu_cores is not None and o.cpu_cores < IDLE_CORES, what="idle CPU"
    )
    assert (idle.memory_working_set_bytes or 0) > 10 * 1024**2
    assert (idle.memory_cache_bytes or 0) > 0
    stop = threading.Event()

    def busy() -> None:
        with world.orders.connect() as conn:
            while not stop.is_set():
                conn.execute("select sum(x) from generate_series(1, 2000000) as x").fetchone()

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        loaded = reading(
            source, ORDERS, lambda o: (o.cpu_cores or 0) > BUSY_CORES, what="a busy backend on orders"
        )
        assert loaded.time > idle.time
        wiki = observe(source, [WIKI])[WIKI.key]
        assert wiki.cpu_cores is not None
        assert wiki.cpu_cores < IDLE_CORES
    finally:
        stop.set()
        worker.join(30)
    reading(source, ORDERS, lambda o: (o.cpu_cores or 0) < IDLE_CORES, what="orders' CPU to fall again")


def test_transactions_per_second_are_the_clients_not_the_exporters(world: World) -> None:
    source = world.source()
    start = reading(source, ORDERS)
    with world.orders.connect() as conn:
        conn.execute("create table if not exists ledger (id int)")
        for i in range(300):
            conn.execute("insert into ledger values (%s)", [i])  # 300 transactions, about in a second
    busy = reading(source, ORDERS, lambda o: (o.transactions_per_second or 0) > 50, what="the inserts as tps")
    assert busy.time > start.time
    # Quiet, over eight scrapes read at once: the exporter's own three statements per scrape are not
    # counted. Postgres flushes a session's statistics at most once a second, so either end of a reading
    # can hold a scrape's statements early or late: over 8 s the rate stays well under 3.
    settled = reading(source, ORDERS, newer_than(busy, 2))
    scraped_since(world, settled, 8)
    quiet = observe(source, [ORDERS])[ORDERS.key]
    assert (quiet.time - settled.time).total_seconds() >= 7.9
    assert quiet.transactions_per_second is not None
    assert quiet.transactions_per_second <= 1.5  # 3.0 if the exporter's own were counted


def test_one_query_per_metric_per_tick_whatever_the_fleet_size(world: World) -> None:
    everyone = [ORDERS, WIKI, LONELY, GHOST, *FLEET]
    sent: dict[int, int] = {}
    answered: dict[int, float] = {}
    for fleet in ([ORDERS], everyone):
        source = world.source()
        before = world.prometheus.queries_answered()
        found = observe(source, fleet)
        sent[len(fleet)] = source.queries
        # Prometheus's own count of the queries it answered (it may count the last one a moment late)
        answered[len(fleet)] = wait_for(functools.partial(answered_since, world, before), timeout=5)
    # 5 cAdvisor metrics (the CFS counters among them) and 4 exporter ones, for 1 database as for 12
    assert sent == {1: 9, 12: 9}
    assert answered == {1: 9, 12: 9}
    assert set(found) == {ORDERS.key, WIKI.key, *(db.key for db in FLEET)}  # neither lonely nor ghost


def answered_since(world: World, before: float) -> float:
    """Queries Prometheus answered since `before`, once at least a tick's worth (0 until then)."""
    count = world.prometheus.queries_answered() - before
    return count if count >= 9 else 0.0


def test_a_stale_series_gives_no_observation_and_a_new_run_after(world: World) -> None:
    source = world.source()
    stale = FLEET[0]
    first = reading(source, stale)
    world.cadvisor.remove("fleet", f"{stale.metadata.name}-0")  # its container's series stop
    removed_at = units.now_utc()
    try:
        last_seen: list[Observation] = []

        def gone() -> bool:
            found = observe(source, [stale, FLEET[1]])
            assert FLEET[1].key in found  # the others are unaffected
            if stale.key in found:
                last_seen.append(found[stale.key])
                return False
            return True

        wait_for(gone, timeout=STALE_AFTER.total_seconds() + 10, every=0.2, what="the stale series to drop")
        # Until it dropped, each observation carried its samples' own time: it stopped moving on.
        assert last_seen
        assert all(o.time <= removed_at + timedelta(seconds=1.5) for o in last_seen)
    finally:
        pod = f"{stale.metadata.name}-0"
        world.cadvisor.add("fleet", pod, "postgres", world.wiki.postmaster.pid)
    again = reading(source, stale, what="the series to come back")
    assert again.observing_since > first.observing_since  # idleness is not assumed across the gap
    assert again.observing_since > removed_at


def test_observations_carry_their_samples_time_and_an_unbroken_run(world: World) -> None:
    source = world.source()
    first = reading(source, WIKI)
    second = reading(source, WIKI, newer_than(first))
    now = units.now_utc()
    assert first.time < second.time <= now
    assert (now - second.time).total_seconds() < 3  # a sample from the last scrapes, not "now"
    assert first.observing_since == second.observing_since == first.time


# -- the arithmetic, on canned answers ----------------------------------------------------------


def answers(samples: Mapping[str, list[tuple[float, float]]]) -> dict[str, list[dict[str, Any]]]:
    """Prometheus's JSON for shop/orders-0, one entry per metric; gauges scraped with the CPU counter."""
    times = [t for t, _ in samples["cpu_seconds"]]
    gauges = {"client_sessions": 2.0, "waiting_sessions": 0.0, "working_set": 5e8, "cache": 1e8}
    every = {**{metric: [(t, value) for t in times] for metric, value in gauges.items()}, **samples}
    labels = {"namespace": "shop", "pod": "orders-0"}
    return {
        metric: [{"metric": labels, "values": [[t, str(v)] for t, v in points]}]
        for metric, points in every.items()
    }


def test_counters_are_differenced_between_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    source = PrometheusSource("http://prometheus.invalid:9090")
    scrapes = {  # every 15 s
        "cpu_seconds": [(1000.0, 100.0), (1015.0, 107.5), (1030.0, 115.0)],
        "transactions": [(1000.0, 500.0), (1015.0, 545.0), (1030.0, 590.0)],
        "sessions_started": [(1000.0, 10.0), (1015.0, 10.0), (1030.0, 11.0)],
        "cpu_periods": [(1000.0, 0.0), (1015.0, 150.0), (1030.0, 300.0)],
        "cpu_throttled_periods": [(1000.0, 0.0), (1015.0, 30.0), (1030.0, 90.0)],
    }
    monkeypatch.setattr(source, "_fetch", lambda: answers(scrapes))
    first = asyncio.run(source.observe([ORDERS]))[ORDERS.key]
    assert first.time.timestamp() == 1030
    assert first.cpu_cores == 0.5  # (115 - 100) / 30: the first reading starts at the window's oldest
    assert first.transactions_per_second == 2.8  # (590 - 500 - 3 * 2 of the exporter's own) / 30
    assert first.last_activity is not None
    assert first.last_activity.timestamp() == 1030  # one session started between 1015 and 1030
    assert first.client_sessions == 2
    assert first.cpu_throttled == 0.3  # (90 - 0) throttled of (300 - 0) periods
    assert first.lag == timedelta(seconds=15)  # the rate over 1000..1030 describes 1015

    # A tick shorter than the scrape interval: nothing newer, the same reading.
    assert asyncio.run(source.observe([ORDERS]))[ORDERS.key] == first

    # The container restarted: its counter starts again from zero.
    scrapes["cpu_seconds"].append((1045.0, 2.0))
    scrapes["transactions"].append((1045.0, 635.0))
    scrapes["sessions_started"].append((1045.0, 11.0))
    scrapes["cpu_periods"].append((1045.0, 450.0))
    scrapes["cpu_throttled_periods"].append((1045.0, 90.0))
    third = asyncio.run(source.observe([ORDERS]))[ORDERS.key]
    assert third.time.timestamp() == 1045
    assert third.cpu_cores == 2 / 15  # a reset counts from zero, as Prometheus's rate() does
    assert third.transactions_per_second == 2.8  # (635 - 590 - 3) / 15
    assert third.last_activity == first.last_activity  # nobody came since
    assert third.observing_since == first.observing_since == first.time
    assert third.cpu_throttled == 0.0  # no period throttled since the last reading
    assert third.lag == timedelta(seconds=7.5)  # the rate over 1030..1045 describes 1037.5

    # A series missing: no observation, and the next one starts a new run.
    monkeypatch.setattr(source, "_fetch", lambda: {**answers(scrapes), "cache": []})
    assert asyncio.run(source.observe([ORDERS])) == {}
    # A scrape landed between two of the tick's queries: the newer one's samples wait for the next tick.
    scrapes["cpu_seconds"].append((1060.0, 4.0))
    landed = answers(scrapes)
    landed["client_sessions"][0]["values"][-1][1] = "9"  # at 1060
    monkeypatch.setattr(source, "_fetch", lambda: landed)
    again = asyncio.run(source.observe([ORDERS]))[ORDERS.key]
    assert again.observing_since == again.time  # a new run
    assert again.time.timestamp() == 1045  # the oldest of its series' newest samples
    assert again.client_sessions == 2  # as of 1045, with the transactions read from the same scrape


# -- configuration ---------------------------------------------------------------------------------


def test_settings_are_parsed_apart_from_connecting() -> None:
    config = PrometheusConfig.parse(
        {"url": "http://prometheus.monitoring:9090", "staleAfter": "90s", "podLabel": "kubernetes_pod"}
    )
    assert config.stale_after == timedelta(seconds=90)
    assert config.pod_label == "kubernetes_pod"
    assert config.queries()["client_sessions"] == "pg_sdb_client_sessions[90s]"
    cpu = 'container_cpu_usage_seconds_total{container="postgres"}[90s]'
    assert config.queries()["cpu_seconds"] == cpu
    source = PrometheusSource(config)  # no I/O: nothing listens there
    assert source.queries == 0
    for bad, message in [
        ({}, "url"),
        ({"url": "prometheus:9090"}, "url"),
        ({"url": "http://p:9090", "staleAfter": "soon"}, "staleAfter"),
        ({"url": "http://p:9090", "podLabel": "pod-name"}, "podLabel"),
        ({"url": "http://p:9090", "scrape": "1s"}, "unknown"),
    ]:
        with pytest.raises(ValueError, match=message):
            PrometheusConfig.parse(bad)


# -- an unreachable Prometheus -------------------------------------------------------------------


async def test_an_unreachable_prometheus_holds_the_size_and_sets_degraded() -> None:
    closed = free_port()  # nothing listens there
    source = PrometheusSource(PrometheusConfig(url=f"http://127.0.0.1:{closed}"))
    now = units.now_utc()
    hour_ago = now - timedelta(hours=1)
    db = types.ServerlessDatabase(
        metadata=types.ObjectMeta(name="orders", namespace="shop", finalizers=(types.FINALIZER,)),
        spec=replace(types.DatabaseSpec(), auto_pause=types.AutoPauseSpec(idle_after=timedelta(seconds=1))),
        status=types.DatabaseStatus(
            phase=types.Phase.ACTIVE,
            phase_since=hour_ago,
            capacity=types.CapacityStatus(current=2.0, desired=2.0),
            last_activity_time=hour_ago,  # idle for an hour: it would pause, were there a reading
            observed_generation=1,
        ),
    )
    store = MemoryStore()
    store.put(db)
    runtime = FakeRuntime()
    runtime.databases[db.key] = FakeCompute(
        storage=True, compute=Compute.RUNNING, route=Route.DIRECT, capacity=2.0
    )
    reconciler = Reconciler(
        store=store, runtime=runtime, metrics=source, tuning=Tuning(tick=timedelta(milliseconds=50))
    )
    with capture_logs() as logs:
        await reconciler.start()
        try:
            deadline = time.monotonic() + 20
            while source.failures < 5 or store.status_writes[db.key] == 0:
                assert time.monotonic() < deadline, "the sampler never asked Prometheus five times"
                await asyncio.sleep(0.02)
        finally:
            await reconciler.stop()
            await source.close()
    status = store.objects[db.key].status
    assert status.phase is types.Phase.ACTIVE
    assert status.capacity.current == 2.0
    degraded = status.condition(types.ConditionType.DEGRADED)
    assert degraded is not None
    assert degraded.status is types.ConditionStatus.TRUE
    assert degraded.reason == types.Reason.METRICS_UNAVAILABLE.value
    assert not {"resize", "stop", "route_activator"} & set(runtime.calls_for(db.key))
    warnings = [e for e in logs if e["event"].startswith("prometheus unavailable")]
    assert len(warnings) == 1  # once for the whole streak, not once per tick
    assert f"127.0.0.1:{closed}" in warnings[0]["url"]
