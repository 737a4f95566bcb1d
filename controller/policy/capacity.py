"""How big a database should be: the goal from load, the scale-down window, and the next capacity.

Scale up at once (every step the goal asks for, in one tick); scale down one step a tick, and only
once every goal in the last `scaleDownDelay` was below the current capacity. The window's history is
a short list of peaks kept in status, so a restarted operator decides exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.api import types, units
from controller.policy.inputs import Observation, Tuning


@dataclass(frozen=True)
class Goal:
    """The capacity one observation asks for, and which signal asked loudest."""

    capacity: float
    cpu: float
    memory: float
    connections: float
    saturated: bool

    @property
    def driver(self) -> str:
        if self.saturated:
            return "cpu saturated"
        named = {"cpu": self.cpu, "memory": self.memory, "connections": self.connections}
        return max(named, key=lambda k: named[k])


def goal(
    spec: types.DatabaseSpec, observation: Observation, *, current: float | None, tuning: Tuning
) -> Goal:
    """goal = clamp(max(cpu_goal, memory_goal, connections_goal), min, max), rounded up to 0.25 CU.

    When CPU is saturated (throttled at the limit, or pinned at it) the true demand is unknown and
    above the capacity, and a reading cannot say by how much: grow several-fold at once, so a jump in
    load is met in a tick or two instead of one step per tick. The scale-down window takes the
    excess back within seconds once the readings show the real load.
    """
    cpu_used = observation.cpu_cores or 0.0
    # CPU not observed (a first reading, or no CPU metrics at all) is unknown, not idle: hold what runs.
    cpu_goal = (
        cpu_used / (units.CPU_PER_CU * spec.scaling.target_cpu)
        if observation.cpu_cores is not None
        else current or 0.0
    )
    memory_used = (observation.memory_working_set_bytes or 0) + tuning.cache_weight * (
        observation.memory_cache_bytes or 0
    )
    memory_goal = memory_used / (units.MEMORY_PER_CU * spec.scaling.target_memory)
    connections_goal = (observation.client_sessions + observation.waiting_sessions) / tuning.sessions_per_cu
    limit = (current or 0.0) * units.CPU_PER_CU
    pinned = current is not None and (observation.cpu_cores or 0.0) >= tuning.saturation * limit
    saturated = pinned or (observation.cpu_throttled or 0.0) >= tuning.throttled
    raw = max(
        cpu_goal,
        memory_goal,
        connections_goal,
        tuning.saturation_growth * current if saturated and current else 0.0,
    )
    return Goal(
        capacity=clamp(units.round_up_to_step(raw), spec.capacity),
        cpu=cpu_goal,
        memory=memory_goal,
        connections=connections_goal,
        saturated=saturated,
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


def next_capacity(*, current: float, goal_capacity: float, window_high: float, floor: float) -> float:
    """Up at once to the goal; down one step, never below the window's maximum or the floor."""
    target = max(goal_capacity, floor)
    if target > current:
        return target
    if window_high < current:
        return max(current - units.CU_STEP, window_high, floor)
    return current


def effective_floor(spec: types.DatabaseSpec, schedule_floor: float | None) -> float:
    return clamp(max(spec.capacity.min, schedule_floor or 0.0), spec.capacity)
