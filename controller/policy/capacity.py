"""How big a database should be: the goal from load, the scale-down window, and the next capacity.

The CPU goal is for the load expected when a resize decided now is in force (`forecast`). Scale up
at once (every step the goal asks for, in one tick); scale down one step a tick, and only once every
goal in the last `scaleDownDelay` was below the current capacity (for goals the page cache drove, a
longer window). The windows' history is a short list of peaks kept in status, with what the
forecast learned, so a restarted operator decides exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from controller.api import types, units
from controller.policy import forecast, surges
from controller.policy.inputs import Observation, Tuning


@dataclass(frozen=True)
class Goal:
    """The capacity one observation asks for, and which signal asked loudest."""

    capacity: float
    """From CPU, the working set, sessions and saturation: what the scale-down window keeps."""
    cpu: float
    memory: float
    """Working set and the counted share of page cache."""
    connections: float
    saturated: bool
    cache_capacity: float = 0.0
    """From the working set and the counted page cache: kept by the slower cache window."""

    @property
    def driver(self) -> str:
        if self.saturated:
            return "cpu saturated"
        if self.cache_capacity > self.capacity:
            return "memory (page cache)"
        named = {"cpu": self.cpu, "memory": self.memory, "connections": self.connections}
        return max(named, key=lambda k: named[k])


def goal(
    spec: types.DatabaseSpec,
    observation: Observation,
    *,
    current: float | None,
    tuning: Tuning,
    expected_cpu: float | None = None,
    answered: bool = False,
) -> Goal:
    """goal = clamp(max(cpu_goal, memory_goal, connections_goal), min, max), rounded up to 0.25 CU.

    `expected_cpu` is the forecast's CPU (with headroom) for when the size is in force; without
    one, the reading's own. When CPU is saturated (throttled at the limit, or pinned at it) the true
    demand is unknown and above the capacity, and a reading cannot say by how much: grow several-fold
    at once, so a jump in load is met in a tick or two instead of one step per tick. The scale-down
    window takes the excess back within seconds once the readings show the real load. A saturated
    reading `answered` by a resize since (it saw the old size) holds the size instead of growing again.
    """
    cpu_used = observation.cpu_cores or 0.0
    # CPU not observed (a first reading, or no CPU metrics at all) is unknown, not idle: hold what runs.
    cpu_goal = (
        (expected_cpu if expected_cpu is not None else cpu_used)
        / (units.CPU_PER_CU * spec.scaling.target_cpu)
        if observation.cpu_cores is not None
        else current or 0.0
    )
    working_set = observation.memory_working_set_bytes or 0
    cache = min(tuning.cache_weight * (observation.memory_cache_bytes or 0), tuning.cache_share * working_set)
    per_cu = units.MEMORY_PER_CU * spec.scaling.target_memory
    connections_goal = (observation.client_sessions + observation.waiting_sessions) / tuning.sessions_per_cu
    limit = (current or 0.0) * units.CPU_PER_CU
    pinned = current is not None and cpu_used >= tuning.saturation * limit
    saturated = pinned or (observation.cpu_throttled or 0.0) >= tuning.throttled
    if saturated and answered:
        growth = current or 0.0
    elif saturated and current:
        growth = tuning.saturation_growth * current
    else:
        growth = 0.0
    raw = max(cpu_goal, working_set / per_cu, connections_goal, growth)
    return Goal(
        capacity=clamp(units.round_up_to_step(raw), spec.capacity),
        cpu=cpu_goal,
        memory=(working_set + cache) / per_cu,
        connections=connections_goal,
        saturated=saturated and not answered,
        cache_capacity=clamp(units.round_up_to_step((working_set + cache) / per_cu), spec.capacity),
    )


def clamp(value: float, bounds: types.CapacitySpec) -> float:
    return min(max(value, bounds.min), bounds.max)


def record_goal(
    peaks: tuple[types.Peak, ...], goal_capacity: float, now: datetime, window: timedelta
) -> tuple[types.Peak, ...]:
    """Add a goal to the scale-down window and drop what fell out of it.

    The list holds decreasing capacities, newest last; the last entry is the current goal (until None).
    It only changes when the goal changes or an old peak expires, so status is not rewritten every tick.
    """
    kept: list[types.Peak] = [p for p in peaks if p.until is None or p.until > now - window]
    if kept and kept[-1].until is None:
        ongoing = kept[-1]
        if ongoing.capacity == goal_capacity:
            return tuple(kept)
        # The previous goal held until now.
        kept[-1] = types.Peak(capacity=ongoing.capacity, until=now)
    # A newer goal at least as high makes older, lower peaks irrelevant to the window's maximum.
    while kept and kept[-1].capacity <= goal_capacity:
        kept.pop()
    kept.append(types.Peak(capacity=goal_capacity))
    return tuple(kept)


def window_max(peaks: tuple[types.Peak, ...]) -> float | None:
    return max((p.capacity for p in peaks), default=None)


def next_capacity(
    *,
    current: float,
    goal_capacity: float,
    window_high: float,
    floor: float,
    step: float | None = units.CU_STEP,
) -> float:
    """Up at once to the goal; down at most `step` (None: no limit), not below the window or floor."""
    target = max(goal_capacity, floor)
    if target > current:
        return target
    if window_high < current:
        return max(current - step if step is not None else 0.0, window_high, floor)
    return current


def jump_capacity(spec: types.DatabaseSpec, learned: types.Learned, tuning: Tuning) -> float:
    """What the remembered jumps typically needed: a woken database is likely woken into one."""
    if not tuning.wake_for_jumps or not learned.surges:
        return 0.0
    cores = surges.typical_cores(learned.surges)
    return clamp(units.round_up_to_step(cores / (units.CPU_PER_CU * spec.scaling.target_cpu)), spec.capacity)


def effective_floor(spec: types.DatabaseSpec, schedule_floor: float | None) -> float:
    return clamp(max(spec.capacity.min, schedule_floor or 0.0), spec.capacity)


@dataclass(frozen=True)
class Sizing:
    """One reading's answer: the goal, the capacity to run at, and what status keeps for the next."""

    goal: Goal
    capacity: float
    peaks: tuple[types.Peak, ...]
    learned: types.Learned


