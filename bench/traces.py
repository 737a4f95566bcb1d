"""Demand traces for the simulator: seeded families of load shapes, and CSV files in and out.

A trace is per-second demand in compute units for one database (`seconds,demand_cu`) or a fleet
(`seconds,database,demand_cu`). In a file, a row holds until the next row for the same database.

Each family draws its own parameters from its seed (slopes, levels, periods, gaps), so a policy
tuned on some seeds meets shapes it has not seen on the others. The seeds are split once, here:
tune only on TUNING_SEEDS, report on HELD_OUT_SEEDS.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DAY = 86_400
HOUR = 3_600
MINUTE = 60
CEILING = 3.8
"""The most any family asks for: below the simulated ceiling (4 CU), so being short is a policy's doing."""

TUNING_SEEDS = (1, 2, 3)
"""The only seeds any default was tuned on."""
HELD_OUT_SEEDS = (101, 102, 103, 104, 105)
"""Seeds never tuned on: the figures in docs/scaling-policy.md and the README come from these."""
FLEET_SIZE = 60


@dataclass(frozen=True)
class Trace:
    name: str
    demand: dict[str, np.ndarray]
    """Per database, one demand value (CU) per second."""
    data_bytes: dict[str, float] = field(default_factory=dict)
    """Per database, how much data it holds (the most page cache it can fill); absent: the model's."""
    family: str = ""

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


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _finish(demand: np.ndarray) -> np.ndarray:
    finished: np.ndarray = np.clip(demand, 0.0, CEILING)
    return finished


# -- the families: each draws its parameters from the generator it is given ----------------------


def ramps(rng: np.random.Generator, seconds: int = DAY) -> np.ndarray:
    """Ramps up and down of many slopes (two minutes to four hours each way) between plateaus."""
    base = rng.uniform(0.1, 0.6)
    level = np.full(seconds, base)
    t = int(rng.uniform(10, 90) * MINUTE)
    while t < seconds:
        peak = rng.uniform(max(1.0, base + 0.5), CEILING)
        up = int(_log_uniform(rng, 2 * MINUTE, 4 * HOUR))
        hold = int(_log_uniform(rng, 5 * MINUTE, 2 * HOUR))
        down = int(_log_uniform(rng, 2 * MINUTE, 4 * HOUR))
        shape = np.concatenate(
            [np.linspace(base, peak, up), np.full(hold, peak), np.linspace(peak, base, down)]
        )
        end = min(t + len(shape), seconds)
        level[t:end] = shape[: end - t]
        t = end + int(rng.exponential(90 * MINUTE))
    noise = _noise(rng, seconds, scale=rng.uniform(0.02, 0.06), sigma=rng.uniform(0.02, 0.05))
    return _finish(level * noise)


def diurnal(rng: np.random.Generator, seconds: int = 2 * DAY) -> np.ndarray:
    """A business day, every day: quiet at night, a broad peak at a drawn hour, noise at two scales."""
    high = rng.uniform(0.8, 3.4)
    low = rng.uniform(0.03, 0.4) * high
    peak_hour = rng.uniform(9, 20)
    width = rng.uniform(1.0, 3.0)  # how peaked the day is
    t = np.arange(seconds)
    shape = (0.5 + 0.5 * np.cos(2 * np.pi * (t / DAY - peak_hour / 24))) ** width
    noise = _noise(rng, seconds, scale=rng.uniform(0.02, 0.08), sigma=rng.uniform(0.03, 0.1))
    return _finish((low + (high - low) * shape) * noise)


