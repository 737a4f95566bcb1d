"""Replay demand traces through autoscaling policies, with time injected, and compare what they cost.

    .venv/bin/python bench/simulate.py                      # the held-out traces, metric lag 5 s
    .venv/bin/python bench/simulate.py --metric-lag 30      # ... as read through Prometheus
    .venv/bin/python bench/simulate.py --set tuning         # the traces the defaults were tuned on
    .venv/bin/python bench/simulate.py --family visits      # one family of load shapes
    .venv/bin/python bench/simulate.py --trace F.csv        # any CSV trace (seconds,[database,]demand_cu)
    .venv/bin/python bench/simulate.py --plot out.png       # demand and every policy's capacity

Traces come from bench/traces.py: seeded families of load shapes, the seeds split once into a
tuning set and a held-out set. Policies, all with min 0.25, max 4, the same pause rule (no client
session for 5 minutes) and the same model of the world (metric lag, resize latency, wake latency):
  ours       the operator's own policy: controller.policy.plan.decide, run as the reconciler runs it;
             it is told the metric lag, as the Prometheus source tells it
  ours-auto  the same with `autoPause.idleAfter: Auto` (its own pause rule); not in the last line
  max        always at the ceiling while active: its time short is what the wakes alone cost
  hpa        a Kubernetes-HPA-style target tracker: CPU at 0.7, a 15 s sync, 5 minutes of downscale
             stabilization, the 10% tolerance
  neon       Neon's published algorithm: the highest of the CPU goal at 90% and the memory goal at 75%,
             read every 5 s, applied at once; memory counts the page cache whole, as its users report
  neon-ws    the same, with memory counting only the working set
  oracle     demand rounded up to 0.25, the floor while within idleAfter of activity, zero otherwise;
             it sees the future and pays no latency, so it is the bound, not a contender

For each trace and policy: CU-hours, under-provisioned (the share of the time with demand > 0 in
which demand exceeded capacity; paused or waking counts as capacity 0), resizes, pauses, wakes; per
family, the sums; and the issue's goals per trace: ours at most 1.20x the oracle's CU-hours, short
at most 0.5 points longer than always-at-max, and no baseline both cheaper and less often short.
Last line, over every trace run (every lag given): each policy's CU-hours as a ratio to the
oracle's, and its share of time short.
"""

from __future__ import annotations

import abc
import argparse
import math
import multiprocessing
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from traces import FAMILIES, HELD_OUT_SEEDS, TUNING_SEEDS, Trace, library, read_csv, write_csv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.api import types, units
from controller.policy import plan as policy
from controller.policy.inputs import DEFAULT_TUNING, Compute, ComputeState, Observation, Route, Tuning
from controller.policy.lifecycle import Action
from controller.reconciler import status as status_of

