"""Observations from Prometheus, for databases running in a Kubernetes cluster.

Each database runs as a StatefulSet `<name>` with one pod `<name>-0`. Prometheus scrapes two things
about that pod, and both come back labelled with its namespace and pod:
  - the kubelet's cAdvisor: the `postgres` container's CPU seconds, working set and page cache;
  - the pod's postgres_exporter sidecar, running the query file `exporter_queries` writes: the
    same client-session figures `controller.postgres.activity` defines for every source.

Each tick sends one query per metric for the whole fleet, never one per database, and maps each
(namespace, pod) back to a database key. Queries ask for raw samples over the staleness bound
(`metric[60s]`), not for `rate()`: so each observation carries its samples' own timestamps, a
series with no sample within the bound is simply absent (never read as zero load), and counters
are differenced between this source's readings, as the local source does.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import requests
import structlog
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from controller.api import types, units
from controller.metrics import counters
from controller.policy.inputs import Observation
from controller.postgres import exporter

log = structlog.get_logger("metrics.prometheus")

# -- configuration -------------------------------------------------------------------------------

_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_SETTINGS = {
    "url": "url",
    "namespaceLabel": "namespace_label",
    "podLabel": "pod_label",
    "containerLabel": "container_label",
    "container": "container",
    "matchers": "matchers",
    "staleAfter": "stale_after",
    "timeout": "timeout",
    "exporterTransactionsPerScrape": "exporter_transactions_per_scrape",
    "exporterSessionsPerScrape": "exporter_sessions_per_scrape",
}
"""Setting names as a user writes them (flags, Helm values), and the fields they fill."""


@dataclass(frozen=True)
class PrometheusConfig:
    """Where Prometheus is and how its series are labelled; parsing only, no connection."""

    url: str
    namespace_label: str = "namespace"
    pod_label: str = "pod"
    container_label: str = "container"
    container: str = "postgres"
    """The Postgres container's name in cAdvisor's series."""
    matchers: str = ""
    """Extra label matchers for every selector, e.g. `cluster="eu-1"` for a Prometheus shared by clusters."""
    stale_after: timedelta = timedelta(seconds=60)
    """A database whose series have no sample this recent has no observation."""
    timeout: timedelta = timedelta(seconds=5)
    """Per request. A tick's queries are not retried: the next tick is the retry."""
    exporter_transactions_per_scrape: int = exporter.TRANSACTIONS_PER_SCRAPE
    exporter_sessions_per_scrape: int = exporter.SESSIONS_PER_SCRAPE

    @classmethod
    def parse(cls, values: Mapping[str, str]) -> PrometheusConfig:
        """From string settings (flags, environment, Helm values); raises ValueError naming the setting."""
        unknown = sorted(set(values) - set(_SETTINGS))
        if unknown:
            raise ValueError(f"unknown Prometheus settings: {', '.join(unknown)}")
        fields: dict[str, Any] = {}
        for key, text in values.items():
            name = _SETTINGS[key]
            try:
                if name in ("stale_after", "timeout"):
                    fields[name] = units.parse_duration(text)
                elif name.startswith("exporter_"):
                    fields[name] = int(text)
                else:
                    fields[name] = text
            except ValueError as error:
                raise ValueError(f"{key}: {error}") from None
        if "url" not in fields:
            raise ValueError("url: the Prometheus URL is required, e.g. http://prometheus.monitoring:9090")
        config = cls(**fields)
        config.check()
        return config

    def check(self) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"url: must be an http(s) URL (got {self.url!r})")
        for key, label in (
            ("namespaceLabel", self.namespace_label),
            ("podLabel", self.pod_label),
            ("containerLabel", self.container_label),
        ):
            if not _LABEL.match(label):
                raise ValueError(f"{key}: not a Prometheus label name: {label!r}")
        if self.stale_after < timedelta(seconds=1):
            raise ValueError("staleAfter: must be at least 1s")
        if self.timeout < timedelta(seconds=1):
            raise ValueError("timeout: must be at least 1s")
        if self.exporter_transactions_per_scrape < 0 or self.exporter_sessions_per_scrape < 0:
            raise ValueError("exporter costs per scrape cannot be negative")

    def queries(self) -> dict[str, str]:
        """The PromQL sent each tick, by metric: raw samples over the staleness bound, whole fleet."""
        milliseconds = round(self.stale_after.total_seconds() * 1000)
        window = f"[{milliseconds // 1000}s]" if milliseconds % 1000 == 0 else f"[{milliseconds}ms]"
        container = f'{self.container_label}="{_escape(self.container)}"'
        cadvisor = "{" + ",".join(m for m in (container, self.matchers) if m) + "}"
        sidecar = "{" + self.matchers + "}" if self.matchers else ""
        return {
            "cpu_seconds": f"container_cpu_usage_seconds_total{cadvisor}{window}",
            "cpu_periods": f"container_cpu_cfs_periods_total{cadvisor}{window}",
            "cpu_throttled_periods": f"container_cpu_cfs_throttled_periods_total{cadvisor}{window}",
            "working_set": f"container_memory_working_set_bytes{cadvisor}{window}",
            "cache": f"container_memory_cache{cadvisor}{window}",
            **{column: f"{exporter.metric_name(column)}{sidecar}{window}" for column in exporter.COLUMNS},
        }


