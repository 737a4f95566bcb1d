"""Fleet: what the cluster operator costs, and how fast it answers, with N databases on the API double.

    nice -n 5 .venv/bin/python bench/fleet.py --databases 100 1000 10000

Three processes: this one measures; the double runs in one of its own (`fleet_double.py`), and the
operator in another (`fleet.py operator`), so the RSS and CPU reported are the operator's alone and
the double's work slows neither. The fleet is 10% Active, 30% Paused and 60% Parked. For each N:

- preload: an operator builds ten databases (one of each kind is the template) and stops; the double
  then holds N - 10 copies of them, restored as settled objects (`fleet_double.preload`);
- start: a new operator starts on the fleet: from its taking the Lease to its first pass of every
  database, and the writes it made meanwhile (a faithful preload needs almost none);
- steady: 60 s later: the operator's RSS and CPU, the API requests and writes it made, and the
  passes it made a second (a 2 s tick for the running tenth is N / 20 a second);
- pickup: 20 new objects, one at a time; from each object's creation to its first status write
  (Pending, before any step), and to the status its first pass ends with (storage, endpoint and
  compute made: no longer Creating);
- wakes: a full resync is started, and 20 paused databases get a WakeRequest (as the activator makes
  them) at once; from each request to a status that answers it Active and Ready, and to the
  operator's first write for it (its queueing and first look);
- restart: the operator stops, a wake is asked for while none runs, and a new operator starts: from
  its taking the Lease to its first write for the woken database, and to its first pass of every
  database (`startup_s`).

The machine's 1-minute load average is reported at each step (others' work slows every latency).

What is simulated: the double's pods run nothing (its kubelet makes them Ready); the operator's own
SQL (the settings of a size, once per start) goes to one real Postgres standing in for every pod;
load comes from a source that says every running database has one client and a little CPU, one
batched reading per tick for the fleet, as Prometheus gives. Requests the benchmark itself makes go
to the double's store directly and are not counted. The activator's port range is widened to fit
N + 1,000 databases (the chart's default of 10,000 ports is exactly full at N = 10,000).

FLEET_LOG=path keeps the operator's log lines (FLEET_LOG_LEVEL=debug for each step of each pass).

Last line: databases rss_mib cpu_cores api_rps pickup_p99_s wake_p99_s startup_s (of the largest N).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any

import psutil
from common import percentile, report

from controller.api import types, units
from controller.policy.inputs import Observation
from controller.runtime.local.runtime import free_port

SYSTEM = "sdb-system"
NAMESPACE = "fleet"
ACTIVE, PAUSED, PARKED = "active", "paused", "parked"
MIX = ((ACTIVE, 0.1), (PAUSED, 0.3), (PARKED, 0.6))
WANT = {ACTIVE: "Active", PAUSED: "Paused", PARKED: "Parked"}
MIB = 1024 * 1024


# -- the operator's process ----------------------------------------------------------------------


class SteadyLoad:
    """Every running database has one client and a little CPU: one reading for the fleet per tick."""

    name = "steady"

    def __init__(self) -> None:
        self.since = units.now_utc()

    async def observe(self, dbs: Sequence[types.ServerlessDatabase]) -> Mapping[str, Observation]:
        now = units.now_utc()
        return {
            db.key: Observation(
                time=now,
                observing_since=self.since,
                client_sessions=1,
                cpu_cores=0.05,
                memory_working_set_bytes=200 * MIB,
            )
            for db in dbs
        }

    async def forget(self, key: str) -> None:
        pass

    async def close(self) -> None:
        pass


def run_operator(args: argparse.Namespace) -> None:
    """The cluster operator as `sdb up --runtime kubernetes` assembles it, on the double, with the
    load above and one Postgres for every pod. SIGUSR1 starts a full resync."""
    from kubernetes import client

    from controller.app import logs, process
    from controller.app.cluster import ClusterOperator, Options
    from controller.policy.inputs import Tuning
    from controller.runtime.kubernetes import client as kc
    from controller.runtime.kubernetes import permissions

    logs.configure(level=os.environ.get("FLEET_LOG_LEVEL", "info"), json=True)
    configuration = client.Configuration()
    configuration.host = args.url
    load = SteadyLoad()
    limit = kc.rate_limit(args.kube_qps, args.kube_burst)
    operator = ClusterOperator(
        kc.Kube(client.ApiClient(configuration), permissions.OPERATOR, limit=limit),
        Options(
            pod_namespace=SYSTEM,
            activator_service="activator",
            identity=f"fleet-{os.getpid()}",
            tuning=Tuning(tick=timedelta(seconds=args.tick)),
            activator_ports=tuple(int(port) for port in args.activator_ports.split("-")),  # type: ignore[arg-type]
        ),
        locate=lambda pod: ("127.0.0.1", args.postgres_port),
        metrics=load,
        recheck=load,
    )
    operator.reconciler.resync = timedelta(hours=1)  # the benchmark starts its resync itself
    operator.exposition.serve(args.metrics_port, "127.0.0.1")

    def orphaned() -> None:  # the benchmark holds our stdin: when it goes, so do we
        sys.stdin.buffer.read()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, daemon=True).start()

    async def main(stop: asyncio.Event) -> bool:
        loop = asyncio.get_running_loop()
        resyncs: set[asyncio.Task[None]] = set()

        def resync() -> None:
            task = loop.create_task(operator.reconciler.resync_all())
            resyncs.add(task)
            task.add_done_callback(resyncs.discard)

        loop.add_signal_handler(signal.SIGUSR1, resync)
        return await operator.run(stop)

    asyncio.run(process.until_signalled(main))


# -- the benchmark's side ------------------------------------------------------------------------


@dataclass
class Child:
    """The operator's process, and what it logged (each line with the time it arrived)."""

    process: subprocess.Popen[bytes]
    lines: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [line for _, line in self.lines if line.get("event") == event]

    def wait_logged(self, event: str, *, timeout: float, after: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.logged(event)
            if len(found) > after:
                return found[after]
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited ({self.process.returncode})")
            time.sleep(0.02)
        raise TimeoutError(f"the operator never logged {event!r}")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


SPAWNED: list[Child] = []
"""Every operator started, so that each is stopped however the benchmark ends."""


@dataclass(frozen=True)
class OperatorOptions:
    url: str
    postgres_port: int
    tick: float
    metrics_port: int
    activator_ports: tuple[int, int]
    """Wider than the chart's default of 10,000 ports, which 10,000 databases would fill exactly."""


def spawn(options: OperatorOptions) -> Child:
    low, high = options.activator_ports
    command = [sys.executable, __file__, "operator", "--url", options.url]
    command += ["--postgres-port", str(options.postgres_port), "--tick", str(options.tick)]
    command += ["--metrics-port", str(options.metrics_port), "--kube-qps", "0"]
    command += ["--activator-ports", f"{low}-{high}"]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    child = Child(process)
    SPAWNED.append(child)
    keep = open(os.environ["FLEET_LOG"], "ab") if os.environ.get("FLEET_LOG") else None  # noqa: SIM115

    def read() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            if keep is not None:
                keep.write(raw)
                keep.flush()
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": raw.decode(errors="replace").rstrip()}
            child.lines.append((time.time(), line))
            if line.get("level") in ("error", "critical") or "Traceback" in str(line.get("event")):
                print("operator:", str(line)[:400], file=sys.stderr)

    threading.Thread(target=read, daemon=True).start()
    return child


def logged_at(line: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def groups(count: int) -> dict[str, list[str]]:
    """Names by group, in the mix's shares, interleaved so no group sits together in the keyspace."""
    out: dict[str, list[str]] = {group: [] for group, _ in MIX}
    for index in range(count):
        slot = index % 10
        group = ACTIVE if slot == 0 else PAUSED if slot <= 3 else PARKED
        out[group].append(f"db{index:05d}")
    return out


def database(name: str, group: str) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if group == PAUSED:
        spec["state"] = "Paused"  # made paused; set to Auto once paused, so a client can wake it
    elif group == PARKED:
        spec["state"] = "Parked"
    return {
        "apiVersion": types.API_VERSION,
        "kind": types.KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


class Double:
    """The API double's process (`fleet_double.py`), and calls to what it offers there (its `Side`)."""

    def __init__(self) -> None:
        key = os.urandom(16)
        self.listener = Listener(("127.0.0.1", 0), authkey=key)
        host, port = self.listener.address
        command = [
            sys.executable,
            str(Path(__file__).with_name("fleet_double.py")),
            "--address",
            f"{host}:{port}",
        ]
        self.process = subprocess.Popen(command, env={**os.environ, "FLEET_DOUBLE_KEY": key.hex()})
        self.connection = self.listener.accept()
        self.lock = threading.Lock()
        self.url: str = self.call("url")

    def call(self, method: str, *args: Any) -> Any:
        with self.lock:
            self.connection.send((method, args))
            ok, value = self.connection.recv()
        if not ok:
            raise RuntimeError(f"the double failed: {value}")
        return value

    def close(self) -> None:
        self.connection.close()  # the double's process ends when its connection does
        self.listener.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Fleet:
    """The fleet's objects, read and written in the double's store directly (not in its request log)."""

    def __init__(self, double: Double) -> None:
        self.double = double

    def create(self, obj: dict[str, Any]) -> None:
        self.double.call("create", obj)

    def get(self, name: str) -> dict[str, Any] | None:
        return self.double.call("get", name)  # type: ignore[no-any-return]

    def ask_wake(self, name: str) -> str:
        return self.double.call("ask_wake", name)  # type: ignore[no-any-return]

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.double.call("patch", name, patch)

    def wait_converged(self, want: Mapping[str, str], *, timeout: float, what: str) -> float:
        """Until every named object has its phase, for its generation."""
        started = time.monotonic()
        self.double.call("expect", dict(want))
        while (done := self.double.call("converged")) < len(want):
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{what}: {done} of {len(want)} after {timeout} s")
            time.sleep(0.25)
        return time.monotonic() - started


def wait(predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(every)
    return value


def answered(fleet: Fleet, name: str, token: str) -> bool:
    return bool(fleet.double.call("answered", {name: token}))


def cpu_seconds(ps: psutil.Process) -> float:
    times = ps.cpu_times()
    return float(times.user + times.system)


def measure_steady(child: Child, double: Double, seconds: float, metrics_port: int) -> dict[str, float]:
    """The operator's RSS, CPU and requests over `seconds` of steady state, and the passes it made
    a second (counted from its /metrics, read just before and after, outside the CPU's window)."""
    ps = child.ps
    passes_before, counted = reconcile_count(metrics_port), time.monotonic()
    since = time.time()
    cpu_before, started = cpu_seconds(ps), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    cpu = (cpu_seconds(ps) - cpu_before) / elapsed
    passes = (reconcile_count(metrics_port) - passes_before) / (time.monotonic() - counted)
    traffic = double.call("traffic", since, time.time())
    until = time.time()
    print(f"   steady writes: {double.call('writes_by_resource', since, until)}", flush=True)
    print(f"   most written: {double.call('top_writers', since, until)}", flush=True)
    return {
        "rss_mib": ps.memory_info().rss / MIB,
        "cpu_cores": cpu,
        "api_rps": traffic["requests"] / elapsed,
        "api_writes_per_s": traffic["writes"] / elapsed,
        "secret_reads_per_min": traffic["secret_reads"] / elapsed * 60,
        "passes_per_s": passes,
        "load_steady": os.getloadavg()[0],  # others' work on this machine slows every latency
    }


def measure_pickup(fleet: Fleet, count: int) -> tuple[list[float], list[float]]:
    """New objects one at a time: from each one's creation to the first status it has, and to the
    status its first pass ends with."""
    seen, passed = [], []
    for index in range(count):
        name = f"new{index:03d}"
        created = time.time()
        fleet.create(database(name, ACTIVE))
        wait(lambda n=name: fleet.double.call("has_status", n), timeout=60, what=f"{name}'s status")  # type: ignore[misc]
        seen.append(time.time() - created)
        wait(lambda n=name: fleet.double.call("past_creating", n), timeout=60, what=f"{name}'s first pass")  # type: ignore[misc]
        passed.append(time.time() - created)
        time.sleep(0.25)
    return seen, passed


def measure_wakes(child: Child, fleet: Fleet, names: list[str]) -> tuple[list[float], list[float]]:
    """Wake requests on `names`, all at once, right after a full resync was started: each one's time
    to Active and Ready, and to the operator's first write for it (its queueing and first look)."""
    resyncs = len(child.logged("resync"))
    child.process.send_signal(signal.SIGUSR1)
    child.wait_logged("resync", timeout=60, after=resyncs)
    pending: dict[str, str] = {}
    asked: dict[str, float] = {}
    for name in names:
        asked[name] = time.time()
        pending[name] = fleet.ask_wake(name)
    latencies = []
    deadline = time.monotonic() + 300
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not woken: {sorted(pending)}")
        for name in fleet.double.call("answered", pending):
            latencies.append(time.time() - asked[name])
            del pending[name]
        time.sleep(0.01)
    acted = fleet.double.call("first_writes", asked)
    return latencies, [acted[name] - asked[name] for name in names]


def scrape(port: int) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as response:
        body: bytes = response.read()
    return body.decode().splitlines()


def reconcile_count(port: int) -> float:
    """Passes the operator has made (its reconcile-duration histogram's count)."""
    found = [line for line in scrape(port) if line.startswith("sdb_reconcile_duration_seconds_count")]
    return float(found[0].rsplit(" ", 1)[1])


def wake_queueing(port: int) -> float:
    """The longest a wake waited in the operator's queue: the first histogram bucket holding them all."""
    lines = [
        line
        for line in scrape(port)
        if line.startswith("sdb_workqueue_wait_seconds_bucket") and 'priority="Wake"' in line
    ]
    buckets = []
    for line in lines:
        bound = line.split('le="', 1)[1].split('"', 1)[0]
        buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    total = max(count for _, count in buckets)
    return min(bound for bound, count in buckets if count >= total)


def start(fleet: Fleet, options: OperatorOptions) -> tuple[Child, dict[str, float]]:
    """An operator started on the fleet: from its taking the Lease to its first pass of every database,
    and the writes it made to get there."""
    spawned = time.time()
    child = spawn(options)
    leader = logged_at(child.wait_logged("became the leader", timeout=600))
    passed = logged_at(child.wait_logged("every database had its first pass", timeout=1800))
    writes = fleet.double.call("writes_by_resource", spawned, time.time())
    print(
        f"   started: leader after {leader - spawned:.1f} s, all passed {passed - leader:.1f} s later, "
        f"writes {writes}",
        flush=True,
    )
    return child, {"leader_after_spawn_s": leader - spawned, "startup_s": passed - leader}


def measure_restart(
    child: Child, fleet: Fleet, options: OperatorOptions, woken: str
) -> tuple[Child, dict[str, float]]:
    """The operator stops, a wake is asked for while none runs, and a new operator starts: from its
    taking the Lease to its first write for the woken database, and to its first pass of every one."""
    child.stop()
    asked = time.time()
    token = fleet.ask_wake(woken)
    load = os.getloadavg()[0]
    child, started = start(fleet, options)
    leader = logged_at(child.logged("became the leader")[0])
    wait(lambda: answered(fleet, woken, token), timeout=120, what="the wake after the restart", every=0.05)
    acted = fleet.double.call("first_writes", {woken: asked})[woken]
    return child, {**started, "restart_wake_s": acted - leader, "load_restart": load}


TEMPLATES = 10
"""Databases the operator builds itself at the start of each fleet; the rest are copies of them."""


def run_fleet(count: int, args: argparse.Namespace, postgres_port: int) -> dict[str, float]:
    names = groups(count)
    first = groups(min(count, TEMPLATES))
    double = Double()
    fleet = Fleet(double)
    options = OperatorOptions(
        double.url, postgres_port, args.tick, free_port(), (20000, 20000 + count + 1000)
    )
    try:
        print(f"-- {count} databases: {', '.join(f'{len(v)} {k}' for k, v in names.items())}", flush=True)
        for group, members in first.items():
            for name in members:
                fleet.create(database(name, group))
        child = spawn(options)
        built = {name: WANT[group] for group, members in first.items() for name in members}
        fleet.wait_converged(built, timeout=600, what="build")
        for name in first[PAUSED]:
            fleet.patch(name, {"spec": {"state": "Auto"}})
        fleet.wait_converged(built, timeout=600, what="paused ones set to Auto")
        time.sleep(2)
        child.stop()
        templates = {group: members[0] for group, members in first.items()}
        copies = {group: [n for n in members if n not in built] for group, members in names.items()}
        preload = double.call("preload", templates, copies, 20000 + len(built))
        print(
            f"   {count - len(built)} copies of {len(built)} built preloaded in {preload:.1f} s", flush=True
        )
        want = {name: WANT[group] for group, members in names.items() for name in members}
        fleet.wait_converged(want, timeout=60, what="preload")
        load_start = os.getloadavg()[0]
        child, started = start(fleet, options)
        fleet.wait_converged(want, timeout=3600, what="the operator's first look")
        time.sleep(args.settle)
        steady = measure_steady(child, double, args.steady, options.metrics_port)
        print(f"   steady: {steady}", flush=True)
        pickup, first_pass = measure_pickup(fleet, args.new)
        print(f"   pickup p50 {percentile(pickup, 0.5):.3f} s p99 {percentile(pickup, 0.99):.3f} s")
        print(
            f"   first pass p50 {percentile(first_pass, 0.5):.3f} s p99 {percentile(first_pass, 0.99):.3f} s"
        )
        load_wakes = os.getloadavg()[0]
        wakes, acted = measure_wakes(child, fleet, names[PAUSED][: args.wakes])
        print(f"   wake p50 {percentile(wakes, 0.5):.3f} s p99 {percentile(wakes, 0.99):.3f} s")
        print(f"   first action p50 {percentile(acted, 0.5):.3f} s p99 {percentile(acted, 0.99):.3f} s")
        queueing = wake_queueing(options.metrics_port)
        print(f"   wakes waited in the queue at most {queueing} s (histogram bucket)")
        child, restart = measure_restart(child, fleet, options, names[PAUSED][args.wakes])
        print(f"   restart: {restart}", flush=True)
        errors = double.call("internal_errors")
        if errors:
            print("the double's own errors:", *errors, sep="\n", file=sys.stderr)
    finally:
        for each in SPAWNED:
            each.stop()
        double.close()
    return {
        "databases": count,
        **steady,
        "preload_s": preload,
        "first_start_s": started["startup_s"],
        "load_start": load_start,
        "pickup_p50_s": percentile(pickup, 0.5),
        "pickup_p99_s": percentile(pickup, 0.99),
        "first_pass_p50_s": percentile(first_pass, 0.5),
        "first_pass_p99_s": percentile(first_pass, 0.99),
        "wake_p50_s": percentile(wakes, 0.5),
        "wake_p99_s": percentile(wakes, 0.99),
        "wake_action_p50_s": percentile(acted, 0.5),
        "wake_action_p99_s": percentile(acted, 0.99),
        "wake_queue_max_s": queueing,
        "load_wakes": load_wakes,
        **restart,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("operator")
    child.add_argument("--url", required=True)
    child.add_argument("--postgres-port", type=int, required=True)
    child.add_argument("--tick", type=float, default=2.0)
    child.add_argument("--metrics-port", type=int, required=True)
    child.add_argument("--kube-qps", type=float, default=50.0)
    child.add_argument("--kube-burst", type=int, default=100)
    child.add_argument("--activator-ports", default="20000-29999")
    parser.add_argument("--databases", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady state measured")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait before measuring")
    parser.add_argument("--new", type=int, default=20, help="new objects for the pickup latency")
    parser.add_argument("--wakes", type=int, default=20)
    parser.add_argument("--tick", type=float, default=2.0)
    args = parser.parse_args()
    if args.command == "operator":
        run_operator(args)
        return
    from support.postgres import running_server

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the double and the operator too

    rows = []
    with running_server(any_password=True) as postgres:
        for count in args.databases:
            rows.append(run_fleet(count, args, postgres.port))
    columns = [
        "databases",
        "rss_mib",
        "cpu_cores",
        "api_rps",
        "api_writes_per_s",
        "secret_reads_per_min",
        "passes_per_s",
        "preload_s",
        "first_start_s",
        "pickup_p50_s",
        "pickup_p99_s",
        "first_pass_p99_s",
        "wake_p50_s",
        "wake_p99_s",
        "wake_action_p99_s",
        "wake_queue_max_s",
        "restart_wake_s",
        "startup_s",
        "load_start",
        "load_steady",
        "load_wakes",
        "load_restart",
    ]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(f"{row[c]:.4g}" for c in columns))
    last = rows[-1]
    figures = {
        k: last[k] for k in ("databases", "rss_mib", "cpu_cores", "api_rps", "pickup_p99_s", "wake_p99_s")
    }
    figures["startup_s"] = last["startup_s"]
    report("fleet", figures, {"rows": rows, "tick_s": args.tick, "steady_s": args.steady})


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
