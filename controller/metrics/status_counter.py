"""A Prometheus counter whose values are kept in status, not counted by the process that serves it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily


class StatusCounter:
    """A counter whose values are kept in status, not counted by this process.

    prometheus-client's Counter starts at zero with the process. This one serves, for each label
    set, the value last handed to `set` and the time counting began (`_created`), so a restarted
    operator goes on from where status says, and the series agrees with status.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: tuple[str, ...], *, registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._values: dict[tuple[str, ...], tuple[float, float]] = {}
        self._lock = threading.Lock()  # collected on the HTTP server's thread
        registry.register(self)

    def set(self, labels: tuple[str, ...], value: float, *, created: float) -> None:
        """The value for `labels`; never lower than the one served before (a counter only rises)."""
        with self._lock:
            before = self._values.get(labels)
            self._values[labels] = (max(value, before[0]) if before else value, created)

    def remove(self, *labels: str) -> None:
        with self._lock:
            self._values.pop(labels, None)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            values = sorted(self._values.items())
        for labels, (value, created) in values:
            family.add_metric(labels, value, created=created)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
