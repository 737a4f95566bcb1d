"""Replay demand traces through autoscaling policies, with time injected, and compare what they cost.

    .venv/bin/python bench/simulate.py                 # the shipped traces (seeded)
    .venv/bin/python bench/simulate.py --trace F.csv   # any CSV trace (seconds,[database,]demand_cu)
    .venv/bin/python bench/simulate.py --plot out.png  # demand and every policy's capacity over time

Policies, all with min 0.25, max 4, the same pause rule (no client session for 5 minutes) and the
same model of the world (metric lag, resize latency, wake latency):
  ours      the operator's own policy: controller.policy.plan.decide, run as the reconciler runs it
  max       always at the ceiling while active
  hpa       a Kubernetes-HPA-style target tracker: CPU at 0.7, a 15 s sync, 5 minutes of downscale
            stabilization, the 10% tolerance
  neon      Neon's published algorithm: the highest of the CPU goal at 90% and the memory goal at 75%,
            read every 5 s, applied at once; memory counts the page cache whole, as its users report
  neon-ws   the same, with memory counting only the working set: shown for fairness, so a reader sees
            how much of neon's cost is the cache; not in the last line
  oracle    demand rounded up to 0.25, the floor while within idleAfter of activity, zero otherwise;
            it sees the future and pays no latency, so it is the bound, not a contender

For each trace and policy: CU-hours, under-provisioned (the share of the time with demand > 0 in
which demand exceeded capacity; paused or waking counts as capacity 0), resizes, pauses, wakes.
Last line: ours/hpa/neon CU-hours as a ratio to the oracle's, and their under-provisioning.
"""

from __future__ import annotations

import abc
import argparse
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from traces import Trace, read_csv, shipped

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.api import types, units
from controller.policy import plan as policy
from controller.policy.inputs import DEFAULT_TUNING, Compute, ComputeState, Observation, Route, Tuning
from controller.policy.lifecycle import Action
from controller.reconciler import status as status_of

GIB = 1024**3
EPOCH = datetime(2026, 1, 5, tzinfo=UTC)
POLICIES = ("ours", "max", "hpa", "neon", "neon-ws", "oracle")


@dataclass(frozen=True)
class Model:
    """The world every policy lives in."""

    metric_lag: int = 5
    """Seconds from a measurement to when a policy can read it (scrape and rate windows)."""
    resize_latency: int = 2
    """Seconds from a decision to the new size being in force."""
    wake_latency: int = 2
    """Seconds from a client's connect to a paused database serving it (capacity 0 meanwhile)."""
    min_cu: float = 0.25
    max_cu: float = 4.0
    idle_after: int = 300
    cache_fill: float = 64 * 1024**2
    """Bytes of page cache a core of served work reads in per second, until the data or memory runs out."""
    data_bytes: float = 8 * GIB
    """How much data a database has, so how much page cache it can ever fill."""


@dataclass
class Reading:
    """What a policy sees at a decision: a lagged, throttled view of the world."""

    now: int
    cpu: float
    """Average CPU served (cores) over the last period, `metric_lag` seconds ago."""
    throttled: float
    """The share of that period in which demand exceeded capacity (the cgroup's throttling counters)."""
    sessions: int
    working_set: float
    cache: float
    last_active: int
    """The last second, as of `metric_lag` ago, that had demand (-1: never)."""


@dataclass
class Replay:
    """What one policy did with one database's demand: capacity second by second, and its moves."""

    capacity: np.ndarray
    resizes: int = 0
    pauses: int = 0
    wakes: int = 0


