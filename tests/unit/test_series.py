"""Per-database series kept as plain numbers serve what prometheus-client's own metrics serve."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as ClientCounter
from prometheus_client import Gauge as ClientGauge

from controller.api import types
from controller.metrics import series
from controller.metrics.exposition import OperatorMetrics

LABELS = ("namespace", "database")


def _served(registry: CollectorRegistry) -> str:
    # A counter's `_created` is the time its series began: the two registries began at other times.
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", generate_latest(registry).decode())


def _use(gauge: object, counter: object) -> None:
    """The same steps, on either kind."""
    for name in ("b", "a", "c"):
        counter.labels("shop", name)  # type: ignore[attr-defined]
        gauge.labels("shop", name).set(0.5)  # type: ignore[attr-defined]
    counter.labels("shop", "a").inc()  # type: ignore[attr-defined]
    counter.labels("shop", "a").inc(2.5)  # type: ignore[attr-defined]
    gauge.labels("shop", "b").set(3)  # type: ignore[attr-defined]
    gauge.remove("shop", "c")  # type: ignore[attr-defined]
    counter.remove("shop", "c")  # type: ignore[attr-defined]


def test_plain_series_serve_what_prometheus_clients_metrics_serve() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    _use(
        series.Gauge("sdb_g", "A gauge.", LABELS, registry=ours),
        series.Counter("sdb_c", "A counter.", LABELS, registry=ours),
    )
    _use(
        ClientGauge("sdb_g", "A gauge.", LABELS, registry=theirs),
        ClientCounter("sdb_c", "A counter.", LABELS, registry=theirs),
    )
    assert _served(ours) == _served(theirs)
    assert 'sdb_c_total{database="a",namespace="shop"} 3.5' in _served(ours)
    assert 'database="c"' not in _served(ours)


def test_a_counter_only_rises_and_labels_must_match() -> None:
    counter = series.Counter("sdb_c", "A counter.", LABELS, registry=CollectorRegistry())
    with pytest.raises(ValueError, match="cannot go down"):
        counter.labels("shop", "a").inc(-1)
    with pytest.raises(TypeError):
        counter.labels("shop", "a").set(1)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("shop")
    with pytest.raises(ValueError, match="cannot go down"):
        counter.inc_each([(("shop", "a"), -1)])
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc_each([(("shop",), 1)])


def test_counting_a_fleet_at_once_is_counting_each() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    at_once = series.Counter("sdb_c", "A counter.", LABELS, registry=ours)
    each = series.Counter("sdb_c", "A counter.", LABELS, registry=theirs)
    for amounts in ([(("shop", "a"), 2.0), (("shop", "b"), 0.5)], [(("shop", "a"), 1.0)], []):
        at_once.inc_each(amounts)
        for key, amount in amounts:
            each.labels(*key).inc(amount)
    assert _served(ours) == _served(theirs)
    assert 'sdb_c_total{database="a",namespace="shop"} 3.0' in _served(ours)


def test_a_database_has_one_phase_series_its_current_one_and_none_once_forgotten() -> None:
    metrics = OperatorMetrics()

    def phases() -> dict[str, float]:
        return {
            sample.labels["phase"]: sample.value
            for family in metrics.phase.collect()
            for sample in family.samples
            if sample.labels["database"] == "orders"
        }

    for phase in (types.Phase.ACTIVE, types.Phase.ACTIVE, types.Phase.PAUSED, types.Phase.PAUSED):
        metrics.observe_phase("shop", "orders", phase)
    assert phases() == {"Paused": 1.0}
    metrics.forget("shop", "orders")
    assert phases() == {}
    metrics.observe_phase("shop", "orders", types.Phase.PAUSED)  # created again under the same name
    assert phases() == {"Paused": 1.0}
