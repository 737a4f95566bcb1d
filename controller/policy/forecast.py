"""The CPU a database will use when a resize decided now is in force, from the trend of recent readings.

A reading describes the past: its figures trail its time by the source's lag, and a size asked for
now lands a resize latency later and must last until the next decision lands. So the goal looks that
far ahead along the recent trend, with headroom that grows with the readings' noise and with recent
shortfalls, and shrinks when the load is flat. The readings it learns from are kept in status, one
per sampling interval over a short window, so a restarted operator forecasts exactly as before.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from datetime import datetime

from controller.api import types
from controller.policy.inputs import Observation, Tuning

MAD_TO_SIGMA = 1.4826
"""A normal distribution's standard deviation per unit of median absolute deviation."""


@dataclass(frozen=True)
class Forecast:
    level: float
    """Cores used at the newest reading."""
    slope: float
    """Cores per second, from the readings of the trend window (0 with too few to say)."""
    noise: float
    """How far readings stray from their trend (a standard deviation, in cores)."""
    horizon: float
    """Seconds from the newest reading to when the next decision's size is in force."""
    headroom: float
    """Cores above the expected load, for the noise and for recent shortfalls."""

    @property
    def expected(self) -> float:
        """A falling trend is not extrapolated: the scale-down window already waits for it to show."""
        return self.level + max(self.slope, 0.0) * self.horizon

    @property
    def upper(self) -> float:
        return self.expected + self.headroom


def reading_time(observation: Observation, tuning: Tuning) -> datetime:
    """The moment the observation's load figures describe."""
    return observation.time - (observation.lag if observation.lag is not None else tuning.metric_lag)


def forecast(
    load: tuple[types.LoadSample, ...],
    observation: Observation,
    *,
    now: datetime,
    shortfalls: int,
    tuning: Tuning,
) -> Forecast | None:
    """None when the observation has no CPU figure."""
    if observation.cpu_cores is None:
        return None
    at = reading_time(observation, tuning)
    points = [*held(load, at, tuning), (0.0, observation.cpu_cores)]
    level = observation.cpu_cores
    slope, noise = 0.0, 0.0
    if len(points) > tuning.trend_readings:
        # Medians of the steps between readings: a ramp moves every step, a jump only one, so a jump
        # is neither a trend nor noise, and the next readings show it as a level.
        steps = [(b - a, u - t) for (t, a), (u, b) in itertools.pairwise(points)]
        slope = statistics.median(rise / seconds for rise, seconds in steps)
        typical = statistics.median(rise for rise, _ in steps)
        spread = statistics.median(abs(rise - typical) for rise, _ in steps)
        noise = MAD_TO_SIGMA * spread / math.sqrt(2)  # a step between two readings has both their noise
    noise = max(noise, tuning.noise_floor * level)
    horizon = (now - at + tuning.resize_latency + tuning.tick).total_seconds()
    widen = 1.0 + tuning.shortfall_headroom * shortfalls
    return Forecast(level, slope, noise, horizon, tuning.noise_headroom * noise * widen)


def held(load: tuple[types.LoadSample, ...], at: datetime, tuning: Tuning) -> list[tuple[float, float]]:
    """(seconds before `at`, cores) at each sampling interval of the window before `at`, oldest first.

    A kept sample holds until the next, so the load at each interval is the last sample at or before
    it: a load that held still within the band reads as flat, not as the few moves that were kept.
    """
    slots = round(tuning.trend_window / tuning.sample_every)
    out = []
    for slot in range(slots, 0, -1):
        before = [s.cores for s in load if s.time <= at - slot * tuning.sample_every]
        if before:
            out.append((-slot * tuning.sample_every.total_seconds(), before[-1]))
    return out


def baseline(load: tuple[types.LoadSample, ...], observation: Observation, tuning: Tuning) -> float | None:
    """The window's usual load before this reading (its median), when enough of the window is known."""
    recent = [cores for _, cores in held(load, reading_time(observation, tuning), tuning)]
    return statistics.median(recent) if len(recent) >= tuning.trend_readings else None


def record_load(
    load: tuple[types.LoadSample, ...], observation: Observation, tuning: Tuning
) -> tuple[types.LoadSample, ...]:
    """Keep a reading, at most one per sampling interval, only when the load moved since the last kept.

    A kept sample holds until the next, so a steady load (within the noise the forecast assumes at
    least) is one sample however long it lasts, and a steady database's status does not change. What
    moves is kept as it moves: a ramp's slope is its kept samples' slope. Old samples go when a new
    one comes, all but the one the window starts with.
    """
    if observation.cpu_cores is None:
        return load
    at = reading_time(observation, tuning)
    if load and at < load[-1].time + tuning.sample_every:
        return load
    if load and abs(observation.cpu_cores - load[-1].cores) <= steady_band(load[-1].cores, tuning):
        return load
    start = at - tuning.trend_window
    holding = [s for s in load if s.time < start][-1:]
    kept = (*holding, *(s for s in load if start <= s.time < at))
    return (*kept, types.LoadSample(at, round(observation.cpu_cores, 3)))


def steady_band(cores: float, tuning: Tuning) -> float:
    """How far a reading may stray from the kept load and still be the same load."""
    return max(tuning.steady_cores, tuning.noise_floor * cores)


def record_shortfall(
    shortfalls: tuple[datetime, ...], observation: Observation, *, short: bool, tuning: Tuning
) -> tuple[datetime, ...]:
    """Remember when readings found the database short, at most one per sampling interval."""
    at = reading_time(observation, tuning)
    kept = tuple(t for t in shortfalls if at - tuning.shortfall_memory < t <= at)
    if short and (not kept or at - kept[-1] >= tuning.sample_every):
        kept = (*kept, at)
    return kept[-tuning.shortfall_limit :]


def is_short(observation: Observation, current: float, tuning: Tuning) -> bool:
    """Demand was above capacity for part of the reading: throttled, or pinned at the limit."""
    throttled = (observation.cpu_throttled or 0.0) >= tuning.shortfall_throttled
    pinned = (observation.cpu_cores or 0.0) >= tuning.saturation * current
    return throttled or pinned


def answered(observation: Observation, grown_at: datetime | None, tuning: Tuning) -> bool:
    """The reading saw the size before the last growth for saturation: what it says was answered.

    A reading's time is the middle of what it averages; a tick on, all of it saw the new size.
    """
    landed = tuning.resize_latency + tuning.tick
    return grown_at is not None and reading_time(observation, tuning) < grown_at + landed