@dataclass
class Simulation:
    """One database under one policy: the engine fills capacity second by second."""

    demand: np.ndarray
    model: Model
    data_bytes: float = 8 * GIB
    capacity: np.ndarray = field(init=False)
    filled: int = 0
    current: float = 0.0
    pending: list[tuple[int, float]] = field(default_factory=list)
    cache: float = 0.0
    cache_until: int = 0

    def __post_init__(self) -> None:
        self.capacity = np.zeros(len(self.demand))
        active = np.where(self.demand > 0, np.arange(len(self.demand)), -1)
        self.last_active = np.maximum.accumulate(active)
        self.active_at = np.flatnonzero(self.demand > 0)

    def advance(self, until: int) -> None:
        """Fill capacity up to (not including) `until`, applying resizes as they land."""
        until = min(until, len(self.demand))
        while True:
            if self.pending and self.pending[0][0] <= self.filled:
                self.current = self.pending.pop(0)[1]  # landed: `current` is the size at `filled`
                continue
            if self.filled >= until:
                return
            stop = min(until, self.pending[0][0]) if self.pending else until
            self.capacity[self.filled : stop] = self.current
            self.filled = stop

    def set_now(self, capacity: float) -> None:
        self.pending.clear()
        self.current = capacity
        if capacity == 0.0:  # a stopped server's page cache is gone
            self.cache, self.cache_until = 0.0, self.filled

    def resize(self, at: int, capacity: float) -> None:
        """Ask for a size; asking again for the one in flight does not restart its clock."""
        if self.pending and self.pending[-1][1] == capacity:
            return
        self.pending = [(at + self.model.resize_latency, capacity)]

    def read(self, now: int, period: int) -> Reading:
        seen = max(now - self.model.metric_lag, 0)
        start = max(seen - period, 0)
        demand = self.demand[start:seen] if seen > start else np.zeros(1)
        limit = self.capacity[start:seen] if seen > start else np.zeros(1)
        served = np.minimum(demand, limit)
        cpu = float(served.mean())
        throttled = float(((demand > limit) & (limit > 0)).mean())
        capacity = float(self.capacity[seen - 1]) if seen > 0 else self.current
        working_set = 0.25 * GIB + 2.0 * GIB * cpu
        # The page cache fills as work reads data, up to the data's size and the memory left over;
        # a smaller size reclaims it. It is counted wholly by some policies, which is their trouble.
        if seen > self.cache_until:
            read = float(
                np.minimum(self.demand[self.cache_until : seen], self.capacity[self.cache_until : seen]).sum()
            )
            self.cache += self.model.cache_fill * read
            self.cache_until = seen
        room = max(capacity * units.MEMORY_PER_CU - working_set, 0.0)
        self.cache = min(self.cache, self.data_bytes, room)
        return Reading(
            now=now,
            cpu=cpu,
            throttled=throttled,
            sessions=int(self.demand[seen] > 0) if seen < len(self.demand) else 0,
            working_set=working_set,
            cache=self.cache,
            last_active=int(self.last_active[seen]) if seen < len(self.demand) else -1,
        )

    def next_demand(self, after: int) -> int | None:
        index = np.searchsorted(self.active_at, after)
        return int(self.active_at[index]) if index < len(self.active_at) else None


# -- baseline policies: a period, a start capacity, and a target from a reading -------------------


class Baseline(abc.ABC):
    period = 5

    def __init__(self, model: Model) -> None:
        self.model = model

    def start(self) -> float:
        return self.model.min_cu

    @abc.abstractmethod
    def target(self, reading: Reading, current: float) -> float:
        """The capacity to run at after this reading."""

    def clamp(self, value: float) -> float:
        return min(max(units.round_up_to_step(value), self.model.min_cu), self.model.max_cu)


class AlwaysMax(Baseline):
    def start(self) -> float:
        return self.model.max_cu

    def target(self, reading: Reading, current: float) -> float:
        return self.model.max_cu


class HpaStyle(Baseline):
    """The HPA's rules on one vertical size: ratio to target, tolerance, downscale stabilization."""

    period = 15
    utilization = 0.7
    tolerance = 0.1
    stabilization = 300

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        self.recommendations: list[tuple[int, float]] = []

    def target(self, reading: Reading, current: float) -> float:
        ratio = (reading.cpu / current) / self.utilization if current else 1.0
        desired = current if abs(ratio - 1.0) <= self.tolerance else self.clamp(current * ratio)
        self.recommendations = [
            (t, r) for t, r in self.recommendations if reading.now - t < self.stabilization
        ]
        self.recommendations.append((reading.now, desired))
        if desired >= current:
            return desired
        return max(r for _, r in self.recommendations)


