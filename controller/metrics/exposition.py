"""The operator's own metrics, served on /metrics through prometheus-client.

Names are under `sdb_`; per-database series carry `namespace` and `database` labels. The set is the
contract the Grafana dashboards are built on (`docs/metrics.md` lists it). The per-database gauges and
counters are `series` families (a number per database, not a metric object), so that ten thousand
databases cost the process tens of MiB less.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from controller.api import types
from controller.identity.authenticate import ACCEPTED
from controller.identity.tokens import Reason
from controller.metrics import series
from controller.metrics.status_counter import StatusCounter
from controller.postgres.pooler import Stats

DB_LABELS = ("namespace", "database")


@dataclass(frozen=True, slots=True)
class Load:
    """What a running database's gauges show after a pass."""

    capacity_current: float
    capacity_desired: float
    client_sessions: int
    cpu_cores: float
    memory_working_set_bytes: float
    transactions_per_second: float


@dataclass(frozen=True, slots=True)
class Shown:
    """What a database's gauges show after a pass; `load` None: at rest (`at_rest`)."""

    capacity_min: float
    capacity_max: float
    phase: types.Phase
    load: Load | None


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.capacity_current = series.Gauge(
            "sdb_capacity_current_cu",
            "Compute units the database runs at now (0 when paused or parked).",
            DB_LABELS,
            registry=r,
        )
        self.capacity_desired = series.Gauge(
            "sdb_capacity_desired_cu",
            "Compute units the operator is moving the database to.",
            DB_LABELS,
            registry=r,
        )
        self.capacity_min = series.Gauge(
            "sdb_capacity_min_cu", "The database's floor (spec.capacity.min).", DB_LABELS, registry=r
        )
        self.capacity_max = series.Gauge(
            "sdb_capacity_max_cu", "The database's ceiling (spec.capacity.max).", DB_LABELS, registry=r
        )
        self._phases: dict[tuple[str, str], types.Phase] = {}
        """The phase each database's series says, so a pass that changes none touches none."""
        self._shown: dict[tuple[str, str], Shown] = {}
        """What each database's gauges show, so a pass that changes nothing touches no series."""
        self.phase = series.Gauge(
            "sdb_phase",
            "1 for the database's current phase (there is no series for the others).",
            (*DB_LABELS, "phase"),
            registry=r,
        )
        self.client_sessions = series.Gauge(
            "sdb_client_sessions",
            "Client sessions (not the operator's, exporters' or idle poolers').",
            DB_LABELS,
            registry=r,
        )
        self.cpu_used = series.Gauge(
            "sdb_cpu_used_cores", "CPU the database used, in cores.", DB_LABELS, registry=r
        )
        self.memory_used = series.Gauge(
            "sdb_memory_working_set_bytes",
            "Memory the database uses, excluding reclaimable cache.",
            DB_LABELS,
            registry=r,
        )
        self.transactions = series.Gauge(
            "sdb_transactions_per_second", "Client transactions per second.", DB_LABELS, registry=r
        )
        self.cu_seconds = StatusCounter(
            "sdb_compute_unit_seconds",
            "Compute-unit seconds consumed since the database was created: status.usage's total "
            "(accounted to the last reconcile), so it survives restarts of the operator.",
            DB_LABELS,
            registry=r,
        )
        self.max_cu_seconds = series.Counter(
            "sdb_compute_unit_seconds_at_max",
            "Compute-unit seconds an always-at-max database would have consumed over the same time.",
            DB_LABELS,
            registry=r,
        )
        self.resizes = series.Counter(
            "sdb_resizes",
            "Resizes applied, by direction (up or down).",
            (*DB_LABELS, "direction"),
            registry=r,
        )
        self.pauses = series.Counter("sdb_pauses", "Pauses completed.", DB_LABELS, registry=r)
        self.parks = series.Counter("sdb_parks", "Parks completed.", DB_LABELS, registry=r)
        self.wakes = series.Counter(
            "sdb_wakes", "Wakes completed (a paused or parked database made active).", DB_LABELS, registry=r
        )
        self.wake_duration = Histogram(
            "sdb_wake_duration_seconds",
            "From a wake request to Postgres accepting connections.",
            DB_LABELS,
            registry=r,
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.reconcile_duration = Histogram(
            "sdb_reconcile_duration_seconds",
            "Time one reconcile of one database took.",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.reconciles = series.Counter(
            "sdb_reconciles", "Reconciles run, per database.", DB_LABELS, registry=r
        )
        self.readings = series.Counter(
            "sdb_load_readings",
            "Readings of load taken from the metrics source, per database.",
            DB_LABELS,
            registry=r,
        )
        self.held_connections = Gauge(
            "sdb_activator_held_connections",
            "Connections the activator holds while their database wakes.",
            DB_LABELS,
            registry=r,
        )
        self.gateway_held_clients = Gauge(
            "sdb_gateway_held",
            "HTTP requests and WebSocket sessions the gateway holds while their database wakes.",
            (*DB_LABELS, "door"),
            registry=r,
        )
        self.gateway_served_clients = Counter(
            "sdb_gateway_served",
            "HTTP requests answered by the database (results or its error), and WebSocket sessions "
            "relayed to it.",
            (*DB_LABELS, "door"),
            registry=r,
        )
        self.gateway_refused_clients = Counter(
            "sdb_gateway_refused",
            "HTTP requests and WebSocket sessions the gateway refused or could not serve, by reason "
            "(no database labels: a refused client may name any).",
            ("door", "reason"),
            registry=r,
        )
        self.gateway_latency = Histogram(
            "sdb_gateway_latency_seconds",
            "HTTP: from the request to its answer; WebSocket: from the upgrade to the relay's start. "
            "A wake is included.",
            (*DB_LABELS, "door"),
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.token_checks = series.Counter(
            "sdb_identity_token_checks",
            "Identity tokens checked, by outcome: accepted, or why refused (expired, wrong_audience, "
            "bad_signature, not_bound, ...). A bearer token on /sql is checked on every request, and "
            "again, from the cache, when its session is opened.",
            (*DB_LABELS, "outcome"),
            registry=r,
        )
        self.token_cache_hits = series.Counter(
            "sdb_identity_token_cache_hits",
            "Token checks answered by the cache of verified tokens (no signature check, no TokenReview).",
            DB_LABELS,
            registry=r,
        )
        self.pooler_clients = Gauge(
            "sdb_pooler_clients",
            "Clients on the pooled endpoint, by state (active: paired or ready; waiting: for a server "
            "connection, as while the database wakes).",
            (*DB_LABELS, "state"),
            registry=r,
        )
        self.pooler_servers = Gauge(
            "sdb_pooler_server_connections",
            "The pooler's connections to the database, by state (active or idle).",
            (*DB_LABELS, "state"),
            registry=r,
        )
        self.pooler_max_wait = Gauge(
            "sdb_pooler_max_wait_seconds",
            "How long the oldest waiting pooled client has waited for a server connection.",
            DB_LABELS,
            registry=r,
        )
        self.pooler_transactions = Counter(
            "sdb_pooler_transactions", "Transactions run through the pooled endpoint.", DB_LABELS, registry=r
        )
        self.pooler_queries = Counter(
            "sdb_pooler_queries", "Queries run through the pooled endpoint.", DB_LABELS, registry=r
        )
        self.pooler_wait_seconds = Counter(
            "sdb_pooler_wait_seconds",
            "Time pooled clients spent waiting for a server connection, summed.",
            DB_LABELS,
            registry=r,
        )
        self.pooler_query_seconds = Counter(
            "sdb_pooler_query_seconds",
            "Time queries through the pooled endpoint spent on the server, summed (over "
            "sdb_pooler_queries_total: their mean latency).",
            DB_LABELS,
            registry=r,
        )
        self._pooler_totals: dict[tuple[str, str], Stats] = {}
        self.errors = Counter("sdb_errors", "Failed steps, by reason.", (*DB_LABELS, "reason"), registry=r)
        self.databases = Gauge("sdb_databases", "Databases the operator manages.", registry=r)
        self.queue_wait = Histogram(
            "sdb_workqueue_wait_seconds",
            "From a database being due for a pass to a worker taking it, by priority.",
            ("priority",),
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.queue_depth = Gauge(
            "sdb_workqueue_depth",
            "Databases due for a pass and waiting for a worker.",
            ("priority",),
            registry=r,
        )

    def start_counting(self, namespace: str, name: str) -> None:
        """Make a database's counters exist at 0: increase() and rate() never see a counter's first value."""
        for counter in (self.pauses, self.parks, self.wakes, self.max_cu_seconds):
            counter.labels(namespace, name)
        for direction in ("up", "down"):
            self.resizes.labels(namespace, name, direction)

    def used(self, namespace: str, name: str, usage: types.UsageStatus) -> None:
        """What status.usage says the database used."""
        self.cu_seconds.set(
            (namespace, name), usage.total.compute_unit_hours * 3600, created=usage.total.start.timestamp()
        )

    def observe_database(self, namespace: str, name: str, shown: Shown) -> None:
        """A database's gauges after a pass. A running database's tick mostly finds them as they were:
        then no series is touched."""
        if self._shown.get((namespace, name)) == shown:
            return
        self.capacity_min.labels(namespace, name).set(shown.capacity_min)
        self.capacity_max.labels(namespace, name).set(shown.capacity_max)
        self.observe_phase(namespace, name, shown.phase)
        load = shown.load
        if load is None:
            self.at_rest(namespace, name)
        else:
            self.capacity_current.labels(namespace, name).set(load.capacity_current)
            self.capacity_desired.labels(namespace, name).set(load.capacity_desired)
            self.client_sessions.labels(namespace, name).set(load.client_sessions)
            self.cpu_used.labels(namespace, name).set(load.cpu_cores)
            self.memory_used.labels(namespace, name).set(load.memory_working_set_bytes)
            self.transactions.labels(namespace, name).set(load.transactions_per_second)
        self._shown[namespace, name] = shown

    def observe_phase(self, namespace: str, name: str, phase: types.Phase) -> None:
        """One series per database, its phase's: a series per phase at 0 would cost each database
        eight times the memory for nothing a query needs."""
        if self._phases.get((namespace, name)) is phase:
            return  # every pass of a running database tells its phase; only a change moves a series
        for each in types.Phase:
            if each is not phase:
                self.phase.remove(namespace, name, each.value)
        self.phase.labels(namespace, name, phase.value).set(1)
        self._phases[namespace, name] = phase

    def observe_pooler(self, namespace: str, name: str, stats: Stats) -> None:
        """One reading of a database's pooler: its gauges as read, its counters by what its totals
        grew (PgBouncer's own totals start again at 0 when it restarts)."""
        self.pooler_clients.labels(namespace, name, "active").set(stats.clients_active)
        self.pooler_clients.labels(namespace, name, "waiting").set(stats.clients_waiting)
        self.pooler_servers.labels(namespace, name, "active").set(stats.servers_active)
        self.pooler_servers.labels(namespace, name, "idle").set(stats.servers_idle)
        self.pooler_max_wait.labels(namespace, name).set(stats.max_wait_seconds)
        last = self._pooler_totals.get((namespace, name))
        for counter, now, before in (
            (self.pooler_transactions, stats.transactions, last.transactions if last else 0),
            (self.pooler_queries, stats.queries, last.queries if last else 0),
            (self.pooler_wait_seconds, stats.wait_seconds, last.wait_seconds if last else 0.0),
            (self.pooler_query_seconds, stats.query_seconds, last.query_seconds if last else 0.0),
        ):
            counter.labels(namespace, name).inc(now - before if now >= before else now)
        self._pooler_totals[(namespace, name)] = stats

    def forget_pooler(self, namespace: str, name: str) -> None:
        """Drop a database's pooler series (its pooling turned off, or the database deleted)."""
        self._pooler_totals.pop((namespace, name), None)
        for metric in (
            self.pooler_max_wait,
            self.pooler_transactions,
            self.pooler_queries,
            self.pooler_wait_seconds,
            self.pooler_query_seconds,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, name)
        for state in ("active", "waiting", "idle"):
            for metric in (self.pooler_clients, self.pooler_servers):
                with contextlib.suppress(KeyError):
                    metric.remove(namespace, name, state)

    def at_rest(self, namespace: str, name: str) -> None:
        """A paused or parked database has no compute: its size and sessions are 0, and there are no
        series for the load it does not have."""
        self.capacity_current.labels(namespace, name).set(0)
        self.client_sessions.labels(namespace, name).set(0)
        for gauge in (self.capacity_desired, self.cpu_used, self.memory_used, self.transactions):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)

    def _compute_gauges(self) -> tuple[series.Gauge, ...]:
        return (
            self.capacity_current,
            self.capacity_desired,
            self.client_sessions,
            self.cpu_used,
            self.memory_used,
            self.transactions,
        )

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted database's series."""
        self.forget_pooler(namespace, name)
        families: tuple[Gauge | Counter | Histogram | StatusCounter | series.Family, ...] = (
            *self._compute_gauges(),
            self.capacity_min,
            self.capacity_max,
            self.cu_seconds,
            self.max_cu_seconds,
            self.pauses,
            self.parks,
            self.wakes,
            self.wake_duration,
            self.reconciles,
            self.readings,
            self.held_connections,
            self.token_cache_hits,
        )
        for metric in families:
            with contextlib.suppress(KeyError):
                metric.remove(namespace, name)
        for door in ("http", "websocket"):
            for metric in (self.gateway_held_clients, self.gateway_served_clients, self.gateway_latency):
                with contextlib.suppress(KeyError):
                    metric.remove(namespace, name, door)
        for phase in types.Phase:
            self.phase.remove(namespace, name, phase.value)
        self._phases.pop((namespace, name), None)
        self._shown.pop((namespace, name), None)
        for outcome in (ACCEPTED, *(reason.name.lower() for reason in Reason)):
            self.token_checks.remove(namespace, name, outcome)
        for direction in ("up", "down"):
            self.resizes.remove(namespace, name, direction)

    def held(self, key: str, delta: int) -> None:
        self.held_connections.labels(*types.split_key(key)).inc(delta)

    def gateway_held(self, key: str, door: str, delta: int) -> None:
        self.gateway_held_clients.labels(*types.split_key(key), door).inc(delta)

    def gateway_served(self, key: str, door: str, seconds: float) -> None:
        labels = (*types.split_key(key), door)
        self.gateway_served_clients.labels(*labels).inc()
        self.gateway_latency.labels(*labels).observe(seconds)

    def gateway_refused(self, door: str, reason: str) -> None:
        self.gateway_refused_clients.labels(door, reason).inc()

    def token_checked(self, key: str, outcome: str) -> None:
        self.token_checks.labels(*types.split_key(key), outcome).inc()

    def token_cache_hit(self, key: str) -> None:
        self.token_cache_hits.labels(*types.split_key(key)).inc()

    def serve(self, port: int, address: str = "0.0.0.0") -> int:
        """Serve /metrics on a background thread; returns the port (0 picks one)."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return int(server.server_port)
