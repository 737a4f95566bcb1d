"""Run the real `sdb` against a temporary state directory: the operator as a process, the CLI in-process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import yaml
from prometheus_client.parser import text_string_to_metric_families

from controller.api import types
from controller.app import cli, local
from controller.runtime.local.runtime import read_endpoint
from controller.runtime.local.store import FileStore

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
SDB = [sys.executable, "-m", "controller.app.cli"]


def wait_for(predicate: Callable[[], T], *, timeout: float = 30.0, every: float = 0.05, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(every)


class Operator:
    """`sdb up` as a child process, and the CLI and store over the same state directory."""

    def __init__(
        self,
        state_dir: Path,
        *,
        tick: float = 0.5,
        wake_timeout: float = 30.0,
        metrics_port: int = -1,
        gateway_port: int = 0,
        options: tuple[str, ...] = (),
    ) -> None:
        self.state_dir = state_dir
        self.options = options
        """More `sdb up` options, given at every start."""
        self.tick = tick
        self.wake_timeout = wake_timeout
        self.metrics_port = metrics_port
        self.gateway_port = gateway_port
        self.store = FileStore(state_dir)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = state_dir.parent / f"{state_dir.name}-operator.log"

    def start(self, *extra: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *SDB,
                    "up",
                    "--state-dir",
                    str(self.state_dir),
                    "--metrics-port",
                    str(self.metrics_port),
                    "--tick",
                    str(self.tick),
                    "--wake-timeout",
                    str(self.wake_timeout),
                    "--gateway-port",
                    str(self.gateway_port),
                    "--log-format",
                    "json",
                    *self.options,
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,  # its own process group, so a test can kill all of it at once
            )
        wait_for(
            lambda: (self.state_dir / "operator.lock").exists() and self._log_has("operator running"),
            timeout=30,
            what="the operator to start",
        )

    def _log_has(self, text: str) -> bool:
        self._check_alive()
        return text in self.log.read_text(errors="replace")

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"the operator exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}"
            )

    def stop(self) -> None:
        """Ctrl-C: a clean stop, which also stops its Postgres servers."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        finally:
            self.process = None

    def kill(self) -> None:
        """SIGKILL to the operator and every process of its group (Postgres servers have their own)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    # -- the CLI ---------------------------------------------------------------------------------

    def sdb(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([args[0], "--state-dir", str(self.state_dir), *args[1:]])
        if check and code != 0:
            raise AssertionError(f"sdb {' '.join(args)} exited {code}: {err.getvalue()}")
        return code, out.getvalue(), err.getvalue()

    def apply(self, manifest: dict[str, Any] | str | Path) -> None:
        if isinstance(manifest, Path):
            path = manifest
        else:
            path = self.state_dir.parent / f"manifest-{time.monotonic_ns()}.yaml"
            path.write_text(manifest if isinstance(manifest, str) else yaml.safe_dump(manifest))
        self.sdb("apply", "-f", str(path))

    def get(self, name: str, namespace: str = "default") -> types.ServerlessDatabase:
        db = self.store.read(f"{namespace}/{name}")
        assert db is not None, f"{namespace}/{name} does not exist"
        return db

    def wait_phase(
        self, name: str, phase: types.Phase, *, timeout: float = 60, namespace: str = "default"
    ) -> None:
        def reached() -> bool:
            self._check_alive()
            return self.get(name, namespace).status.phase is phase

        wait_for(reached, timeout=timeout, what=f"{namespace}/{name} to be {phase.value}")

    def dsn(self, name: str, namespace: str = "default") -> str:
        endpoint = read_endpoint(self.state_dir, f"{namespace}/{name}")
        assert endpoint is not None, f"{name} has no endpoint"
        return (
            f"postgresql://{endpoint.user}:{endpoint.password}@127.0.0.1:{endpoint.port}/{endpoint.database}"
        )

    def connect(self, name: str, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.dsn(name), autocommit=True, connect_timeout=60, **kwargs)

    def sql_over_http(self, name: str, query: str, *, token: str | None = None, role: str = "") -> Any:
        """One `POST /sql` to the gateway, as `sdb dsn NAME --http` configures a client (HTTPS,
        trusting the operator's CA), or as `role` with a bearer token; the JSON answer."""
        _, out, _ = self.sdb("dsn", name, "--http", "--show-password")
        settings = {key: value for key, _, value in (line.partition(": ") for line in out.splitlines())}
        if role:
            url = urllib.parse.urlsplit(settings["connectionString"])
            settings["connectionString"] = url._replace(netloc=f"{role}@{url.hostname}").geturl()
        sent = urllib.request.Request(
            settings["fetchEndpoint"],
            data=json.dumps({"query": query, "params": []}).encode(),
            headers={
                "Neon-Connection-String": settings["connectionString"],
                "Neon-Array-Mode": "true",
                **({"Authorization": f"Bearer {token}"} if token is not None else {}),
            },
        )
        trust = ssl.create_default_context(cafile=settings["caCertificate"])
        with urllib.request.urlopen(sent, timeout=60, context=trust) as response:
            return json.loads(response.read())

    def metric(self, name: str, **labels: str) -> float:
        """One sample from the operator's /metrics (0 when the series does not exist yet)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    @property
    def gateway(self) -> str:
        """The gateway's `host:port`, from the running operator's record."""
        address = local.read_gateway(self.state_dir)
        assert address is not None, "the operator serves no gateway"
        return f"{address.host}:{address.port}"

    def pgdata(self, name: str, namespace: str = "default") -> Path:
        return self.state_dir / "databases" / namespace / name / "pgdata"


def database(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dbscale.io/v1alpha1",
        "kind": "ServerlessDatabase",
        "metadata": {"name": name},
        "spec": spec,
    }


@contextlib.contextmanager
def running_operator(state_dir: Path, **kwargs: Any) -> Iterator[Operator]:
    """`sdb up` started, and stopped cleanly at the end (a test may stop and start it meanwhile)."""
    operator = Operator(state_dir, **kwargs)
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
