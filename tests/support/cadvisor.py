"""A stand-in for the kubelet's cAdvisor endpoint (`/metrics/cadvisor`), for hosts without Kubernetes.

What it stands in for: the kubelet serves, for each container of each pod on its node, counters and
gauges read from the container's cgroup, under cAdvisor's names and labels, each sample stamped with
the time the stats were read. This serves the three series the Prometheus source reads, with the
same names, types, labels (`container`, `namespace`, `pod`, `id`, `image`, `name`, and `cpu="total"`
on the CPU counter) and explicit timestamps, plus the pod-level series (`container=""`, the pod's
own cgroup, holding every container) that a query must filter out:
  container_cpu_usage_seconds_total    cgroup cpu usage: every process of the container, exited ones too
  container_memory_working_set_bytes   cgroup usage minus inactive file pages
  container_memory_cache               cgroup page cache, which includes shared memory (shmem)

What differs: a test's Postgres runs in no cgroup of its own, so a "container" here is a real
process tree (the postmaster and its children) and the values are read from it: CPU is the tree's
user + system time including reaped children; the working set is its resident memory with shared
pages counted once; the cache is those shared pages (shared_buffers lives in shmem, which a cgroup
charges as page cache). The values are real: load on the server moves them.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.runtime.local import server

LABELS = ("container", "namespace", "pod", "id", "image", "name")


@dataclass(frozen=True)
class ContainerUsage:
    cpu_seconds: float
    working_set: int
    cache: int

    def __add__(self, other: ContainerUsage) -> ContainerUsage:
        return ContainerUsage(
            self.cpu_seconds + other.cpu_seconds,
            self.working_set + other.working_set,
            self.cache + other.cache,
        )


def usage_of(root: int) -> ContainerUsage | None:
    """A process tree's usage, read as a cgroup would account it; None once the root has exited."""
    tree = server.process_tree(root)
    if tree is None:
        return None
    return ContainerUsage(tree.cpu_seconds, tree.private_bytes + tree.shared_bytes, tree.shared_bytes)


class _Collector(Collector):
    def __init__(self, cadvisor: Cadvisor) -> None:
        self.cadvisor = cadvisor

    def collect(self) -> Iterable[Metric]:
        cpu = CounterMetricFamily(
            "container_cpu_usage_seconds", "Cumulative cpu time consumed in seconds.", labels=(*LABELS, "cpu")
        )
        working_set = GaugeMetricFamily(
            "container_memory_working_set_bytes", "Current working set in bytes.", labels=LABELS
        )
        cache = GaugeMetricFamily(
            "container_memory_cache", "Number of bytes of page cache memory.", labels=LABELS
        )
        now = time.time()
        for (namespace, pod), containers in self.cadvisor.pods().items():
            total: ContainerUsage | None = None
            for container, pid in containers.items():
                usage = usage_of(pid)
                if usage is None:
                    continue
                total = usage if total is None else total + usage
                labels = _labels(namespace, pod, container)
                cpu.add_metric([*labels, "total"], usage.cpu_seconds, timestamp=now)
                working_set.add_metric(labels, usage.working_set, timestamp=now)
                cache.add_metric(labels, usage.cache, timestamp=now)
            if total is not None:  # the pod's own cgroup: every container together
                labels = _labels(namespace, pod, "")
                cpu.add_metric([*labels, "total"], total.cpu_seconds, timestamp=now)
                working_set.add_metric(labels, total.working_set, timestamp=now)
                cache.add_metric(labels, total.cache, timestamp=now)
        yield from (cpu, working_set, cache)


def _labels(namespace: str, pod: str, container: str) -> list[str]:
    uid = hashlib.sha1(f"{namespace}/{pod}".encode()).hexdigest()[:12]
    cgroup = f"/kubepods.slice/pod{uid}" + (f"/{container}" if container else "")
    image = {"postgres": "postgres:16", "exporter": "postgres-exporter:v0.11.1"}.get(container, "")
    return [container, namespace, pod, cgroup, image, container and f"{pod}_{container}"]


class Cadvisor:
    """Serves containers as a kubelet would; a test adds and removes them while it runs."""

    def __init__(self) -> None:
        self._containers: dict[tuple[str, str], dict[str, int]] = {}
        self._lock = threading.Lock()
        self.port = 0

    def add(self, namespace: str, pod: str, container: str, pid: int) -> None:
        """Serve `container` of `pod`, whose processes are `pid` and its descendants."""
        with self._lock:
            self._containers.setdefault((namespace, pod), {})[container] = pid

    def remove(self, namespace: str, pod: str) -> None:
        """The pod is gone from the node: its series are no longer served."""
        with self._lock:
            self._containers.pop((namespace, pod), None)

    def pods(self) -> dict[tuple[str, str], dict[str, int]]:
        with self._lock:
            return {pod: dict(containers) for pod, containers in self._containers.items()}

    @contextlib.contextmanager
    def serving(self) -> Iterator[Cadvisor]:
        registry = CollectorRegistry()
        registry.register(_Collector(self))
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        self.port = int(server.server_port)
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