GIB = 1024**3
EPOCH = datetime(2026, 1, 5, tzinfo=UTC)
POLICIES = ("ours", "ours-auto", "max", "hpa", "neon", "neon-ws", "oracle")


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
    learned_writes: int = 0
    """Ours: ticks whose status write carried a change of what the policy learned."""


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
    sim: Simulation,
    tuning: Tuning = DEFAULT_TUNING,
    scaling: types.ScalingSpec | None = None,
    *,
    auto_idle: bool = False,
) -> Replay:
    """The real policy with its defaults (tuning and scaling are for experiments); `idleAfter: Auto`."""
    model = sim.model
    tick = int(tuning.tick.total_seconds())
    spec = types.DatabaseSpec(
        scaling=scaling or types.ScalingSpec(),
        capacity=types.CapacitySpec(model.min_cu, model.max_cu),
        auto_pause=types.AutoPauseSpec(
            idle_after=timedelta(seconds=model.idle_after), idle_after_auto=auto_idle
        ),
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
                # As the Prometheus source reports its own: to the middle of the period the reading averages.
                lag=timedelta(seconds=model.metric_lag + tick / 2),
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
            out.learned_writes += step.db.status.capacity.learned != db.status.capacity.learned
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
    learned_writes: int = 0

    def add(self, demand: np.ndarray, outcome: Replay) -> None:
        self.cu_seconds += float(outcome.capacity.sum())
        active = demand > 0
        self.active_seconds += int(active.sum())
        self.short_seconds += int((active & (demand > outcome.capacity + 1e-9)).sum())
        self.resizes += outcome.resizes
        self.pauses += outcome.pauses
        self.wakes += outcome.wakes
        self.learned_writes += outcome.learned_writes

    def merge(self, other: Score) -> None:
        for name in (
            "cu_seconds",
            "active_seconds",
            "short_seconds",
            "resizes",
            "pauses",
            "wakes",
            "learned_writes",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def cu_hours(self) -> float:
        return self.cu_seconds / 3600

    @property
    def underprovisioned(self) -> float:
        return self.short_seconds / self.active_seconds if self.active_seconds else 0.0


PLOT_BUCKET = 60
RATIO_GOAL = 1.20
"""Ours may spend at most this multiple of the oracle's CU-hours, on every trace."""
SHORT_MARGIN = 0.005
"""Ours may be under-provisioned at most this much longer than always-at-max (whose share is the wakes')."""
BASELINES = ("max", "hpa", "neon", "neon-ws")
"""The policies ours must not be beaten by on both axes at once."""


@dataclass(frozen=True)
class Job:
    trace: int
    demand: np.ndarray
    data_bytes: float
    model: Model


def simulate_database(job: Job) -> tuple[int, dict[str, Score], dict[str, np.ndarray]]:
    """Every policy on one database; the scores, and capacity per minute for plotting."""
    demand, model = job.demand, job.model

    def world() -> Simulation:
        return Simulation(demand, model, job.data_bytes)

    ours = run_ours(world())
    outcomes = {
        "ours": ours,
        # Without a second of zero demand there is no idle gap, and Auto waits as the fixed wait does.
        "ours-auto": run_ours(world(), auto_idle=True) if (demand == 0).any() else ours,
        "max": run_baseline(world(), AlwaysMax(model)),
        "hpa": run_baseline(world(), HpaStyle(model)),
        "neon": run_baseline(world(), Neon(model)),
        "neon-ws": run_baseline(world(), NeonWorkingSet(model)),
        "oracle": run_oracle(demand, model),
    }
    scores: dict[str, Score] = {}
    series: dict[str, np.ndarray] = {"demand": _buckets(demand)}
    for name, outcome in outcomes.items():
        scores[name] = Score()
        scores[name].add(demand, outcome)
        series[name] = _buckets(outcome.capacity)
    return job.trace, scores, series


def _buckets(values: np.ndarray) -> np.ndarray:
    usable = len(values) // PLOT_BUCKET * PLOT_BUCKET
    means: np.ndarray = values[:usable].reshape(-1, PLOT_BUCKET).mean(axis=1)
    return means


@dataclass
class TraceResult:
    name: str
    family: str
    scores: dict[str, Score]
    series: dict[str, np.ndarray]
    databases: int

    def ratio(self, policy_name: str) -> float:
        oracle = self.scores["oracle"].cu_seconds
        return self.scores[policy_name].cu_seconds / oracle if oracle else 1.0

    def goals(self) -> dict[str, bool]:
        """The issue's three goals for this trace: cost, under-provisioning, and not dominated."""
        ours = self.scores["ours"]
        dominated_by = [
            name
            for name in BASELINES
            if self.scores[name].cu_seconds < ours.cu_seconds
            and self.scores[name].underprovisioned < ours.underprovisioned
        ]
        return {
            "cost": self.ratio("ours") <= RATIO_GOAL,
            "short": ours.underprovisioned <= self.scores["max"].underprovisioned + SHORT_MARGIN,
            "undominated": not dominated_by,
        }


def simulate(traces: Sequence[Trace], model: Model, *, workers: int) -> list[TraceResult]:
    """Every database of every trace as one job, the longest first, so two workers stay busy."""
    jobs = [
        Job(index, demand, trace.data_bytes.get(name, model.data_bytes), model)
        for index, trace in enumerate(traces)
        for name, demand in trace.demand.items()
    ]
    jobs.sort(key=lambda job: -int(np.count_nonzero(job.demand)))
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = list(pool.imap_unordered(simulate_database, jobs))
    else:
        results = [simulate_database(job) for job in jobs]
    out = [TraceResult(t.name, t.family, {n: Score() for n in POLICIES}, {}, len(t.demand)) for t in traces]
    for index, db_scores, db_series in results:
        result = out[index]
        for name, score in db_scores.items():
            result.scores[name].merge(score)
        for name, values in db_series.items():
            result.series[name] = result.series[name] + values if name in result.series else values.copy()
    return out


def table(results: Sequence[TraceResult]) -> str:
    lines = [
        f"{'trace':<18}{'policy':<10}{'CU-hours':>9}{'vs oracle':>11}{'under-prov':>12}"
        f"{'resizes':>9}{'pauses':>8}{'wakes':>7}"
    ]
    for result in results:
        for name in POLICIES:
            score = result.scores[name]
            lines.append(
                f"{result.name:<18}{name:<10}{score.cu_hours:>9.1f}{result.ratio(name):>11.3f}"
                f"{score.underprovisioned:>12.4f}{score.resizes:>9}{score.pauses:>8}{score.wakes:>7}"
            )
    return "\n".join(lines)


def family_table(results: Sequence[TraceResult]) -> str:
    """Per family, summed over its traces: each policy's CU-hours against the oracle's, and time short."""
    columns = ("ours", "hpa", "neon", "neon-ws", "max")
    lines = [f"{'family':<15}" + "".join(f"{name:>17}" for name in columns)]
    for family, group in _by_family(results).items():
        total = totals(group)
        oracle = total["oracle"].cu_seconds
        cells = "".join(
            f"{f'{total[n].cu_seconds / oracle:.2f}x / {100 * total[n].underprovisioned:.2f}%':>17}"
            for n in columns
        )
        lines.append(f"{family:<15}{cells}")
    return "\n".join(lines)


def goals_table(results: Sequence[TraceResult]) -> str:
    """Per family: on how many traces each goal holds, and the worst trace for the first two."""
    lines = [
        f"{'family':<15}{'traces':>7}{'<=1.20x':>9}{'short ok':>10}{'undominated':>13}"
        f"{'worst x':>9}{'worst short-max':>17}"
    ]
    for family, group in _by_family(results).items():
        met = [r.goals() for r in group]
        worst_ratio = max(r.ratio("ours") for r in group)
        worst_excess = max(
            r.scores["ours"].underprovisioned - r.scores["max"].underprovisioned for r in group
        )
        lines.append(
            f"{family:<15}{len(group):>7}{sum(m['cost'] for m in met):>9}{sum(m['short'] for m in met):>10}"
            f"{sum(m['undominated'] for m in met):>13}{worst_ratio:>9.3f}{100 * worst_excess:>16.2f}%"
        )
    every = [r.goals() for r in results]
    lines.append(
        f"all goals met on {sum(all(m.values()) for m in every)} of {len(every)} traces "
        f"(cost {sum(m['cost'] for m in every)}, short {sum(m['short'] for m in every)}, "
        f"undominated {sum(m['undominated'] for m in every)})"
    )
    return "\n".join(lines)


def _by_family(results: Sequence[TraceResult]) -> dict[str, list[TraceResult]]:
    groups: dict[str, list[TraceResult]] = {}
    for result in results:
        groups.setdefault(result.family or result.name, []).append(result)
    return groups


def totals(results: Sequence[TraceResult]) -> dict[str, Score]:
    total = {name: Score() for name in POLICIES}
    for result in results:
        for name in POLICIES:
            total[name].merge(result.scores[name])
    return total


def plot(results: Sequence[TraceResult], path: Path) -> None:
    """One panel per family: its first trace, demand against every policy's capacity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [group[0] for group in _by_family(results).values()]
    columns = 2 if len(shown) > 1 else 1
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(9 * columns, 3.4 * rows), squeeze=False)
    colours = {
        "ours": "#d62728",
        "max": "#7f7f7f",
        "hpa": "#1f77b4",
        "neon": "#2ca02c",
        "neon-ws": "#98df8a",
        "oracle": "#000000",
    }
    for axis in axes.flat[len(shown) :]:
        axis.set_visible(False)
    for axis, result in zip(axes.flat, shown, strict=False):
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
                linewidth=1.0 if name != "ours" else 1.5,
                label=f"{name} ({result.ratio(name):.2f}x, "
                f"{100 * result.scores[name].underprovisioned:.2f}% short)",
            )
        suffix = f", {result.databases} databases summed" if result.databases > 1 else ""
        axis.set_title(f"{result.name}{suffix}", fontsize=10)
        axis.set_xlabel("hours")
        axis.set_ylabel("compute units")
        axis.legend(loc="upper right", fontsize=7, ncols=2)
        axis.set_xlim(0, hours[-1] if len(hours) else 1)
    figure.suptitle("capacity against demand, minute averages: CU-hours against the oracle's, time short")
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def figures(results: Sequence[TraceResult]) -> dict[str, float]:
    """The last line: every trace pooled, each policy's CU-hours against the oracle's, and time short."""
    total = totals(results)
    oracle = total["oracle"].cu_hours
    out: dict[str, float] = {}
    for name in ("ours", "hpa", "neon", "neon-ws"):
        key = name.replace("-", "")
        out[f"{key}_vs_oracle"] = total[name].cu_hours / oracle
        out[f"{key}_underprovisioned"] = total[name].underprovisioned
    out["max_underprovisioned"] = total["max"].underprovisioned
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, action="append", help="a CSV trace to run (repeatable)")
    parser.add_argument("--set", choices=("held-out", "tuning"), default="held-out", dest="seed_set")
    parser.add_argument("--family", action="append", choices=FAMILIES, help="only these families")
    parser.add_argument("--seeds", type=int, nargs="+", help="these seeds instead of the set's")
    parser.add_argument("--metric-lag", type=int, nargs="+", default=[Model.metric_lag], metavar="S")
    parser.add_argument("--resize-latency", type=int, default=Model.resize_latency, metavar="S")
    parser.add_argument("--plot", type=Path, help="draw demand and capacities to this PNG")
    parser.add_argument("--workers", type=int, default=max(1, multiprocessing.cpu_count()))
    parser.add_argument("--write-traces", type=Path, help="also write the traces as CSV files here")
    parser.add_argument("--name", help="the report's name (default: from the set, lag and latency)")
    args = parser.parse_args()
    if args.trace:
        traces = [read_csv(path) for path in args.trace]
    else:
        seeds = args.seeds or (HELD_OUT_SEEDS if args.seed_set == "held-out" else TUNING_SEEDS)
        traces = library(seeds, args.family or FAMILIES)
    if args.write_traces:
        args.write_traces.mkdir(parents=True, exist_ok=True)
        for trace in traces:
            write_csv(trace, args.write_traces / f"{trace.name.replace('/', '-')}.csv")
    results: list[TraceResult] = []
    detail: dict[str, Any] = {"traces": [t.name for t in traces]}
    for lag in args.metric_lag:
        model = Model(metric_lag=lag, resize_latency=args.resize_latency)
        started = time.monotonic()
        run = simulate(traces, model, workers=args.workers)
        print(
            f"model: metric lag {model.metric_lag}s, resize latency {model.resize_latency}s, "
            f"wake latency {model.wake_latency}s, idleAfter {model.idle_after}s, "
            f"capacity [{model.min_cu}, {model.max_cu}] CU; {len(traces)} traces simulated in "
            f"{time.monotonic() - started:.0f}s"
        )
        print(table(run))
        print(family_table(run))
        print(goals_table(run))
        ours = totals(run)["ours"]
        print(
            f"ours: what it learned changed on {ours.learned_writes} ticks, "
            f"{ours.learned_writes / max(ours.active_seconds / 3600, 1e-9):.1f} per hour with demand"
        )
        detail[f"lag{lag}"] = {
            "results": [
                {
                    "trace": r.name,
                    "family": r.family,
                    "goals": r.goals(),
                    "policies": {
                        name: {
                            "cu_hours": round(score.cu_hours, 3),
                            "vs_oracle": round(r.ratio(name), 4),
                            "underprovisioned": round(score.underprovisioned, 6),
                            "resizes": score.resizes,
                            "pauses": score.pauses,
                            "wakes": score.wakes,
                            "learned_writes": score.learned_writes,
                        }
                        for name, score in r.scores.items()
                    },
                }
                for r in run
            ],
            "table": table(run).splitlines(),
            "families": family_table(run).splitlines(),
            "goals": goals_table(run).splitlines(),
            "figures": figures(run),
        }
        results += run
        if args.plot and lag == args.metric_lag[0]:
            plot(run, args.plot)
            print(f"plot: {args.plot}")
    from common import report

    report(args.name or _report_name(args), figures(results), detail)


def _report_name(args: argparse.Namespace) -> str:
    if args.trace:
        return "simulate-" + "-".join(path.stem for path in args.trace)
    parts = ["simulate"]
    if args.seed_set == "tuning" or args.seeds or args.family:
        parts.append(args.seed_set if not args.seeds else "seeds")
    if args.metric_lag != [Model.metric_lag]:
        parts.append("lag" + "-".join(str(lag) for lag in args.metric_lag))
    if args.resize_latency != Model.resize_latency:
        parts.append(f"resize{args.resize_latency}")
    return "-".join(parts)


if __name__ == "__main__":
    main()