class Neon(Baseline):
    """goal = max(cpu / 0.9, memory / 0.75) in compute units, every 5 s, up or down at once.

    Memory is what the VM uses, page cache included: the cause of the blocked downscales and the
    over-scaling its users report, and why the operator's own policy counts cache only partly.
    """

    period = 5
    count_cache = True

    def target(self, reading: Reading, current: float) -> float:
        cpu_goal = reading.cpu / 0.9
        used = reading.working_set + (reading.cache if self.count_cache else 0.0)
        memory_goal = used / (0.75 * units.MEMORY_PER_CU)
        return self.clamp(max(cpu_goal, memory_goal))


class NeonWorkingSet(Neon):
    """Neon's rule with memory as the working set only."""

    count_cache = False


def run_baseline(sim: Simulation, policy_: Baseline) -> Replay:
    """The engine for baselines: decide every period while active; the common pause rule; wake on demand."""
    model = sim.model
    out = Replay(sim.capacity)
    sim.set_now(policy_.start())
    now = 0
    woke = 0  # a wake is activity: the client that caused it was there
    end = len(sim.demand)
    while now < end:
        sim.advance(now)
        reading = sim.read(now, policy_.period)
        idle_for = now - max(reading.last_active, woke)
        if reading.sessions == 0 and idle_for >= model.idle_after:
            out.pauses += 1
            sim.set_now(0.0)
            woken = sim.next_demand(now)
            if woken is None:
                break
            sim.advance(woken + model.wake_latency)
            sim.set_now(policy_.start())
            out.wakes += 1
            woke = woken
            now = woken + model.wake_latency
            continue
        target = policy_.target(reading, sim.current)
        if target != sim.current and (not sim.pending or sim.pending[-1][1] != target):
            sim.resize(now, target)
            out.resizes += 1
        now += policy_.period
    sim.advance(end)
    return out


# -- ours: the real policy, driven as the reconciler drives it -----------------------------------


def run_ours(
    sim: Simulation, tuning: Tuning = DEFAULT_TUNING, scaling: types.ScalingSpec | None = None
) -> Replay:
    """The real policy with its defaults (tuning and scaling are for experiments)."""
    model = sim.model
    tick = int(tuning.tick.total_seconds())
    spec = types.DatabaseSpec(
        scaling=scaling or types.ScalingSpec(),
        capacity=types.CapacitySpec(model.min_cu, model.max_cu),
        auto_pause=types.AutoPauseSpec(idle_after=timedelta(seconds=model.idle_after)),
        auto_park=types.AutoParkSpec(enabled=False),
    )
    db = types.ServerlessDatabase(
        metadata=types.ObjectMeta(name="db", namespace="sim"),
        spec=spec,
        status=types.DatabaseStatus(
            phase=types.Phase.ACTIVE,
            phase_since=EPOCH,
            capacity=types.CapacityStatus(model.min_cu, model.min_cu),
        ),
    )
    out = Replay(sim.capacity)
    sim.set_now(model.min_cu)
    running = True
    route = Route.DIRECT
    wakes = 0
    now = 0
    end = len(sim.demand)
    while now < end:
        sim.advance(now)
        when = EPOCH + timedelta(seconds=now)
        if not running:
            woken = sim.next_demand(now)
            if woken is None:
                break
            sim.advance(woken)
            wakes += 1
            db = replace(db, wake_request=f"w{wakes}")
            now = woken
            when = EPOCH + timedelta(seconds=now)
        for _ in range(status_of.MAX_STEPS):  # the reconciler's chain of immediate steps, as it runs it
            compute = ComputeState(
                storage=True,
                compute=Compute.RUNNING if running else Compute.STOPPED,
                route=route,
                capacity=sim.current if running else None,
                incarnation=f"start-{out.wakes}" if running else "",
            )
            reading = sim.read(now, tick)
            observation = Observation(
                time=when,
                observing_since=EPOCH,
                client_sessions=reading.sessions,
                cpu_cores=reading.cpu,
                cpu_throttled=reading.throttled,
                memory_working_set_bytes=int(reading.working_set),
                memory_cache_bytes=int(reading.cache),
                last_activity=EPOCH + timedelta(seconds=reading.last_active)
                if reading.last_active >= 0
                else None,
            )
            plan = policy.decide(
                db=db, compute=compute, observation=observation if running else None, now=when, tuning=tuning
            )
            if plan.action is Action.RESIZE and plan.capacity is not None:
                sim.resize(now, plan.capacity)
                out.resizes += 1
            elif plan.action is Action.START and plan.capacity is not None:
                sim.set_now(0.0)
                sim.advance(now + model.wake_latency)
                sim.set_now(plan.capacity)
                running = True
                out.wakes += 1
            elif plan.action is Action.ROUTE_ACTIVATOR:
                route = Route.ACTIVATOR
            elif plan.action is Action.ROUTE_DIRECT:
                route = Route.DIRECT
            elif plan.action is Action.STOP:
                sim.set_now(0.0)
                running = False
                out.pauses += 1
            step = status_of.advance(db, status_of.Outcome(plan, compute), when)
            db = step.db
            if not step.more:
                break
            when += timedelta(milliseconds=1)
        if plan.action is Action.START:
            now += model.wake_latency
        now += tick
    sim.advance(end)
    return out