OPTIONAL = frozenset({"cpu_periods", "cpu_throttled_periods"})
"""cAdvisor exports the CFS counters only for a container with a CPU limit; without them, no throttling."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


# -- the source ----------------------------------------------------------------------------------

Series = list[counters.Sample]


@dataclass
class _Run:
    """One database's unbroken run of observations: where each counter was read up to, and what it gave."""

    since: datetime
    read_up_to: dict[str, float] = field(default_factory=dict)
    """Per metric, the timestamp of the latest sample already read."""
    rates: dict[str, float] = field(default_factory=dict)
    """Per counter, the rate last computed: it stands until a newer sample arrives."""
    last_activity: datetime | None = None
    cpu_middle: float | None = None
    """The middle of the window the CPU rate averages (unix seconds): what the rate describes."""

    def unread(self, metric: str, samples: Series) -> Series | None:
        """The samples from the last one read on; a run's first reading starts at the window's oldest.

        None when no sample is newer than the last one read (a tick shorter than the scrape interval).
        """
        read_up_to = self.read_up_to.get(metric)
        start = 0
        if read_up_to is not None:
            start = max((i for i, (t, _) in enumerate(samples) if t <= read_up_to), default=0)
        self.read_up_to[metric] = samples[-1][0]
        return samples[start:] if start < len(samples) - 1 else None


