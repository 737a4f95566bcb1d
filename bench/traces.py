"""Demand traces for the simulator: seeded generators, and CSV files in and out.

A trace is per-second demand in compute units for one database (`seconds,demand_cu`) or a fleet
(`seconds,database,demand_cu`). In a file, a row holds until the next row for the same database.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DAY = 86_400
HOUR = 3_600


@dataclass(frozen=True)
class Trace:
    name: str
    demand: dict[str, np.ndarray]
    """Per database, one demand value (CU) per second."""
    data_bytes: dict[str, float] = field(default_factory=dict)
    """Per database, how much data it holds (the most page cache it can fill); absent: the model's."""

    @property
    def seconds(self) -> int:
        return max(len(d) for d in self.demand.values())


def _noise(
    rng: np.random.Generator, seconds: int, *, scale: float, sigma: float, step: int = 60
) -> np.ndarray:
    """Slow multiplicative noise: an AR(1) walk at `step`-second resolution, mean 1."""
    points = seconds // step + 2
    walk = np.empty(points)
    walk[0] = 0.0
    shocks = rng.normal(0.0, sigma, points)
    for i in range(1, points):
        walk[i] = 0.9 * walk[i - 1] + shocks[i]
    slow = np.interp(np.arange(seconds) / step, np.arange(points), walk)
    fast = rng.normal(0.0, scale, seconds)
    noise: np.ndarray = np.clip(1.0 + slow + fast, 0.05, None)
    return noise


def diurnal(
    rng: np.random.Generator,
    seconds: int = DAY,
    *,
    low: float = 0.3,
    high: float = 2.5,
    peak_hour: float = 14.0,
) -> np.ndarray:
    """A business day: quiet at night, a broad afternoon peak, noise at minute and second scales."""
    t = np.arange(seconds)
    phase = 2 * np.pi * (t / DAY - peak_hour / 24)
    shape = 0.5 + 0.5 * np.cos(phase)
    demand: np.ndarray = (low + (high - low) * shape**2) * _noise(rng, seconds, scale=0.04, sigma=0.04)
    return demand


def spiky(
    rng: np.random.Generator, seconds: int = DAY, *, base: float = 0.4, per_hour: float = 6.0
) -> np.ndarray:
    """A low baseline with bursts (batch jobs, reports): fast ramps to 1-3.5 CU for seconds to minutes."""
    demand = base * _noise(rng, seconds, scale=0.05, sigma=0.05)
    start = 0
    while True:
        start += int(rng.exponential(HOUR / per_hour))
        if start >= seconds:
            break
        height = rng.uniform(1.0, 3.5)
        ramp = int(rng.uniform(5, 30))
        length = int(rng.exponential(90)) + ramp + 10
        shape = np.minimum(np.arange(length) / ramp, 1.0)
        end = min(start + length, seconds)
        demand[start:end] = np.maximum(demand[start:end], height * shape[: end - start])
    return demand


def mostly_idle(rng: np.random.Generator, seconds: int = DAY, *, visits_per_day: float = 30.0) -> np.ndarray:
    """Zero most of the time; about 30 short visits a day, each a few minutes of light work."""
    demand = np.zeros(seconds)
    for _ in range(rng.poisson(visits_per_day * seconds / DAY)):
        start = int(rng.uniform(0, seconds))
        length = int(rng.uniform(60, 600))
        level = rng.uniform(0.1, 0.9)
        end = min(start + length, seconds)
        demand[start:end] = level * _noise(rng, end - start, scale=0.08, sigma=0.06, step=30)
    return demand


def steady(rng: np.random.Generator, seconds: int = DAY, *, level: float = 1.0) -> np.ndarray:
    """An always-busy service at a level with ordinary noise."""
    return level * _noise(rng, seconds, scale=0.05, sigma=0.05)


def shipped(seed: int = 20261126) -> list[Trace]:
    """The traces the benchmark reports on: diurnal, spiky, mostly idle, and a fleet of 1,000."""
    rng = np.random.default_rng(seed)
    return [
        Trace("diurnal", {"db": diurnal(rng)}),
        Trace("spiky", {"db": spiky(rng)}),
        Trace("mostly-idle", {"db": mostly_idle(rng)}),
        fleet(rng, 1000),
    ]


def fleet(rng: np.random.Generator, size: int, seconds: int = 6 * HOUR) -> Trace:
    """A mixed fleet over six hours: most databases idle most of the time, as fleets are."""
    shapes = rng.choice(["mostly-idle", "spiky", "diurnal", "steady"], size=size, p=[0.45, 0.25, 0.2, 0.1])
    demand: dict[str, np.ndarray] = {}
    data: dict[str, float] = {}
    for index, shape in enumerate(shapes):
        name = f"db{index:04d}"
        data[name] = float(rng.lognormal(np.log(2 * 1024**3), 1.0))  # a median of 2 GiB, a long tail
        if shape == "mostly-idle":
            demand[name] = mostly_idle(rng, seconds, visits_per_day=rng.uniform(5, 60))
        elif shape == "spiky":
            demand[name] = spiky(rng, seconds, base=rng.uniform(0.05, 0.6), per_hour=rng.uniform(1, 10))
        elif shape == "diurnal":
            high = rng.uniform(0.5, 3.5)
            demand[name] = diurnal(
                rng, seconds, low=rng.uniform(0.05, 0.3) * high, high=high, peak_hour=rng.uniform(0, 24)
            )
        else:
            demand[name] = steady(rng, seconds, level=rng.uniform(0.1, 2.0))
    return Trace(f"fleet-{size}", demand, data)


def write_csv(trace: Trace, path: Path, *, resolution: int = 1) -> None:
    """Rows only where demand changes (at `resolution` seconds), so a mostly idle day stays small."""
    single = len(trace.demand) == 1
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["seconds", "demand_cu"] if single else ["seconds", "database", "demand_cu"])
        for name, demand in trace.demand.items():
            previous = None
            for second in range(0, len(demand), resolution):
                value = round(float(demand[second]), 3)
                if value != previous:
                    writer.writerow([second, value] if single else [second, name, value])
                    previous = value


def read_csv(path: Path) -> Trace:
    rows: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as source:
        reader = csv.DictReader(source)
        fields = reader.fieldnames or []
        if "seconds" not in fields or "demand_cu" not in fields:
            raise ValueError(f"{path}: expected columns seconds,demand_cu or seconds,database,demand_cu")
        for row in reader:
            name = row.get("database") or "db"
            rows.setdefault(name, []).append((int(float(row["seconds"])), float(row["demand_cu"])))
    if not rows:
        raise ValueError(f"{path}: no rows")
    end = max(points[-1][0] for points in rows.values()) + 1
    return Trace(path.stem, {name: _hold(points, end) for name, points in rows.items()})


def _hold(points: Iterable[tuple[int, float]], end: int) -> np.ndarray:
    demand = np.zeros(end)
    ordered = sorted(points)
    for (start, value), (stop, _) in zip(ordered, [*ordered[1:], (end, 0.0)], strict=True):
        demand[start:stop] = max(value, 0.0)
    return demand
