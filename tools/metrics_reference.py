"""docs/metrics.md from `controller.metrics.exposition`: every series the operator serves on /metrics.

Each metrics class in that module is built on a throwaway registry, given one placeholder child per
metric, and collected; the page lists what the exposition really carries (a Counter `x` is served as
`x_total`, a Histogram as `x_bucket`, `x_sum` and `x_count`), so names cannot drift from the code.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import ModuleType

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from controller.metrics import exposition
from controller.metrics.series import Family
from controller.metrics.status_counter import StatusCounter

SOURCE = "controller/metrics/exposition.py"


@dataclass(frozen=True)
class Series:
    name: str
    type: str
    labels: tuple[str, ...]
    help: str
    samples: tuple[str, ...]
    """The sample names served (name_total, name_bucket, ...), without prometheus-client's `_created`."""
    buckets: tuple[float, ...] = ()


def metric_classes(module: ModuleType = exposition) -> list[type]:
    """Classes defined in the module whose constructor takes a `registry`: one per process's metrics."""
    found = []
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ == module.__name__ and "registry" in inspect.signature(cls).parameters:
            found.append(cls)
    return found


def series(cls: type) -> list[Series]:
    """What an instance of `cls` serves, in the order its metrics are declared."""
    registry = CollectorRegistry()
    instance = cls(registry=registry)
    out: list[Series] = []
    for metric in vars(instance).values():
        # A placeholder child per metric makes the collected families carry every sample name and label.
        if isinstance(metric, StatusCounter):
            metric.set(tuple(f"<{label}>" for label in metric.labelnames), 0.0, created=0.0)
        if isinstance(metric, Family):
            metric.labels(*(f"<{label}>" for label in metric.labelnames))
        if not isinstance(metric, MetricWrapperBase):
            continue
        # `_labelnames` is the one thing prometheus-client keeps only privately.
        labels = tuple(metric._labelnames)
        if labels:
            metric.labels(*(f"<{label}>" for label in labels))
    for family in registry.collect():
        samples = tuple(dict.fromkeys(s.name for s in family.samples if not s.name.endswith("_created")))
        buckets = tuple(
            float(s.labels["le"])
            for s in family.samples
            if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
        )
        labels = next(
            (tuple(k for k in s.labels if k != "le") for s in family.samples if s.name in samples), ()
        )
        out.append(Series(family.name, family.type, labels, family.documentation, samples, buckets))
    return out


def render(module: ModuleType = exposition) -> str:
    lines = [
        "# Metrics",
        "",
        f"<!-- Generated from {SOURCE} by `python -m tools`; edit that file, not this one. -->",
        "",
        "The operator serves these on `/metrics` (`sdb up --metrics-port`, 9465 in the Helm chart; the",
        "chart's `<release>-metrics` Service and its optional ServiceMonitor point at it). Series about one",
        "database carry its `namespace` and `database` (the ServerlessDatabase's name). Counters also",
        "expose prometheus-client's `<name>_created` timestamp, not listed here. In a cluster the",
        "activator runs apart (`sdb activator`) and serves its own `/metrics` on port 9466; the chart's",
        "ServiceMonitor scrapes both.",
        "",
        "The databases' own Postgres statistics come from the `exporter` sidecar in each database's pod",
        "(postgres_exporter; the chart's optional PodMonitor scrapes it and adds the `database` label).",
        "",
    ]
    for cls in metric_classes(module):
        doc = inspect.getdoc(cls)
        title = doc.splitlines()[0] if doc and cls.__doc__ else cls.__name__
        lines += [f"## {title}" if title != cls.__name__ else f"## `{cls.__name__}`", ""]
        lines += ["| Series | Type | Labels | Meaning |", "| --- | --- | --- | --- |"]
        for each in series(cls):
            names = "<br>".join(f"`{name}`" for name in each.samples)
            labels = ", ".join(f"`{label}`" for label in each.labels) or "-"
            meaning = each.help
            if each.buckets:
                meaning += " Buckets (`le`): " + ", ".join(f"{b:g}" for b in each.buckets) + "."
            lines.append(f"| {names} | {each.type} | {labels} | {_cell(meaning)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
