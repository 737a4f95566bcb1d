"""Per-database gauges and counters kept as plain numbers, served as Prometheus families when scraped.

prometheus-client keeps a whole metric object, with locks of its own, for every label set: some
0.6 KiB each, and a database has a dozen, which is 75 MiB of an operator with 10,000 databases. A
series here is one dict entry: its value, and for a counter the time counting began (`_created`).
What is served is the same: names, help, types, labels and samples.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class Family(abc.ABC):
    """Series by label values; `labels(...)` makes one exist (a counter at 0), `remove` drops it."""

    def __init__(
        self, name: str, documentation: str, labelnames: tuple[str, ...], *, registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._values: dict[tuple[str, ...], float] = {}
        self._created: dict[tuple[str, ...], float] = {}
        """When counting began, for a counter's label sets."""
        self._lock = threading.Lock()  # collected on the HTTP server's thread
        registry.register(self)

    def labels(self, *values: str) -> Child:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
        with self._lock:
            self._make(values)
        return Child(self, values)

    def _make(self, key: tuple[str, ...]) -> None:
        if key not in self._values:
            self._values[key] = 0.0
            if isinstance(self, Counter):
                self._created[key] = time.time()

    def remove(self, *values: str) -> None:
        with self._lock:
            self._values.pop(values, None)
            self._created.pop(values, None)

    def _set(self, key: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._make(key)
            self._values[key] = value

    def _inc(self, key: tuple[str, ...], amount: float) -> None:
        with self._lock:
            self._make(key)
            self._values[key] += amount

    def inc_each(self, amounts: Iterable[tuple[tuple[str, ...], float]]) -> None:
        """`labels(*key).inc(amount)` for each, under one hold of the lock: a tick counts for the
        whole fleet at once."""
        with self._lock:
            for key, amount in amounts:
                if len(key) != len(self.labelnames):
                    raise ValueError(f"{self.name} takes labels {self.labelnames}, not {key}")
                if amount < 0 and isinstance(self, Counter):
                    raise ValueError(f"{self.name} is a counter: it cannot go down")
                self._make(key)
                self._values[key] += float(amount)

    @abc.abstractmethod
    def _family(self) -> Metric:
        """An empty family of this kind, for `collect` to fill."""

    @abc.abstractmethod
    def _add(self, family: Metric, labels: tuple[str, ...], value: float, created: float) -> None:
        """One series into the family `_family` made."""

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        with self._lock:
            values = [(k, v, self._created.get(k, 0.0)) for k, v in self._values.items()]
        for labels, value, created in values:
            self._add(family, labels, value, created)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield self._family()


class Gauge(Family):
    def _family(self) -> Metric:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, labels: tuple[str, ...], value: float, created: float) -> None:
        assert isinstance(family, GaugeMetricFamily)
        family.add_metric(labels, value)


class Counter(Family):
    """Served as `<name>_total`, with `<name>_created`, as prometheus-client's Counter is."""

    def _family(self) -> Metric:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, labels: tuple[str, ...], value: float, created: float) -> None:
        assert isinstance(family, CounterMetricFamily)
        family.add_metric(labels, value, created=created)


class Child:
    """One series of a family (made for each `labels` call: nothing is kept but the family's entry)."""

    __slots__ = ("_family", "_key")

    def __init__(self, family: Family, key: tuple[str, ...]) -> None:
        self._family = family
        self._key = key

    def set(self, value: float) -> None:
        if isinstance(self._family, Counter):
            raise TypeError(f"{self._family.name} is a counter: it only rises (inc)")
        self._family._set(self._key, float(value))

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0 and isinstance(self._family, Counter):
            raise ValueError(f"{self._family.name} is a counter: it cannot go down")
        self._family._inc(self._key, float(amount))