def run_oracle(demand: np.ndarray, model: Model) -> Replay:
    steps = np.ceil(demand / units.CU_STEP - 1e-9) * units.CU_STEP
    active = np.where(demand > 0, np.arange(len(demand)), -(10**9))
    last = np.maximum.accumulate(active)
    recent = np.arange(len(demand)) - last <= model.idle_after
    capacity = np.where(demand > 0, np.maximum(steps, model.min_cu), np.where(recent, model.min_cu, 0.0))
    return Replay(capacity)


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Score:
    cu_seconds: float = 0.0
    active_seconds: int = 0
    short_seconds: int = 0
    resizes: int = 0
    pauses: int = 0
    wakes: int = 0

    def add(self, demand: np.ndarray, outcome: Replay) -> None:
        self.cu_seconds += float(outcome.capacity.sum())
        active = demand > 0
        self.active_seconds += int(active.sum())
        self.short_seconds += int((active & (demand > outcome.capacity + 1e-9)).sum())
        self.resizes += outcome.resizes
        self.pauses += outcome.pauses
        self.wakes += outcome.wakes

    def merge(self, other: Score) -> None:
        for name in ("cu_seconds", "active_seconds", "short_seconds", "resizes", "pauses", "wakes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def cu_hours(self) -> float:
        return self.cu_seconds / 3600

    @property
    def underprovisioned(self) -> float:
        return self.short_seconds / self.active_seconds if self.active_seconds else 0.0


PLOT_BUCKET = 60


def simulate_database(
    args: tuple[np.ndarray, float, Model],
) -> tuple[dict[str, Score], dict[str, np.ndarray]]:
    """Every policy on one database; the scores, and capacity per minute for plotting."""
    demand, data_bytes, model = args

    def world() -> Simulation:
        return Simulation(demand, model, data_bytes)

    runners: dict[str, Callable[[], Replay]] = {
        "ours": lambda: run_ours(world()),
        "max": lambda: run_baseline(world(), AlwaysMax(model)),
        "hpa": lambda: run_baseline(world(), HpaStyle(model)),
        "neon": lambda: run_baseline(world(), Neon(model)),
        "neon-ws": lambda: run_baseline(world(), NeonWorkingSet(model)),
        "oracle": lambda: run_oracle(demand, model),
    }
    scores: dict[str, Score] = {}
    series: dict[str, np.ndarray] = {"demand": _buckets(demand)}
    for name, run in runners.items():
        outcome = run()
        scores[name] = Score()
        scores[name].add(demand, outcome)
        series[name] = _buckets(outcome.capacity)
    return scores, series


def _buckets(values: np.ndarray) -> np.ndarray:
    usable = len(values) // PLOT_BUCKET * PLOT_BUCKET
    means: np.ndarray = values[:usable].reshape(-1, PLOT_BUCKET).mean(axis=1)
    return means


@dataclass
class TraceResult:
    name: str
    scores: dict[str, Score]
    series: dict[str, np.ndarray]
    databases: int


def simulate(trace: Trace, model: Model, *, workers: int) -> TraceResult:
    jobs = [
        (demand, trace.data_bytes.get(name, model.data_bytes), model) for name, demand in trace.demand.items()
    ]
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(simulate_database, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
    else:
        results = [simulate_database(job) for job in jobs]
    scores = {name: Score() for name in POLICIES}
    series: dict[str, np.ndarray] = {}
    for db_scores, db_series in results:
        for name, score in db_scores.items():
            scores[name].merge(score)
        for name, values in db_series.items():
            series[name] = series[name] + values if name in series else values.copy()
    return TraceResult(trace.name, scores, series, len(jobs))


def table(results: Sequence[TraceResult]) -> str:
    lines = [
        f"{'trace':<14}{'policy':<8}{'CU-hours':>11}{'vs oracle':>11}{'under-prov':>12}"
        f"{'resizes':>9}{'pauses':>8}{'wakes':>7}"
    ]
    for result in results:
        oracle = result.scores["oracle"].cu_hours
        for name in POLICIES:
            score = result.scores[name]
            lines.append(
                f"{result.name:<14}{name:<8}{score.cu_hours:>11.1f}{score.cu_hours / oracle:>11.3f}"
                f"{score.underprovisioned:>12.4f}{score.resizes:>9}{score.pauses:>8}{score.wakes:>7}"
            )
    return "\n".join(lines)


def totals(results: Sequence[TraceResult]) -> dict[str, Score]:
    total = {name: Score() for name in POLICIES}
    for result in results:
        for name in POLICIES:
            total[name].merge(result.scores[name])
    return total


def plot(results: Sequence[TraceResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 1, figsize=(13, 3.6 * len(results)), squeeze=False)
    colours = {
        "ours": "#d62728",
        "max": "#7f7f7f",
        "hpa": "#1f77b4",
        "neon": "#2ca02c",
        "neon-ws": "#98df8a",
        "oracle": "#000000",
    }
    for axis, result in zip(axes[:, 0], results, strict=True):
        hours = np.arange(len(result.series["demand"])) * PLOT_BUCKET / 3600
        axis.fill_between(
            hours, result.series["demand"], color="#ffbb78", alpha=0.7, label="demand", step="mid"
        )
        for name in ("max", "hpa", "neon", "neon-ws", "oracle", "ours"):
            style = "--" if name == "oracle" else "-"
            axis.plot(
                hours,
                result.series[name],
                style,
                color=colours[name],
                linewidth=1.1 if name != "ours" else 1.6,
                label=f"{name} ({result.scores[name].cu_hours:.0f} CU-h, "
                f"{100 * result.scores[name].underprovisioned:.2f}% short)",
            )
        suffix = f" ({result.databases} databases, summed)" if result.databases > 1 else ""
        axis.set_title(f"{result.name}{suffix}: capacity against demand, minute averages")
        axis.set_xlabel("hours")
        axis.set_ylabel("compute units")
        axis.legend(loc="upper right", fontsize=8, ncols=2)
        axis.set_xlim(0, hours[-1] if len(hours) else 1)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, help="a CSV trace to run instead of the shipped ones")
    parser.add_argument("--plot", type=Path, help="draw demand and capacities to this PNG")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--workers", type=int, default=max(1, multiprocessing.cpu_count()))
    parser.add_argument("--write-traces", type=Path, help="also write the shipped traces as CSV files here")
    args = parser.parse_args()
    model = Model()
    traces = [read_csv(args.trace)] if args.trace else shipped(args.seed)
    if args.write_traces:
        from traces import write_csv

        args.write_traces.mkdir(parents=True, exist_ok=True)
        for trace in traces:
            write_csv(trace, args.write_traces / f"{trace.name}.csv")
    started = time.monotonic()
    results = [simulate(trace, model, workers=args.workers) for trace in traces]
    print(
        f"model: metric lag {model.metric_lag}s, resize latency {model.resize_latency}s, "
        f"wake latency {model.wake_latency}s, idleAfter {model.idle_after}s, "
        f"capacity [{model.min_cu}, {model.max_cu}] CU; simulated in {time.monotonic() - started:.0f}s"
    )
    print(table(results))
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    total = totals(results)
    oracle = total["oracle"].cu_hours
    figures = {}
    for name in ("ours", "hpa", "neon"):
        figures[f"{name}_vs_oracle"] = total[name].cu_hours / oracle
        figures[f"{name}_underprovisioned"] = total[name].underprovisioned
    from common import report

    report(
        "simulate" if not args.trace else f"simulate-{args.trace.stem}",
        figures,
        {"traces": [r.name for r in results], "table": table(results).splitlines()},
    )


if __name__ == "__main__":
    main()