def weekday_batch(rng: np.random.Generator, seconds: int = 7 * DAY) -> np.ndarray:
    """A batch job every weekday at a fixed hour: a sharp start, a plateau, a sharp end.

    Between runs the database is either idle (so it pauses) or carries a light steady load.
    The week starts on a Monday, as the simulator's clock does.
    """
    start_minute = int(rng.uniform(0, 24 * 60))
    length = rng.uniform(20 * MINUTE, 4 * HOUR)
    height = rng.uniform(1.2, 3.4)
    background = 0.0 if rng.random() < 0.5 else rng.uniform(0.05, 0.4)
    demand = background * _noise(rng, seconds, scale=0.04, sigma=0.04) if background else np.zeros(seconds)
    for day in range(seconds // DAY):
        if day % 7 >= 5:
            continue  # the weekend
        start = day * DAY + start_minute * MINUTE + int(rng.uniform(0, 20))
        run = int(length * rng.uniform(0.85, 1.15))
        rise = int(rng.uniform(1, 10))
        end = min(start + run, seconds)
        if start >= seconds:
            break
        shape = height * np.minimum((np.arange(end - start) + 1) / rise, 1.0)
        body = shape * _noise(rng, end - start, scale=0.05, sigma=0.05)
        demand[start:end] = np.maximum(demand[start:end], body)
    return _finish(demand)


def cron_spikes(rng: np.random.Generator, seconds: int = DAY) -> np.ndarray:
    """A job every few minutes to every hour, on the minute: spikes of half a minute to several minutes."""
    period = int(rng.choice([5, 10, 15, 20, 30, 60])) * MINUTE
    offset = int(rng.integers(0, period // MINUTE)) * MINUTE
    duration = rng.uniform(30, min(period / 3, 8 * MINUTE))
    height = rng.uniform(1.0, CEILING)
    base = 0.0 if rng.random() < 0.25 else rng.uniform(0.05, 0.5)
    demand = base * _noise(rng, seconds, scale=0.05, sigma=0.04) if base else np.zeros(seconds)
    for start in range(offset, seconds, period):
        begin = start + int(rng.uniform(0, 5))  # the job's own start-up
        run = int(duration * rng.uniform(0.7, 1.3))
        end = min(begin + run, seconds)
        rise = int(rng.uniform(1, 8))
        shape = height * np.minimum((np.arange(end - begin) + 1) / rise, 1.0)
        demand[begin:end] = np.maximum(
            demand[begin:end], shape * _noise(rng, end - begin, scale=0.06, sigma=0.05)
        )
    return _finish(demand)


def visits(rng: np.random.Generator, seconds: int = 2 * DAY) -> np.ndarray:
    """Bursty visits with long idle gaps: a person or a job comes by, works in bursts, thinks, leaves.

    Most think times are seconds to minutes; some run past five minutes, which is what makes a fixed
    idle wait pause and wake a database several times in one visit.
    """
    per_day = rng.uniform(10, 60)
    think = rng.uniform(20, 240)
    burst = rng.uniform(20, 240)
    bursts_per_visit = rng.uniform(2, 10)
    demand = np.zeros(seconds)
    count = rng.poisson(per_day * seconds / DAY)
    hours = rng.uniform(7, 22, count)  # mostly waking hours
    days = rng.integers(0, max(seconds // DAY, 1), count)
    for day, hour in zip(days, hours, strict=True):
        t = int(day * DAY + hour * HOUR)
        level = rng.uniform(0.05, 1.5)
        for _ in range(1 + rng.poisson(bursts_per_visit - 1)):
            length = int(rng.exponential(burst)) + 5
            end = min(t + length, seconds)
            if t >= seconds:
                break
            step = level * rng.uniform(0.6, 1.4)
            demand[t:end] = np.maximum(
                demand[t:end], step * _noise(rng, end - t, scale=0.08, sigma=0.06, step=30)
            )
            t = end + int(rng.exponential(think)) + 1
    return _finish(demand)


def flash_crowd(rng: np.random.Generator, seconds: int = DAY) -> np.ndarray:
    """An ordinary day, then a crowd arrives in seconds and drifts away over minutes to an hour."""
    demand = diurnal_level(rng, seconds, high=rng.uniform(0.3, 1.2))
    for _ in range(int(rng.integers(1, 4))):
        at = int(rng.uniform(0.1, 0.9) * seconds)
        rise = int(rng.uniform(3, 60))
        decay = _log_uniform(rng, 5 * MINUTE, HOUR)
        height = rng.uniform(1.5, CEILING)
        t = np.arange(seconds - at)
        crowd = height * np.minimum((t + 1) / rise, 1.0) * np.exp(-np.maximum(t - rise, 0) / decay)
        demand[at:] = np.maximum(demand[at:], crowd * _noise(rng, seconds - at, scale=0.05, sigma=0.05))
    return _finish(demand)


def diurnal_level(rng: np.random.Generator, seconds: int, *, high: float) -> np.ndarray:
    """A gentle day's background at up to `high`, with ordinary noise."""
    low = rng.uniform(0.1, 0.4) * high
    t = np.arange(seconds)
    shape = 0.5 + 0.5 * np.cos(2 * np.pi * (t / DAY - rng.uniform(10, 18) / 24))
    level: np.ndarray = (low + (high - low) * shape) * _noise(rng, seconds, scale=0.04, sigma=0.04)
    return level


def idle_days(rng: np.random.Generator, seconds: int = 5 * DAY) -> np.ndarray:
    """A database idle for days: a visit now and then, a few minutes of light work."""
    demand = np.zeros(seconds)
    for _ in range(max(1, rng.poisson(rng.uniform(0.3, 2.0) * seconds / DAY))):
        start = int(rng.uniform(0, seconds))
        end = min(start + int(rng.uniform(60, 20 * MINUTE)), seconds)
        level = rng.uniform(0.1, 1.5)
        demand[start:end] = level * _noise(rng, end - start, scale=0.08, sigma=0.06, step=30)
    return _finish(demand)


SINGLE: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "ramps": ramps,
    "diurnal": diurnal,
    "weekday-batch": weekday_batch,
    "cron": cron_spikes,
    "visits": visits,
    "flash-crowd": flash_crowd,
    "idle-days": idle_days,
}
"""The families of one database each; `fleet` mixes them."""
FAMILIES = (*SINGLE, "fleet")


def fleet(rng: np.random.Generator, size: int = FLEET_SIZE, seconds: int = 6 * HOUR) -> Trace:
    """A mixed fleet over six hours: databases of every family, most of them idle most of the time."""
    names = list(SINGLE)
    shares = np.array([0.1, 0.15, 0.1, 0.1, 0.3, 0.05, 0.2])
    demand: dict[str, np.ndarray] = {}
    data: dict[str, float] = {}
    for index, family in enumerate(rng.choice(names, size=size, p=shares / shares.sum())):
        full = SINGLE[str(family)](rng)
        start = int(rng.integers(0, max(len(full) - seconds, 0) + 1))
        name = f"db{index:04d}"
        demand[name] = full[start : start + seconds]
        data[name] = float(rng.lognormal(np.log(2 * 1024**3), 1.0))  # a median of 2 GiB, a long tail
    return Trace(f"fleet-{size}", demand, data, family="fleet")


def generate(family: str, seed: int) -> Trace:
    """One trace of a family; the same (family, seed) always gives the same trace."""
    rng = np.random.default_rng([seed, zlib.crc32(family.encode())])
    if family == "fleet":
        made = fleet(rng)
        return Trace(f"fleet/{seed}", made.demand, made.data_bytes, family)
    return Trace(f"{family}/{seed}", {"db": SINGLE[family](rng)}, family=family)


def library(seeds: Iterable[int], families: Iterable[str] = FAMILIES) -> list[Trace]:
    chosen = list(families)
    return [generate(family, seed) for family in chosen for seed in seeds]


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