def size(
    spec: types.DatabaseSpec,
    status: types.DatabaseStatus,
    observation: Observation,
    *,
    current: float,
    floor: float,
    now: datetime,
    tuning: Tuning,
) -> Sizing:
    """The goal for when a resize decided now is in force, and the next capacity toward it."""
    learned = status.capacity.learned
    active_since = status.phase_since if status.phase is types.Phase.ACTIVE and status.phase_since else now
    before_start = forecast.reading_time(observation, tuning) < active_since
    if before_start and not forecast.is_short(observation, current, tuning):
        # The reading describes the time before this start, when it was down: not the load now. One
        # that found the database short is news whatever its lag says: a stopped server uses no CPU,
        # so at least that much demand is on this one (and a lag assumed for a source that does not
        # say could otherwise hide the first readings of a load met at a start).
        observation = replace(observation, cpu_cores=None, cpu_throttled=None)
        learned = replace(learned, load=())
    answered = forecast.answered(observation, learned.grown_at, tuning)
    short = (
        observation.cpu_cores is not None and not answered and forecast.is_short(observation, current, tuning)
    )
    shortfalls = forecast.record_shortfall(learned.shortfalls, observation, short=short, tuning=tuning)
    expected = forecast.forecast(
        learned.load, observation, now=now, shortfalls=len(shortfalls), tuning=tuning
    )
    read_at = forecast.reading_time(observation, tuning)
    jumps = learned.surges
    if observation.cpu_cores is not None:
        jumps = surges.record(
            jumps,
            at=read_at,
            cores=observation.cpu_cores,
            baseline=forecast.baseline(learned.load, observation, tuning),
            short=short,
            tuning=tuning,
        )
    due = surges.expected_cores(jumps, now=now, read_at=read_at, tuning=tuning)
    found = goal(
        spec,
        observation,
        current=current,
        tuning=tuning,
        expected_cpu=max(expected.upper, due) if expected is not None else None,
        answered=answered,
    )
    delay = spec.scaling.scale_down_delay
    peaks = record_goal(status.capacity.peaks, found.capacity, now, delay)
    # Only what the cache adds waits longer: a goal the working set drove shrinks as any other.
    cache_goal = found.cache_capacity if found.cache_capacity > found.capacity else spec.capacity.min
    cache_peaks = record_goal(learned.cache_peaks, cache_goal, now, max(delay, tuning.cache_scale_down_delay))
    high = max(window_max(peaks) or found.capacity, window_max(cache_peaks) or cache_goal)
    capacity = next_capacity(
        current=current,
        goal_capacity=max(found.capacity, found.cache_capacity),
        window_high=high,
        floor=floor,
        step=tuning.scale_down_step,
    )
    grew = found.saturated and capacity > current
    return Sizing(
        goal=found,
        capacity=clamp(capacity, spec.capacity),
        peaks=peaks,
        learned=types.Learned(
            load=forecast.record_load(learned.load, observation, tuning),
            shortfalls=shortfalls,
            cache_peaks=cache_peaks,
            surges=jumps,
            # Forgotten once it shrinks: saturation at the smaller size is news, however soon.
            grown_at=now if grew else None if capacity < current else learned.grown_at,
        ),
    )
