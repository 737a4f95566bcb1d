"""Real `prometheus` and real `prometheus-postgres-exporter` processes for tests.

Each starts on a free port with its files in a temporary directory and is stopped (by its own pid)
when the block ends. Prometheus scrapes every second from a generated configuration; the exporter
runs as the operator's sidecar would: the query file `exporter.queries` writes, the sidecar's flags,
and a DSN tagged with the operator's application_name. Tests skip, saying why, without the binaries
(`./dev test` installs Debian's packages, so they run there).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from controller.postgres import exporter
from controller.runtime.local.runtime import HOST, free_port
from support.operator import wait_for
from support.postgres import Server
from support.requirements import require_commands

PROMETHEUS = "prometheus"
EXPORTER = "prometheus-postgres-exporter"
SCRAPE_INTERVAL = 1.0
"""Seconds between scrapes: short, so a test waits for new samples in about a second."""


def require_binaries() -> None:
    require_commands(PROMETHEUS, EXPORTER, package="prometheus and prometheus-postgres-exporter")


@dataclass(frozen=True)
class Target:
    """One scrape target, with the labels Kubernetes service discovery would give it."""

    job: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    honor_labels: bool = False
    """True for a job whose series carry their own namespace/pod labels (the kubelet's cAdvisor)."""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class Prometheus:
    """A running Prometheus: its URL, its HTTP API, and a count of the queries it has answered."""

    def __init__(self, port: int, directory: Path, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.directory = directory
        self.process = process

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        """An API call's `data`; raises AssertionError with Prometheus's error text on failure."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result (a vector or a matrix)."""
        data = self.api("/api/v1/query", query=promql)
        result = data["result"]
        return result if isinstance(result, list) else [result]

    def queries_answered(self) -> float:
        """Instant queries served so far, from Prometheus's own counter (not from any client's count)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                handler = sample.labels.get("handler")
                if sample.name == "prometheus_http_requests_total" and handler == "/api/v1/query":
                    return float(sample.value)
        return 0.0

    def wait_until_up(self, expected: int, *, timeout: float = 30.0) -> None:
        """Until `expected` targets have each been scraped successfully."""

        def all_up() -> bool:
            self._check_alive()
            try:
                # Its API answers 503 until Prometheus says it is ready: ask that first.
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=10):
                    pass
                targets = self.api("/api/v1/targets")["activeTargets"]
            except OSError:  # not listening yet, or not ready (an HTTPError is an OSError)
                return False
            return len(targets) == expected and all(t["health"] == "up" for t in targets)

        wait_for(all_up, timeout=timeout, every=0.1, what=f"{expected} Prometheus targets to be up")

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            log = (self.directory / "prometheus.log").read_text(errors="replace")
            raise AssertionError(f"prometheus exited ({self.process.returncode}):\n{log[-3000:]}")


def _config(targets: Sequence[Target]) -> dict[str, Any]:
    jobs: dict[str, dict[str, Any]] = {}
    for target in targets:
        job = jobs.setdefault(
            target.job, {"job_name": target.job, "honor_labels": target.honor_labels, "static_configs": []}
        )
        job["static_configs"].append({"targets": [f"{HOST}:{target.port}"], "labels": dict(target.labels)})
    interval = f"{SCRAPE_INTERVAL:g}s"
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval},
        "scrape_configs": list(jobs.values()),
    }


@contextlib.contextmanager
def running_prometheus(targets: Sequence[Target]) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` every second, with all of them up before the block starts."""
    require_binaries()
    directory = Path(tempfile.mkdtemp(prefix="sdb-prometheus-"))
    (directory / "prometheus.yml").write_text(yaml.safe_dump(_config(targets)))
    port = free_port()
    with open(directory / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={HOST}:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prometheus = Prometheus(port, directory, process)
    try:
        # Some five seconds: Prometheus 2.42 hands new targets to its scrapers on a 5 s tick.
        prometheus.wait_until_up(len(targets))
        yield prometheus
    finally:
        _stop(process)
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Exporter:
    port: int
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def running_exporter(
    server: Server, *, ignored_applications: Sequence[str] = ("postgres_exporter", "pgbouncer")
) -> Iterator[Exporter]:
    """postgres_exporter in front of `server`, configured as the operator's sidecar."""
    require_binaries()
    directory = Path(tempfile.mkdtemp(prefix="sdb-exporter-"))
    queries = directory / "queries.yaml"
    queries.write_text(exporter.queries(ignored_applications))
    port = free_port()
    dsn = (
        f"postgresql://postgres:{urllib.parse.quote(server.password, safe='')}@{HOST}:{server.port}/postgres"
        f"?sslmode=disable&application_name={exporter.APPLICATION}"
    )
    with open(directory / "exporter.log", "wb") as log:
        process = subprocess.Popen(
            [
                EXPORTER,
                f"--web.listen-address={HOST}:{port}",
                f"--extend.query-path={queries}",
                *exporter.ARGS,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATA_SOURCE_NAME": dsn},
            start_new_session=True,
        )
    try:
        wait_for(lambda: _serves(port, process), timeout=15, what="postgres_exporter to listen")
        yield Exporter(port, process)
    finally:
        _stop(process)
        shutil.rmtree(directory, ignore_errors=True)


def _serves(port: int, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"postgres_exporter exited ({process.returncode})")
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=1):
            return True
    except OSError:
        return False
