"""Jumps in load that come back: met ahead of time when they keep time, and at a wake.

A jump no reading can foresee is met a metric lag late, however good the trend. But jumps recur: a
cron job's on the minute, a batch job's every weekday. So each jump is remembered (when, and how
high it went), a few of them, in status, across pauses. When the last few came at one period, the
next is expected, and the capacity is there from a little before it until a reading can show it;
and a woken database starts big enough for the jumps it remembers.
"""

from __future__ import annotations

import itertools
import statistics
from datetime import datetime, timedelta

from controller.api import types
from controller.policy.inputs import Tuning


def record(
    surges: tuple[types.LoadSample, ...],
    *,
    at: datetime,
    cores: float,
    baseline: float | None,
    short: bool,
    tuning: Tuning,
) -> tuple[types.LoadSample, ...]:
    """A reading at `at`: part of the last jump (which it may raise), a new jump, or neither.

    A jump is a reading that found the database short, or one well above the window's usual load
    (a pre-warmed jump is still a jump: it keeps the period known).
    """
    if surges and at - surges[-1].time <= tuning.trend_window:
        last = surges[-1]
        if cores <= last.cores:
            return surges
        return (*surges[:-1], types.LoadSample(last.time, round(cores, 3)))
    jumped = baseline is not None and cores >= max(
        tuning.surge_ratio * baseline, baseline + tuning.surge_min_cores
    )
    if not (short or jumped):
        return surges
    return (*surges, types.LoadSample(at, round(cores, 3)))[-tuning.surge_limit :]


def period(surges: tuple[types.LoadSample, ...], tuning: Tuning) -> timedelta | None:
    """The period of the last jumps, when the last few intervals between them agree."""
    needed = tuning.surge_periods
    if len(surges) <= needed:
        return None
    times = [s.time for s in surges[-needed - 1 :]]
    intervals = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    typical = timedelta(seconds=statistics.median(intervals))
    if typical < tuning.surge_min_period:
        return None
    if any(abs(timedelta(seconds=i) - typical) > tuning.surge_tolerance for i in intervals):
        return None
    return typical


def expected_cores(
    surges: tuple[types.LoadSample, ...], *, now: datetime, read_at: datetime, tuning: Tuning
) -> float:
    """The load to be ready for beyond what readings show: 0 when no jump is due."""
    every = period(surges, tuning)
    if every is None:
        return 0.0
    lead = tuning.resize_latency + tuning.tick + tuning.surge_tolerance
    for k in range(1, tuning.surge_missed + 2):
        due = surges[-1].time + k * every
        # From a little before it is due until a reading can show whether it came.
        if due - lead <= now and read_at <= due + tuning.surge_tolerance:
            return typical_cores(surges[-tuning.surge_periods :])
    return 0.0


def typical_cores(surges: tuple[types.LoadSample, ...]) -> float:
    return statistics.median(s.cores for s in surges) if surges else 0.0