class PrometheusSource:
    name = "prometheus"

    def __init__(self, config: PrometheusConfig | str) -> None:
        """`config` may be just Prometheus's URL, for the default labels and bounds. No I/O here.

        No clock: an observation's time is its samples' own.
        """
        self.config = PrometheusConfig.parse({"url": config}) if isinstance(config, str) else config
        self._client: PrometheusConnect | None = None
        self._lock = threading.Lock()
        """One tick's requests at a time on the shared HTTP session (the sampler and a pause's recheck)."""
        self._runs: dict[str, _Run] = {}
        self._failing = False
        self.queries = 0
        """Queries sent, in total."""
        self.failures = 0
        """Ticks that got no answer from Prometheus, in total."""

    async def observe(self, dbs: Sequence[types.ServerlessDatabase]) -> Mapping[str, Observation]:
        if not dbs:
            return {}
        pods = {(db.metadata.namespace, f"{db.metadata.name}-0"): db.key for db in dbs}
        try:
            results = await asyncio.to_thread(self._fetch)
            by_metric = {metric: self._by_database(result, pods) for metric, result in results.items()}
        except (
            requests.RequestException,  # unreachable, refused, timed out
            PrometheusApiClientException,  # an HTTP error status
            ValueError,  # not JSON, or a value that is not a number
            KeyError,  # JSON without the fields the API promises
            TypeError,  # a field of another shape
        ) as error:
            self.failures += 1
            if not self._failing:  # once per streak, not once per tick
                log.warning("prometheus unavailable: no observations", url=self.config.url, error=str(error))
            self._failing = True
            for db in dbs:
                self._runs.pop(db.key, None)
            return {}
        if self._failing:
            log.info("prometheus available again", url=self.config.url, failed_ticks=self.failures)
            self._failing = False
        observations: dict[str, Observation] = {}
        for db in dbs:
            series = {metric: found[db.key] for metric, found in by_metric.items() if db.key in found}
            complete = all(metric in series for metric in by_metric if metric not in OPTIONAL)
            observation = self._observation(db.key, series) if complete else None
            if observation is None:
                self._runs.pop(db.key, None)  # the run is broken: idleness is not assumed across the gap
                continue
            observations[db.key] = observation
        return observations

    def _fetch(self) -> dict[str, list[dict[str, Any]]]:
        """Every metric's raw samples for the whole fleet: one request each (run on a worker thread)."""
        with self._lock:
            if self._client is None:
                self._client = PrometheusConnect(
                    url=self.config.url.rstrip("/"),
                    retry=Retry(total=0),
                    timeout=math.ceil(self.config.timeout.total_seconds()),
                )
            results: dict[str, list[dict[str, Any]]] = {}
            for metric, query in self.config.queries().items():
                self.queries += 1
                results[metric] = self._client.custom_query(query)
            return results

    def _by_database(
        self, result: list[dict[str, Any]], pods: Mapping[tuple[str, str], str]
    ) -> dict[str, Series]:
        """Each database's series of one metric; of several for one pod, the one sampled last.

        Several appear when a container restarted (the old one's series lingers) or two exporters
        answer for one pod; the newest is the live one.
        """
        found: dict[str, Series] = {}
        for entry in result:
            labels = entry["metric"]
            pod = (labels.get(self.config.namespace_label, ""), labels.get(self.config.pod_label, ""))
            key = pods.get(pod)
            samples = [(float(t), float(v)) for t, v in entry.get("values", ())]
            samples = [sample for sample in samples if math.isfinite(sample[1])]
            if key is None or not samples:
                continue
            if key not in found or samples[-1][0] > found[key][-1][0]:
                found[key] = samples
        return found

    def _observation(self, key: str, newest: Mapping[str, Series]) -> Observation | None:
        # An observation is as old as its oldest part, and every part is read as of that time: the
        # queries are separate, so a scrape can land between two of them; cut at the time, the
        # exporter's figures all come from one scrape.
        cut = min(samples[-1][0] for metric, samples in newest.items() if metric not in OPTIONAL)
        series = {metric: [s for s in samples if s[0] <= cut] for metric, samples in newest.items()}
        if not all(samples for metric, samples in series.items() if metric not in OPTIONAL):
            return None  # a series that began after the others' last scrape: nothing to pair it with yet
        time = _utc(cut)
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run(since=time)
        cpu = run.unread("cpu_seconds", series["cpu_seconds"])
        if cpu is not None:
            run.rates["cpu"] = counters.rate(cpu) or 0.0
            run.cpu_middle = (cpu[0][0] + cpu[-1][0]) / 2
        periods = run.unread("cpu_periods", series["cpu_periods"]) if series.get("cpu_periods") else None
        throttled = (
            run.unread("cpu_throttled_periods", series["cpu_throttled_periods"])
            if series.get("cpu_throttled_periods")
            else None
        )
        if periods is not None and throttled is not None:
            run.rates["throttled"] = counters.share(throttled, periods) or 0.0
        transactions = run.unread("transactions", series["transactions"])
        if transactions is not None:
            own = self.config.exporter_transactions_per_scrape
            run.rates["tps"] = counters.rate(transactions, own_per_interval=own) or 0.0
        started = run.unread("sessions_started", series["sessions_started"])
        if started is not None:
            # Sessions started in a scrape interval beyond the sidecar's own: clients that came and went.
            own = self.config.exporter_sessions_per_scrape
            came = [t for t, increase in counters.increases(started) if increase > own]
            if came:
                run.last_activity = _utc(came[-1])
        return Observation(
            time=time,
            observing_since=run.since,
            client_sessions=round(series["client_sessions"][-1][1]),
            waiting_sessions=round(series["waiting_sessions"][-1][1]),
            cpu_cores=run.rates.get("cpu"),
            cpu_throttled=run.rates.get("throttled"),
            memory_working_set_bytes=round(series["working_set"][-1][1]),
            memory_cache_bytes=round(series["cache"][-1][1]),
            transactions_per_second=run.rates.get("tps"),
            last_activity=run.last_activity,
            # A scrape interval's rate describes its middle, half an interval before the sample's time.
            lag=timedelta(seconds=cut - run.cpu_middle) if run.cpu_middle is not None else None,
        )

    async def forget(self, key: str) -> None:
        self._runs.pop(key, None)

    async def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
